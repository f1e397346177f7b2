"""Command line: ``python -m server demo | inspect | clean``.

Examples:
    python -m server demo                 # codes survive a kill -9, step by step
    python -m server inspect --key 0x53544350 --json
    python -m server clean --key 0x53544350

Exit codes: 0 success, 1 an error (printed as ``Error: ...``), 2 bad usage,
130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import random
import signal
import sys
import time
from typing import Any

from .codequeue import CodeQueue
from .errors import ServerError
from .ring import CONTROL_SIZE
from .shm import SharedMemory, SHMFactory

DEFAULT_KEY = 0x53544350  # "STCP"
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def parse_key(text: str) -> int:
    try:
        key = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a key is a number like 0x53544350, not {text!r}"
        ) from None
    if not 0 < key < 1 << 31:
        raise argparse.ArgumentTypeError(f"a key must be between 1 and 2**31-1, got {text!r}")
    return key


# -- inspect ----------------------------------------------------------------------


def describe(shm: SharedMemory) -> dict[str, Any]:
    """Everything in the segment, read without changing it."""
    header = shm.header
    info: dict[str, Any] = {
        "segment": shm.stat(),
        "start_mode": header.last_mode.name.lower() if header.last_mode else None,
        "generation": header.generation,
        "ready": header.ready,
        "objects": [],
        "queues": {},
    }
    for p in shm.placements():
        info["objects"].append({"name": p.name, "kind": p.kind, "offset": p.offset, "size": p.size})
        if p.kind == CodeQueue.KIND:
            q = CodeQueue(shm, p.size - CONTROL_SIZE, p.name, check_records=False)
            info["queues"][p.name] = q.stats()
        else:
            shm.place(p.name, p.kind, p.size)
    return info


def print_table(info: dict[str, Any]) -> None:
    seg = info["segment"]
    print(
        f"segment  key 0x{seg['key']:08x}  id {seg['id']}  {seg['size']} bytes  mode {seg['mode']}"
    )
    print(
        f"         attached by {seg['attached']} process(es); last start {info['start_mode']}, generation {info['generation']}"
    )
    print(f"{'object':<16} {'kind':<12} {'offset':>8} {'size':>9}")
    for o in info["objects"]:
        print(f"{o['name']:<16} {o['kind']:<12} {o['offset']:>8} {o['size']:>9}")
    if info["queues"]:
        print(
            f"\n{'queue':<16} {'pending':>8} {'used':>10} {'free':>10} {'pushed':>10} {'popped':>10}"
        )
        for name, s in info["queues"].items():
            print(
                f"{name:<16} {s['pending']:>8} {s['used_bytes']:>10} {s['free_bytes']:>10} "
                f"{s['pushed']:>10} {s['popped']:>10}"
            )


def cmd_inspect(args: argparse.Namespace) -> int:
    with SHMFactory.attach(args.key) as shm:
        info = describe(shm)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print_table(info)
    return EXIT_OK


def cmd_clean(args: argparse.Namespace) -> int:
    if SHMFactory.remove(args.key):
        print(f"removed segment 0x{args.key:08x}")
    else:
        print(f"no segment 0x{args.key:08x}: nothing to do")
    return EXIT_OK


# -- demo -------------------------------------------------------------------------

DEMO_CAPACITY = 64 * 1024
DEMO_SIZE = 128 * 1024


def _demo_producer(key: int, count: int) -> None:
    with SHMFactory.attach(key) as shm:
        q = CodeQueue(shm, DEMO_CAPACITY, "inbound")
        q.recover_producer()
        for i in range(count):
            while not q.push(f"request #{i}".encode()):
                time.sleep(0.001)
        time.sleep(3600)  # wait to be killed, like a busy process would


def cmd_demo(args: argparse.Namespace) -> int:
    key = args.key or random.randint(0x1000_0000, 0x7FFF_FFFF)
    say = print
    try:
        shm = SHMFactory.create_product(key, DEMO_SIZE)
        say(f"1. start: segment 0x{key:08x} -> start mode {shm.start_mode.name}")
        CodeQueue(shm, DEMO_CAPACITY, "inbound")
        shm.mark_ready()
        shm.detach()

        child = multiprocessing.get_context("fork").Process(
            target=_demo_producer, args=(key, args.codes), daemon=True
        )
        child.start()
        with SHMFactory.attach(key) as shm:
            q = CodeQueue(shm, DEMO_CAPACITY, "inbound")
            deadline = time.monotonic() + 10
            while len(q) < args.codes and time.monotonic() < deadline:
                time.sleep(0.01)
            say(f"2. producer pid {child.pid} pushed {len(q)} codes; nobody consumed them")
        assert child.pid is not None
        os.kill(child.pid, signal.SIGKILL)
        child.join(5)
        say(
            f"3. kill -9 {child.pid}: the process is gone (exit {child.exitcode}), the segment stays"
        )

        shm = SHMFactory.create_product(key, DEMO_SIZE)
        say(
            f"4. start again: segment 0x{key:08x} -> start mode {shm.start_mode.name} (generation {shm.generation})"
        )
        q = CodeQueue(shm, DEMO_CAPACITY, "inbound")
        shm.mark_ready()
        q.recover_consumer()
        codes = q.pop_many(max_bytes=1 << 30)
        ok = codes == [f"request #{i}".encode() for i in range(args.codes)]
        say(
            f"5. found {len(codes)} pending codes, first {codes[0]!r}, last {codes[-1]!r}: "
            f"{'all there, in order' if ok else 'NOT what was pushed'}"
        )
        shm.detach()
        return EXIT_OK if ok else EXIT_ERROR
    finally:
        if SHMFactory.remove(key):
            say(f"6. removed segment 0x{key:08x}")


# -- main -------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m server",
        description="A TCP server framework whose work survives kill -9.",
        epilog=__doc__[__doc__.index("Examples:") :],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="show pending codes surviving kill -9")
    demo.add_argument("--key", type=parse_key, help="segment key (default: a random one)")
    demo.add_argument(
        "--codes", type=int, default=1000, help="codes to leave pending (default 1000)"
    )
    demo.set_defaults(func=cmd_demo)

    inspect = sub.add_parser("inspect", help="show what is in a segment, without changing it")
    inspect.add_argument("--key", type=parse_key, default=DEFAULT_KEY)
    inspect.add_argument("--json", action="store_true", help="machine-readable output")
    inspect.set_defaults(func=cmd_inspect)

    clean = sub.add_parser("clean", help="remove a segment (refused while in use)")
    clean.add_argument("--key", type=parse_key, default=DEFAULT_KEY)
    clean.set_defaults(func=cmd_clean)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format=f"%(asctime)s {os.getpid()} %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    try:
        code: int = args.func(args)
        return code
    except ServerError as err:
        print(f"Error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
