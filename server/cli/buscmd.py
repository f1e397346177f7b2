"""``python -m server bus send|recv|stat`` and ``relay``: the bus from a shell.

::

    python -m server bus send --config bus.toml --from 1.0.0.1 --to 2.0.0.1 hello there
    printf 'a\\nb\\n' | python -m server bus send --config bus.toml --from 1.0.0.1 --to 2.0.0.1
    python -m server bus recv --config bus.toml --as 2.0.0.1 [--count N] [--timeout S]
    python -m server bus stat --config bus.toml [--host h1]

``send`` sends its words as one message, or each line of its input as one;
``recv`` prints ``SOURCE: PAYLOAD`` per message (stops after ``--count``,
or when nothing came for ``--timeout`` seconds; without either, it waits);
``stat`` shows, for one host (or each), its relay and links and each
endpoint's inbox and each outbox to another host, as ``inspect --bus``
does (``server.cli.busview``).  A look creates nothing.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..core.busconfig import load_bus_config
from ..errors import ConfigError
from ..ipc.bus import Bus
from .busview import describe_bus, format_bus


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    bus = sub.add_parser("bus", parents=[common], help="send, receive or look at bus messages")
    actions = bus.add_subparsers(dest="action", metavar="{send,recv,stat}", required=True)
    send = actions.add_parser("send", parents=[common], help="send a message (or one per line)")
    send.add_argument("--config", default="bus.toml")
    send.add_argument("--from", dest="source", required=True, help="this endpoint's address")
    send.add_argument("--to", dest="target", required=True, help="the target's address")
    send.add_argument("--timeout", type=float, default=None, help="give up after this long")
    send.add_argument("words", nargs="*", help="the message (none: one per line of input)")
    recv = actions.add_parser("recv", parents=[common], help="print the messages for an endpoint")
    recv.add_argument("--config", default="bus.toml")
    recv.add_argument("--as", dest="address", required=True, help="the endpoint's address")
    recv.add_argument("--count", type=int, default=0, help="stop after this many (0: never)")
    recv.add_argument("--timeout", type=float, default=None, help="stop when none came this long")
    stat = actions.add_parser("stat", parents=[common], help="inboxes and outboxes of a host")
    stat.add_argument("--config", default="bus.toml")
    stat.add_argument("--host", help="which host of the file (default: every host)")
    stat.add_argument("--json", action="store_true", help="machine-readable output")
    bus.set_defaults(func=cmd_bus)


def add_relay_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    relay = sub.add_parser(
        "relay", parents=[common], help="the bus relay of this host (one per host)"
    )
    relay.add_argument("--config", default="bus.toml", help="the bus's TOML file")
    relay.add_argument(
        "--host", help="which host of the file this is (default: the one whose address is here)"
    )
    relay.add_argument(
        "--hang-timeout",
        type=float,
        default=5.0,
        help="kill and restart a frozen relay: no heartbeat for this long (default 5)",
    )
    relay.add_argument("--listen-fd", type=int, help=argparse.SUPPRESS)  # its supervisor's
    relay.set_defaults(func=cmd_relay)


def cmd_relay(args: argparse.Namespace) -> int:
    from ..proc.relay import this_host
    from ..proc.relaysup import run_relay

    config = load_bus_config(args.config)
    if args.hang_timeout <= 0:
        raise ConfigError(
            f"--hang-timeout {args.hang_timeout!r}: seconds > 0",
            option="--hang-timeout",
            value=args.hang_timeout,
        )
    return run_relay(config, args.host or this_host(config), args.listen_fd, args.hang_timeout)


def cmd_bus(args: argparse.Namespace) -> int:
    if args.action == "send":
        return _send(args)
    if args.action == "recv":
        return _recv(args)
    return _stat(args)


def _send(args: argparse.Namespace) -> int:
    messages = [" ".join(args.words).encode()] if args.words else None
    with Bus.open(args.source, config=args.config) as bus:
        bus.config.host_of(args.target)  # an unknown target before anything is sent
        for payload in messages if messages is not None else _lines():
            if not bus.send(args.target, payload, timeout=args.timeout):
                print(
                    f"Error: {args.target}'s queue stayed full for {args.timeout} s",
                    file=sys.stderr,
                )
                return 1
    return 0


def _lines() -> list[bytes]:
    return [line.rstrip(b"\n") for line in sys.stdin.buffer]


def _recv(args: argparse.Namespace) -> int:
    with Bus.open(args.address, config=args.config) as bus:
        got = 0
        while not args.count or got < args.count:
            message = bus.recv(timeout=args.timeout)
            if message is None:
                break
            source, payload = message
            print(f"{source}: {payload.decode(errors='backslashreplace')}", flush=True)
            got += 1
    return 0


def _stat(args: argparse.Namespace) -> int:
    return show_bus(args.config, args.host, as_json=args.json)


def show_bus(path: str, host: str | None, *, as_json: bool = False) -> int:
    """``bus stat`` and ``inspect --bus``: one host of the bus, or every host."""
    cfg = load_bus_config(path)
    hosts = [cfg.host(host).name] if host else sorted(cfg.hosts)
    views = [describe_bus(cfg, h) for h in hosts]
    print(json.dumps(views, indent=2) if as_json else "\n\n".join(map(format_bus, views)))
    return 0
