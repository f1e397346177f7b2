"""Command line: ``python -m server run | client | inspect | clean | demo``.

Examples:
    python -m server run --app chat       # a chat room on 127.0.0.1:7000
    python -m server client               # talk to it (or: nc 127.0.0.1 7000)
    python -m server inspect --json       # processes, queues, restarts
    python -m server inspect --set-aside  # the poison requests, kept for you
    python -m server clean                # remove the segment (server stopped)
    python -m server demo                 # codes survive a kill -9, step by step

Exit codes: 0 success, 1 an error (printed as ``Error: ...``), 2 bad usage
(an unknown option, or a value the server cannot run with), 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import os
import socket
import sys
import time

from ..core.app import check_app, load_app
from ..core.config import DEFAULT_KEY, DEFAULT_PORT, ServerConfig
from ..core.watchdog import EXIT_CORRUPT
from ..errors import ConfigError, CorruptSegment, ServerError
from ..ipc.shm import SHMFactory

# Each command imports what only it needs when it runs: a worker is restarted
# by starting a fresh interpreter, and every module it need not compile (when
# Python may not cache bytecode, PYTHONDONTWRITEBYTECODE) is time a restart
# keeps the clients waiting.

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _version() -> str:
    try:
        return importlib.metadata.version("stepwise-tcp-server")
    except importlib.metadata.PackageNotFoundError:  # run from a folder without pip install
        return "(not installed)"


def parse_key(text: str) -> int:
    try:
        key = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a key is a number like 0x53544350, not {text!r}"
        ) from None
    if not 0 < key <= 0xFFFF_FFFF:
        raise argparse.ArgumentTypeError(f"a key is 1..0xffffffff (as ipcs shows it), got {text!r}")
    return key


# -- inspect, clean ---------------------------------------------------------------


def cmd_inspect(args: argparse.Namespace) -> int:
    from .inspect import describe, format_set_aside, format_status

    if args.bus:
        from .buscmd import show_bus

        return show_bus(args.bus, args.host, as_json=args.json)
    if args.watch:
        return watch_status(args.key)
    with SHMFactory.attach(args.key) as shm:
        info = describe(shm, set_aside=args.set_aside)
    if args.set_aside:
        entries = info.get("set_aside_requests", [])
        print(json.dumps(entries, indent=2) if args.json else format_set_aside(entries))
    else:
        print(json.dumps(info, indent=2) if args.json else format_status(info))
    return EXIT_OK


def watch_status(key: int, interval: float = 1.0) -> int:
    """The inspector's table, refreshed in place every second until Ctrl-C."""
    from .inspect import describe, format_status

    tty = sys.stdout.isatty()
    while True:
        with SHMFactory.attach(key) as shm:
            text = format_status(describe(shm))
        stamp = time.strftime("%H:%M:%S")
        if tty:
            sys.stdout.write("\x1b[H\x1b[2J")  # home, clear: the table stays in place
        print(f"{stamp}  (refreshed every {interval:g} s; Ctrl-C to stop)\n{text}\n", flush=True)
        time.sleep(interval)


def cmd_clean(args: argparse.Namespace) -> int:
    from .clean import clean, clean_bus

    if args.bus:
        clean_bus(args.bus, args.host, force=args.force)
    else:
        clean(args.key, force=args.force)
    return EXIT_OK


# -- run, worker, client ---------------------------------------------------------------


# The options of ``run`` that are plain numbers of ServerConfig, with their help.
TUNABLES = {
    "max_frame": "largest frame in bytes; a larger one closes that connection",
    "max_conns": "clients at once",
    "queue_bytes": "capacity of each code queue",
    "idle_timeout": "close a client silent this many seconds; 0 never",
    "out_buffer": "unread reply bytes before reading from a client pauses",
    "send_timeout": "close a client that takes no reply bytes for this long",
    "frame_timeout": "close a client that takes longer to finish a frame it began",
    "hang_timeout": "kill and restart a frozen worker: no heartbeat for this long",
    "stop_timeout": "a graceful stop delivers everything it accepted, giving up only when "
    "nothing moved for this long",
    "request_timeout": "kill the logic process when one request runs this long; its stack "
    "is logged at half",
}


