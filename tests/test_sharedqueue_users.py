"""SharedQueue as users meet it: many programs opening a missing queue at the
same instant, and another OS user on the machine."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

from server import SharedQueue
from server.errors import SegmentPermissionError

pytestmark = pytest.mark.timeout(60)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

OPENER = textwrap.dedent(
    """
    import sys, time
    from server import SharedQueue
    key, ident, at = int(sys.argv[1], 0), int(sys.argv[2]), float(sys.argv[3])
    time.sleep(max(0.0, at - time.time()))  # all start at the same instant
    with SharedQueue.open(key, 1 << 16) as q:
        assert q.push(b"opener %d" % ident, timeout=5)
    """
)


def test_eight_programs_open_a_missing_queue_at_once(key: int) -> None:
    at = time.time() + 1.0  # the programs' imports done by then
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", OPENER, hex(key), str(i), repr(at)],
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(8)
    ]
    errors = [p.communicate(timeout=30)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, errors
    with SharedQueue.open(key, 1 << 16) as q:
        got = sorted(q.pop_many(100, timeout=0))
        assert q.stats()["repairs"] == {"push": 0, "pop": 0}
    assert got == sorted(b"opener %d" % i for i in range(8))  # one queue, nothing lost


NOBODY = 65534


def _as_nobody(action) -> str:  # type: ignore[no-untyped-def]
    """Run ``action()`` in a forked child that became user nobody (root's
    Python is not readable by nobody: no exec); what it returns or raises."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(r)
        try:
            os.environ.pop("XDG_RUNTIME_DIR", None)
            os.environ.pop("STCP_RUN_DIR", None)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            out = f"ok: {action()}"
        except BaseException as err:  # reported to the test
            out = f"{type(err).__name__}: {err}"
        os.write(w, out.encode())
        os._exit(0)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    os.waitpid(pid, 0)
    return b"".join(chunks).decode()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a child as user nobody")
def test_another_user_can_neither_use_nor_lend_a_queue(keys: list[int]) -> None:
    ours, theirs = keys[0], keys[1]
    SharedQueue.open(ours, 4096).close()
    refused = _as_nobody(lambda: SharedQueue.open(ours, 4096))
    assert refused.startswith("SegmentPermissionError:") and "another user's?" in refused, refused

    def make_one() -> int:
        with SharedQueue.open(theirs, 4096) as q:
            q.push(b"x")
            return len(q)

    assert _as_nobody(make_one) == "ok: 1"
    try:
        # root could use it, but a queue another user owns is not ours to trust
        with pytest.raises(SegmentPermissionError, match=f"belongs to uid {NOBODY}"):
            SharedQueue.open(theirs, 4096)
    finally:
        shutil.rmtree(f"/tmp/stcp-{NOBODY}", ignore_errors=True)
