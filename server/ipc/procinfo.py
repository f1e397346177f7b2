"""Is a process alive, and in which state: read from ``/proc`` (Linux).

Used wherever a pid read from shared memory must be judged: a lock holder,
a waiter slot, a worker the supervisor adopts.  A pid from shared memory is
untrusted: a non-positive one is simply not alive.
"""

from __future__ import annotations

import os


def alive(pid: int | None) -> bool:
    """Does process ``pid`` run?  A zombie (killed, not yet reaped by its
    parent) does not."""
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return process_state(pid) not in (b"", b"Z")


def process_state(pid: int) -> bytes:
    """The process's state letter in ``/proc/PID/stat`` (b"R", b"S", b"T",
    b"Z"...), b"" if unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return b""
    # "pid (comm) S ...": comm may hold spaces and parentheses; the state follows the last ')'
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3]