def cmd_run(args: argparse.Namespace) -> int:
    if os.getcwd() not in sys.path:  # --app MODULE:ATTR from the current directory
        sys.path.insert(0, os.getcwd())
    try:
        socket.getaddrinfo(args.host, None)
    except socket.gaierror:
        raise ConfigError(
            f"--host {args.host!r}: not a valid address or host name",
            option="--host",
            value=args.host,
        ) from None
    app = load_app(args.app)
    check_app(app, args.app)  # a bad app fails here, not in a crash loop of workers
    cfg = ServerConfig(
        app=args.app,
        host=args.host,
        port=args.port,
        key=args.key,
        framing=args.framing or getattr(app, "framing", "length"),
        **{name: getattr(args, name) for name in TUNABLES},
        full_message=getattr(app, "full_message", ServerConfig.full_message),
        bus=os.path.abspath(args.bus) if args.bus else "",
        endpoint=args.endpoint or "",
    ).validate()
    if cfg.bus:  # a wrong file or endpoint fails here, not in a crash loop of the logic process
        from ..core.busconfig import load_bus_config
        from ..proc.room import check_sizes

        bus = load_bus_config(cfg.bus)
        bus.sender_slot(cfg.endpoint)
        check_sizes(cfg, bus.inbox_bytes, bus.path)
    from ..proc.supervisor import Supervisor
    from ..proc.workers import raise_fd_limit

    raise_fd_limit(cfg)
    return Supervisor(cfg, discard_pending=args.discard_pending).run()


def cmd_worker(args: argparse.Namespace) -> int:
    cfg = ServerConfig.from_json(args.config)
    from ..proc.memory import keep_freed_memory
    from ..proc.trace import install

    install(args.role)  # hop timestamps, only with STCP_TRACE (tools.bench_server --trace)
    keep_freed_memory()  # large buffers every turn: not a page fault per page (proc.memory)
    if args.role == "connect" and args.listen_fd is None:
        raise ConfigError(
            "the connect worker needs --listen-fd (it is started by `run`, not by hand)",
            option="--listen-fd",
        )
    try:
        if args.role == "connect":
            from ..proc import connect

            return connect.main(cfg, args.listen_fd, args.control_fd, args.adopt_fd)
        from ..proc import logic

        return logic.main(cfg)
    except CorruptSegment as err:
        # A distinct status, so the supervisor can tell corruption from a bug.
        logging.getLogger(f"server.{args.role}").error("the segment is corrupt: %s", err)
        return EXIT_CORRUPT


def cmd_client(args: argparse.Namespace) -> int:
    from . import client

    return client.main(args.host, args.port)


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return EXIT_OK if run_demo(args.key, args.codes) else EXIT_ERROR


