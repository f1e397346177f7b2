"""What every process of the server does the same way.

* ``TICK``: the longest a worker sleeps, so its heartbeat and timers move
  at least this often even when nothing happens.
* ``Parent``: has the process that started us gone (we were re-parented)?
  A worker stops then instead of living on as an orphan.
* ``exit_text``: a child's exit status in words, with the signal's name.
"""

from __future__ import annotations

import os
import signal

from ..core.supervision import describe_exit

TICK = 0.5


class Parent:
    """Remembers our parent at start; ``gone()`` once we were re-parented."""

    def __init__(self) -> None:
        self.pid = os.getppid()

    def gone(self) -> bool:
        return os.getppid() != self.pid


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def exit_text(returncode: int) -> str:
    """``Popen.returncode`` in words: ``exited with status 1``, ``killed by SIGKILL``."""
    return describe_exit(returncode, signal_name(-returncode) if returncode < 0 else "")
