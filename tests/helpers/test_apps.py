"""Apps the server tests run with ``--app test_apps:NAME`` (PYTHONPATH=tests/helpers)."""

from __future__ import annotations

import os
import signal
import time


class SlowEcho:
    """Echo, taking ``delay`` seconds per message: lets codes pile up."""

    framing = "length"
    delay = 0.005

    def on_message(self, conn, payload: bytes) -> None:  # type: ignore[no-untyped-def]
        time.sleep(self.delay)
        conn.send(payload)


class Troublesome:
    """Echo, except ``die`` kills the logic process and ``hang`` hangs it:
    both are poison codes that must be set aside."""

    framing = "length"

    def on_message(self, conn, payload: bytes) -> None:  # type: ignore[no-untyped-def]
        if payload == b"die":
            os.kill(os.getpid(), signal.SIGKILL)
        if payload == b"hang":
            while True:
                time.sleep(60)
        if payload == b"raise":
            raise RuntimeError("the app fails on this message")
        conn.send(payload)


class SleepyEcho(SlowEcho):
    """Echo after two seconds per message: slow, not hung."""

    delay = 2.0


class Spinner:
    """Echo, except ``spin`` loops forever in pure Python (holding the GIL
    between switches): a slow request the watchdog must kill."""

    framing = "length"

    def on_message(self, conn, payload: bytes) -> None:  # type: ignore[no-untyped-def]
        if payload == b"spin":
            spin_forever()
        conn.send(payload)


def spin_forever() -> None:
    n = 0
    while True:
        n += 1


class NoHandlers:
    """Not an app: it has none of on_open, on_message, on_close."""


class FailsToStart:
    def __init__(self) -> None:
        raise RuntimeError("cannot reach the database")


class TenMsEcho(SlowEcho):
    """Echo, 10 ms per message: a backlog that takes seconds to answer."""

    delay = 0.01
