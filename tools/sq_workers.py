"""The writer and reader programs of ``tools.chaos_sharedqueue``.

Each runs as a program of its own (``python -m tools.sq_workers writer ...``),
not forked from the one that starts it, and may be ``SIGKILL``ed at any
moment.  So each writes down what it did with a single ``os.write`` to an
``O_APPEND`` file right after doing it (the kernel keeps it when the
process dies):

* a writer logs the sequence number (u64) of every code whose push
  returned True, in order; ``w<id>.<incarnation>.log``;
* a reader logs (writer u32, incarnation u32, sequence u64) of every code
  it popped; ``r<id>.<incarnation>.log``.

A code is (writer u32, incarnation u32, sequence u64, body length u16), a
body of 0..96 bytes that depends on the sequence number, and a CRC-32 of
all that: a torn or mixed-up code fails its check.  A reader that finds one
writes ``torn`` in its folder and exits with status 3.

A writer with ``STCP_CRASH_AT`` set (a crash point: it kills itself there)
pushes one code per call, so the test knows which code was in flight.
Otherwise it pushes one code or ``push_many`` of up to 8 at random.
Both stop cleanly when their stop file appears (``writers.stop``,
``readers.stop``; a reader first drains the queue).  Each writes the
longest it waited for a lock into ``<name>.wait``.
"""

from __future__ import annotations

import argparse
import os
import random
import struct
import sys
import zlib

from server import SharedQueue
from server.ipc.crashpoints import CRASH_ENV

HEAD = struct.Struct("<IIQH")  # writer, incarnation, sequence, body length
CRC = struct.Struct("<I")
SEQ = struct.Struct("<Q")
READ = struct.Struct("<IIQ")
POOL = random.Random(7).randbytes(1024)
MAX_BATCH = 8


def make_code(writer: int, inc: int, seq: int) -> bytes:
    n = seq % 97
    start = (seq * 31) % (len(POOL) - 96)
    body = HEAD.pack(writer, inc, seq, n) + POOL[start : start + n]
    return body + CRC.pack(zlib.crc32(body))


def check_code(code: bytes) -> tuple[int, int, int] | None:
    """(writer, incarnation, sequence), or None if the code is torn."""
    if len(code) < HEAD.size + CRC.size:
        return None
    writer, inc, seq, n = HEAD.unpack_from(code)
    if len(code) != HEAD.size + n + CRC.size:
        return None
    if CRC.unpack_from(code, len(code) - CRC.size)[0] != zlib.crc32(code[: -CRC.size]):
        return None
    return writer, inc, seq


def _log(folder: str, name: str) -> int:
    return os.open(os.path.join(folder, name), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)


class _Waits:
    """The longest lock wait so far, in ``<name>.wait`` (rewritten as it grows)."""

    def __init__(self, folder: str, name: str, q: SharedQueue) -> None:
        self.path = os.path.join(folder, name + ".wait")
        self.q = q
        self.seen = -1.0

    def note(self) -> None:
        longest = float(self.q.stats()["longest_lock_wait_s"])
        if longest > self.seen:
            self.seen = longest
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                f.write(f"{longest:.6f}\n")
            os.replace(tmp, self.path)


def writer(key: int, ident: int, inc: int, folder: str, capacity: int) -> int:
    armed = bool(os.environ.get(CRASH_ENV))
    rng = random.Random(ident * 1000 + inc)
    stop = os.path.join(folder, "writers.stop")
    q = SharedQueue.open(key, capacity)
    waits = _Waits(folder, f"w{ident}.{inc}", q)
    fd = _log(folder, f"w{ident}.{inc}.log")
    seq = 0
    rounds = 0
    while not os.path.exists(stop):
        rounds += 1
        if rounds % 64 == 0:
            waits.note()
        if armed or rng.random() < 0.5:
            if q.push(make_code(ident, inc, seq), timeout=0.5):
                os.write(fd, SEQ.pack(seq))
                seq += 1
            continue
        count = rng.randint(2, MAX_BATCH)
        codes = [make_code(ident, inc, s) for s in range(seq, seq + count)]
        done = q.push_many(codes, timeout=0.5)
        if done:
            os.write(fd, b"".join(SEQ.pack(s) for s in range(seq, seq + done)))
            seq += done
    waits.note()
    q.close()
    return 0


def reader(key: int, ident: int, inc: int, folder: str, capacity: int) -> int:
    stop = os.path.join(folder, "readers.stop")
    q = SharedQueue.open(key, capacity)
    waits = _Waits(folder, f"r{ident}.{inc}", q)
    fd = _log(folder, f"r{ident}.{inc}.log")
    rounds = 0
    while True:
        rounds += 1
        if rounds % 64 == 0:
            waits.note()
        code = q.pop(timeout=0.2)
        if code is None:
            if os.path.exists(stop):
                break
            continue
        got = check_code(code)
        if got is None:
            with open(os.path.join(folder, "torn"), "a") as f:
                f.write(f"reader {ident}.{inc}: torn code {code[:32].hex()}... ({len(code)} B)\n")
            return 3
        os.write(fd, READ.pack(*got))
    waits.note()
    q.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("role", choices=("writer", "reader"))
    parser.add_argument("--key", type=lambda s: int(s, 0), required=True)
    parser.add_argument("--id", type=int, required=True)
    parser.add_argument("--inc", type=int, required=True, help="incarnation: 0, 1, ... per restart")
    parser.add_argument("--dir", required=True, help="the folder for logs and stop files")
    parser.add_argument("--capacity", type=int, required=True)
    a = parser.parse_args(argv)
    run = writer if a.role == "writer" else reader
    return run(a.key, a.id, a.inc, a.dir, a.capacity)


if __name__ == "__main__":
    sys.exit(main())
