"""A doorbell: how a producer wakes a consumer that sleeps, without polling.

The consumer binds a Unix datagram socket and sleeps in
``select``/``selectors`` on its descriptor; the producer sends one byte to
it.  The socket lives in a folder that only this user may enter (mode 0700,
owned by us, not a symbolic link, checked every time), so no other user of
the machine can bind a doorbell first or ring it: the same rule as the
segment's 0600.  The folder is, in this order:

    $STCP_RUN_DIR          (the supervisor sets it for its workers)
    $XDG_RUNTIME_DIR/stcp  (systemd's per-user runtime folder)
    /tmp/stcp-<euid>       (made 0700 if missing)

A folder that fails the check is refused (``DoorbellPermissionError``, which
says whose it is); the supervisor then makes a private folder of its own
(``private_run_dir``) and hands it to its workers, so a squatter cannot stop
the server.  Each doorbell is ``stcp-k<key>-<queue>.sock`` in that folder.

A ring is idempotent: a poke that finds the socket buffer full (EAGAIN) or no
one listening (ECONNREFUSED, ENOENT) is dropped, because the consumer
re-checks its queue after every wake-up and before every sleep.  A consumer
killed by SIGKILL leaves its socket file behind: the next one finds nobody
answering there and binds it again; one still alive is ``DoorbellInUse``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import tempfile

from ..errors import DoorbellInUse, DoorbellPermissionError

RUN_DIR_ENV = "STCP_RUN_DIR"


def check_private(path: str) -> str:
    """``path`` if it is a folder of ours that nobody else may use."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise DoorbellPermissionError(
            f"the doorbell folder {path} does not exist", path=path
        ) from None
    problem = ""
    if not stat.S_ISDIR(st.st_mode):
        problem = "is not a folder (a link?)"
    elif st.st_uid != os.geteuid():
        problem = f"belongs to uid {st.st_uid}, not to us (uid {os.geteuid()})"
    elif st.st_mode & 0o077:
        problem = f"has mode {st.st_mode & 0o777:04o}: other users could take or ring our doorbells"
    if problem:
        raise DoorbellPermissionError(
            f"the doorbell folder {path} {problem}; remove it, or point {RUN_DIR_ENV} at a "
            f"folder of yours with mode 0700",
            path=path,
        )
    return path


def run_dir() -> str:
    """The folder the doorbells of this user's servers live in (see above)."""
    chosen = os.environ.get(RUN_DIR_ENV)
    if chosen:
        return check_private(chosen)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    path = os.path.join(runtime, "stcp") if runtime else f"/tmp/stcp-{os.geteuid()}"
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    return check_private(path)


def private_run_dir() -> str:
    """A new folder only we can use (random name, made 0700 atomically)."""
    return tempfile.mkdtemp(prefix=f"stcp-{os.geteuid()}-")


def doorbell_name(key: int | None, name: str) -> str:
    """The socket's file name for queue ``name`` in segment ``key``.  A plain
    buffer (key None) gets one unique to this process and queue name."""
    owner = f"k{key & 0xFFFFFFFF:08x}" if key is not None else f"p{os.getpid()}"
    return f"stcp-{owner}-{name}.sock"


def remove_doorbells(key: int) -> int:
    """Remove the socket files of segment ``key``'s doorbells (a consumer
    killed by SIGKILL leaves its file); how many there were."""
    try:
        folder = run_dir()
    except DoorbellPermissionError:
        return 0
    prefix = f"stcp-k{key & 0xFFFFFFFF:08x}-"
    removed = 0
    for entry in os.listdir(folder):
        if entry.startswith(prefix) and entry.endswith(".sock"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(folder, entry))
                removed += 1
    return removed


class Doorbell:
    """The doorbell of one queue.  Its folder is found (and checked) on
    first use, so a process that only places or inspects queues never
    touches it."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self._address: str | None = None
        self._listener: socket.socket | None = None
        self._sender: socket.socket | None = None

    @property
    def address(self) -> str:
        if self._address is None:
            self._address = os.path.join(run_dir(), self.filename)
        return self._address

    # -- consumer side -------------------------------------------------------
    def listen(self) -> None:
        if self._listener is not None:
            return
        check_private(os.path.dirname(self.address))
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        sock.setblocking(False)
        try:
            try:
                sock.bind(self.address)
            except OSError:
                if self._answers():
                    raise
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.address)  # left by a consumer that was killed
                sock.bind(self.address)
        except OSError as err:
            sock.close()
            raise DoorbellInUse(
                f"doorbell {self.address} is taken ({err.strerror}): is another consumer of "
                f"this queue running?",
                address=self.address.encode(),
            ) from None
        self._listener = sock

    def _answers(self) -> bool:
        """Is a live consumer bound at our address?"""
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            probe.connect(self.address)
        except OSError:
            return False
        finally:
            probe.close()
        return True

    def fileno(self) -> int:
        """The descriptor to wait on (binds the address on first use)."""
        self.listen()
        assert self._listener is not None
        return self._listener.fileno()

    def drain(self) -> int:
        """Swallow every pending poke; returns how many there were."""
        sock = self._listener
        if sock is None:
            return 0
        count = 0
        while True:
            try:
                sock.recv(64)
            except (BlockingIOError, InterruptedError):
                return count
            count += 1

    # -- producer side ---------------------------------------------------------
    def ring(self) -> bool:
        """Poke the consumer; False if nobody listens or a poke is pending."""
        return self.poke(self.address) is True

    def poke(self, address: str) -> bool | None:
        """Ring the doorbell at ``address`` (another consumer's) with this
        one's sender: True rung, False a poke is pending there already
        (someone listens), None nobody listens (its consumer is gone)."""
        sock = self._sender
        if sock is None:
            sock = self._sender = socket.socket(
                socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
            )
            sock.setblocking(False)
        try:
            sock.sendto(b"!", address)
        except (BlockingIOError, InterruptedError):
            return False
        except (ConnectionRefusedError, FileNotFoundError):
            return None
        return True

    def close(self) -> None:
        if self._listener is not None and self._address is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._address)
        for sock in (self._listener, self._sender):
            if sock is not None:
                sock.close()
        self._listener = self._sender = None