# -- main -------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m server",
        description="A TCP server framework whose work survives kill -9.",
        epilog=__doc__[__doc__.index("Examples:") :],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more (DEBUG)")
    parser.add_argument("--log-level", choices=LOG_LEVELS, help="INFO unless -v")
    # the same two options after the command too ("run -v"); SUPPRESS keeps
    # a value given before the command when none is given after it
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS)
    common.add_argument("--log-level", choices=LOG_LEVELS, default=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="{run,client,inspect,clean,demo,relay,bus}")

    demo = sub.add_parser("demo", parents=[common], help="show pending codes surviving kill -9")
    demo.add_argument("--key", type=parse_key, help="segment key (default: a random one)")
    demo.add_argument(
        "--codes", type=int, default=1000, help="codes to leave pending (default 1000)"
    )
    demo.set_defaults(func=cmd_demo)

    inspect = sub.add_parser(
        "inspect", parents=[common], help="show what is in a segment, without changing it"
    )
    inspect.add_argument("--key", type=parse_key, default=DEFAULT_KEY)
    inspect.add_argument("--json", action="store_true", help="machine-readable output")
    inspect.add_argument(
        "--watch", action="store_true", help="refresh the table every second until Ctrl-C"
    )
    inspect.add_argument(
        "--set-aside",
        action="store_true",
        help="show the requests set aside as poison (with --json: their payloads in hex)",
    )
    inspect.add_argument(
        "--bus", metavar="FILE", help="show a bus host instead: its relay, links and queues"
    )
    inspect.add_argument("--host", help="with --bus: which host (default: every host)")
    inspect.set_defaults(func=cmd_inspect)

    run = sub.add_parser(
        "run",
        parents=[common],
        help="run the server (supervisor, connect and logic processes)",
        description="Run the server. Ctrl-C stops it gracefully; the segment stays, so the "
        "next run recovers whatever was pending.",
    )
    defaults = ServerConfig()
    run.add_argument("--app", default="echo", help="echo, chat or MODULE:ATTR (default echo)")
    run.add_argument(
        "--host", default=defaults.host, help="address to listen on (default %(default)s)"
    )
    run.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help="TCP port; 0 picks a free one (default %(default)s)",
    )
    run.add_argument(
        "--key", type=parse_key, default=DEFAULT_KEY, help="segment key (default 0x53544350)"
    )
    run.add_argument(
        "--framing", choices=["length", "line"], help="default: the app's (echo length, chat line)"
    )
    for name, help_text in TUNABLES.items():  # one line per option, named as in ServerConfig
        default = getattr(defaults, name)
        shown = (
            "default: 1 MiB, or two of the largest frames if more"
            if name == "out_buffer"
            else ("default %(default)s")
        )
        run.add_argument(
            "--" + name.replace("_", "-"),
            type=type(default),
            default=default,
            help=f"{help_text} ({shown})",
        )
    run.add_argument(
        "--bus",
        metavar="FILE",
        help="join a bus (its bus.toml): broadcasts reach the servers of the room too",
    )
    run.add_argument(
        "--endpoint",
        help="with --bus: this server's address on it, e.g. chat@h1 (its room: chat)",
    )
    run.add_argument(
        "--discard-pending",
        action="store_true",
        help="when the options changed the segment's layout, throw away what it holds "
        "(refused otherwise while codes are pending)",
    )
    run.set_defaults(func=cmd_run)

    worker = sub.add_parser(
        "worker", parents=[common]
    )  # started by `run`, not by people: no help, not listed
    worker.add_argument("role", choices=["connect", "logic"])
    worker.add_argument("--config", required=True)
    worker.add_argument("--listen-fd", type=int)
    worker.add_argument("--control-fd", type=int, default=-1)  # connect <-> supervisor
    worker.add_argument("--adopt-fd", type=int, default=-1)  # a handover to take (SIGHUP)
    worker.set_defaults(func=cmd_worker)

    cli = sub.add_parser(
        "client", parents=[common], help="a small interactive line client (for the chat app)"
    )
    cli.add_argument("--host", default="127.0.0.1")
    cli.add_argument("--port", type=int, default=DEFAULT_PORT)
    cli.set_defaults(func=cmd_client)

    from .buscmd import add_parser as add_bus_parser
    from .buscmd import add_relay_parser

    add_relay_parser(sub, common)

    add_bus_parser(sub, common)

    clean = sub.add_parser(
        "clean", parents=[common], help="remove a segment (refused while in use)"
    )
    clean.add_argument("--key", type=parse_key, default=DEFAULT_KEY)
    clean.add_argument(
        "--force", action="store_true", help="remove it even if it is not one of our segments"
    )
    clean.add_argument(
        "--bus", metavar="FILE", help="remove every queue and relay board of this bus instead"
    )
    clean.add_argument("--host", help="with --bus: only this host's (default: every host's)")
    clean.set_defaults(func=cmd_clean)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    role = {"run": "supervisor", "worker": getattr(args, "role", "")}.get(
        args.command, args.command
    )
    level = args.log_level or ("DEBUG" if args.verbose else "INFO")
    logging.basicConfig(
        level=getattr(logging, level),
        format=f"%(asctime)s {role}[{os.getpid()}] %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    try:
        code: int = args.func(args)
        return code
    except ConfigError as err:  # a bad option value is bad usage too
        print(f"Error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except ServerError as err:
        print(f"Error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (``inspect | head``): not an error of ours.
        # Point stdout at /dev/null so the flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
