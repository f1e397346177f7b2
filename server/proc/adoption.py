"""A new supervisor takes over the workers of one that was killed.

After a ``kill -9`` of the supervisor its workers serve on: each notices
that its parent changed (``Parent``), or connect that its control socket
closed, says so in the log, and goes on.  The connect process then listens
on a Unix socket in the private doorbell folder (``ADOPT``).
``python -m server run`` with the same key finds them (``find_orphans``:
their pids are on the status board, the supervisor's is dead, and each pid
is still a worker of ours), connects to that socket and is sent, like any
supervisor, the listening socket (LISTEN) and a duplicate of every client
socket (OPEN), so the clients notice nothing.  It watches the adopted
processes through pidfds (``AdoptedProcess``: they are not its children,
so their exit status is not known), and restarts them like its own when
they die.  If the workers are gone too, ``run`` recovers the segment as
always.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import selectors
import signal
import socket
import struct
import subprocess
import time
from typing import Any

from ..core.config import ServerConfig
from ..core.status import Role
from ..core.supervision import UNKNOWN_EXIT
from ..errors import SegmentInUse
from ..ipc.doorbell import check_private, doorbell_name, run_dir
from ..ipc.segment import ServerSegment
from ..ipc.shm import SHMFactory
from .common import alive
from .keeper import LISTEN, recv_fds

log = logging.getLogger("server.supervisor")

ADOPT = "adopt"  # the connect process's socket for a new supervisor (a doorbell's name)
ANSWER_WITHIN = 5.0  # seconds for an orphaned connect process to answer


def adopt_address(key: int) -> str:
    """The ADOPT socket's path: in the doorbell folder, which must be ours alone."""
    return os.path.join(check_private(run_dir()), doorbell_name(key, ADOPT))


class AdoptedProcess:
    """The part of ``subprocess.Popen`` the supervisor uses, for a process
    that is not its child: watched through a pidfd (which also makes a
    signal never reach another process that reused the pid)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.fd = os.pidfd_open(pid)
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and select.select([self.fd], [], [], 0)[0]:
            self._ended()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            if not select.select([self.fd], [], [], timeout)[0]:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0.0)
            self._ended()
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            try:
                signal.pidfd_send_signal(self.fd, sig)
            except ProcessLookupError:
                self._ended()

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def _ended(self) -> None:
        self.returncode = UNKNOWN_EXIT
        os.close(self.fd)


def _is_our_worker(pid: int, role: Role) -> bool:
    try:
        if os.stat(f"/proc/{pid}").st_uid != os.geteuid():
            return False
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().split(b"\0")
    except OSError:
        return False
    return b"worker" in args and role.name.lower().encode() in args


def find_orphans(cfg: ServerConfig) -> dict[Role, int]:
    """The workers of a dead supervisor that still serve on segment
    ``cfg.key``, by role ({} when there are none)."""
    if SHMFactory.attached_elsewhere(cfg.key) <= 0:
        return {}
    try:
        seg = ServerSegment.attach(cfg)
    except Exception as err:  # another layout, corrupt: the usual refusal says what to do
        log.debug("not adopting: %s", err)
        return {}
    try:
        status = seg.status
        if alive(status.pid(Role.SUPERVISOR)):
            return {}
        found = {}
        for role in (Role.CONNECT, Role.LOGIC):
            pid = status.pid(role)
            if alive(pid) and _is_our_worker(pid, role):
                found[role] = pid
        return found
    finally:
        seg.detach()


def reach_connect(key: int, pid: int) -> tuple[socket.socket, socket.socket]:
    """Connect to the orphaned connect process ``pid``: our end of its new
    control socket, and the listening socket it sends first.  Raises
    ``SegmentInUse`` when it does not answer."""
    path = adopt_address(key)
    deadline = time.monotonic() + ANSWER_WITHIN  # it looks for its supervisor once a second
    while True:
        control = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            control.connect(path)
            peer = struct.unpack(
                "3i", control.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
            )
            if peer[0] != pid:
                raise OSError(f"{path} is held by pid {peer[0]}, not the connect process {pid}")
            control.settimeout(ANSWER_WITHIN)
            while True:
                message, fds = recv_fds_blocking(control)
                if message == LISTEN and len(fds) == 1:
                    control.setblocking(False)
                    return control, socket.socket(fileno=fds[0])
                for fd in fds:
                    os.close(fd)
                if not message:
                    raise OSError("it closed the socket")
        except OSError as err:
            control.close()
            if time.monotonic() > deadline:
                raise SegmentInUse(
                    f"the connect process (pid {pid}) of a supervisor that died still serves "
                    f"key 0x{key:08x} but does not answer on {path} ({err}); stop it "
                    f"(kill {pid}) and run again",
                    key=key,
                    attached=1,
                ) from None
            time.sleep(0.1)


def recv_fds_blocking(sock: socket.socket) -> tuple[bytes, list[int]]:
    """One message and its descriptors, waiting up to the socket's timeout."""
    if not select.select([sock], [], [], sock.gettimeout())[0]:
        raise OSError("no answer")
    return recv_fds(sock, 64, 1)


# -- the connect process's side ---------------------------------------------------------
def await_adopter(key: int) -> socket.socket:
    """The listening socket a new supervisor will connect to (the doorbell
    folder is ours alone; a file a killed process left there is replaced)."""
    path = adopt_address(key)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.bind(path)
    os.chmod(path, 0o600)
    sock.listen(1)
    sock.setblocking(False)
    return sock


def accept_adopter(listening: socket.socket) -> tuple[socket.socket, int] | None:
    """A supervisor of the same user connected: its socket and pid."""
    try:
        sock, _ = listening.accept()
    except (BlockingIOError, InterruptedError):
        return None
    pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    if uid != os.geteuid():
        log.warning("refused an adopter of another user (uid %d, pid %d)", uid, pid)
        sock.close()
        return None
    sock.setblocking(False)
    return sock, pid


def stop_awaiting(listening: socket.socket, key: int) -> None:
    listening.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(adopt_address(key))


def lost_supervisor(proc: Any) -> None:
    """The connect process's supervisor is gone: serve on, and wait for a
    new one on the ADOPT socket."""
    if proc.orphaned:
        return
    proc.orphaned = True
    try:
        proc.adopter = await_adopter(proc.cfg.key)
    except OSError as err:
        log.error("cannot wait for a new supervisor (%s): serving on unsupervised", err)
    else:
        proc.sel.register(proc.adopter, selectors.EVENT_READ, "adopter")
    log.warning(
        "the supervisor is gone; serving on (`python -m server run` with the same key "
        "adopts this process and its clients; SIGTERM stops it)"
    )


def adopted(proc: Any) -> None:
    """A new supervisor connected to the ADOPT socket: it becomes ours."""
    got = accept_adopter(proc.adopter)
    if got is None:
        return
    sock, pid = got
    if proc.stopping or proc.control is not None:
        log.warning("not adopted by pid %d: %s", pid, "stopping" if proc.stopping else "supervised")
        sock.close()
        return
    proc.sel.unregister(proc.adopter)
    stop_awaiting(proc.adopter, proc.cfg.key)
    proc.adopter = None
    proc.control = proc.notices.control = sock
    proc.sel.register(sock, selectors.EVENT_READ, "control")
    proc.notices.listening(proc.listener)
    for c in proc.table.clients.values():
        proc.notices.opened(c.conn, c.handle)
    proc.orphaned = False
    proc.adopted = True
    log.info(
        "adopted by a new supervisor (pid %d): it holds the listening socket and %d client(s)",
        pid,
        len(proc.table.clients),
    )
