"""Telling systemd how the supervisor is doing (``sd_notify``, in a few lines).

When systemd starts us with ``Type=notify`` it sets ``NOTIFY_SOCKET`` (a
Unix datagram socket; a leading ``@`` means the abstract namespace) and,
with ``WatchdogSec=``, ``WATCHDOG_USEC`` (and ``WATCHDOG_PID``, the process
it means).  We send newline-separated ``KEY=value`` lines::

    READY=1        once we listen and the workers are started
    STATUS=...     a line for ``systemctl status``: what happened last
    WATCHDOG=1     at half of WATCHDOG_USEC, from the supervisor's own loop,
                   so systemd restarts a supervisor that stopped turning
    STOPPING=1     when a graceful stop begins

Without ``NOTIFY_SOCKET`` every call does nothing.  A notification that
cannot be sent is dropped: systemd's opinion must never stop the server.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping


class SystemdNotifier:
    def __init__(self, address: str | None, watchdog_usec: int = 0) -> None:
        self.address: str | bytes | None = None
        if address:
            self.address = "\0" + address[1:] if address.startswith("@") else address
        self.interval = watchdog_usec / 2e6 if watchdog_usec > 0 else 0.0
        self.next_ping = 0.0
        self._sock: socket.socket | None = None

    @classmethod
    def from_environment(cls, env: Mapping[str, str] = os.environ) -> SystemdNotifier:
        usec = 0
        if env.get("WATCHDOG_USEC", "").isdigit():
            pid = env.get("WATCHDOG_PID", "")
            if not pid or pid == str(os.getpid()):
                usec = int(env["WATCHDOG_USEC"])
        return cls(env.get("NOTIFY_SOCKET"), usec)

    def send(self, *lines: str) -> bool:
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(lines).encode(), self.address)
        except OSError:
            return False
        return True

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def watchdog(self, now: float) -> None:
        """Called on every turn of the supervisor's loop; pings when due."""
        if self.interval and now >= self.next_ping:
            self.next_ping = now + self.interval
            self.send("WATCHDOG=1")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping gracefully")
