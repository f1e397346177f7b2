"""A lock the kernel gives back when its holder dies: a System V semaphore
taken with ``SEM_UNDO``.

Python has no robust process-shared mutex (``pthread_mutex`` with
``PTHREAD_MUTEX_ROBUST`` and its ``EOWNERDEAD``).  A System V semaphore of
value 1 is one, once every ``-1`` is taken with ``SEM_UNDO``: the kernel
keeps an adjustment per process and applies it when that process exits, for
any reason, ``SIGKILL`` included.  So a dead holder never blocks the others
for longer than its exit takes; what it left half done is the caller's to
repair (``server.core.sharedring``: the lock rule).

Taking it: one ``semop(-1, IPC_NOWAIT | SEM_UNDO)`` through ``sysv_ipc``
(a quarter of a microsecond; ``block = False``: this build's
``acquire(0)`` would wait); only when it is busy, a bounded wait.  The
``sysv_ipc`` build here has no ``semtimedop`` (``SEMAPHORE_TIMEOUT_SUPPORTED``
is False: ``acquire(timeout)`` would block for ever), so the bounded wait
calls ``semtimedop(2)`` from the C library through ``ctypes``, in slices of
at most a second, logging the holder once a wait passes a second.

Made with mode 0600 and refused if another user owns it or group or other
may use it, like the segments.  A semaphore is created (``semget``) and then
given its value (``semctl``) in two calls; one whose creator died between
them has value 0 and was never operated on (``o_time`` 0): it is given its
value by the next opener, with a warning, instead of blocking everyone.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import sysv_ipc

from ..core.allocator import key_text
from ..errors import SegmentError, SegmentPermissionError
from .shm import owner_problem

log = logging.getLogger("server.sharedqueue")

MODE = 0o600
SEM_UNDO = 0x1000
WAIT_SLICE = 1.0  # the longest single semtimedop; a wait longer than this is logged


class _Sembuf(ctypes.Structure):
    _fields_ = [
        ("sem_num", ctypes.c_ushort),
        ("sem_op", ctypes.c_short),
        ("sem_flg", ctypes.c_short),
    ]


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_libc = ctypes.CDLL(None, use_errno=True)
_semtimedop = _libc.semtimedop
_semtimedop.argtypes = [
    ctypes.c_int,
    ctypes.POINTER(_Sembuf),
    ctypes.c_size_t,
    ctypes.POINTER(_Timespec),
]
_semtimedop.restype = ctypes.c_int


class SemLock:
    """One lock: a semaphore of value 1, taken with ``SEM_UNDO``.

    ``acquire(timeout)`` -> bool (None: wait as long as it takes);
    ``release()``.  ``max_wait`` is the longest this process waited for it.
    ``holder()`` (a callable given by the owner of the lock word) names who
    holds it, for the log.
    """

    def __init__(self, sem: Any, what: str, holder: Callable[[], str] | None = None) -> None:
        self._sem = sem
        sem.undo = True
        # IPC_NOWAIT on every semop: sysv_ipc's acquire(0) still blocks
        # when its build lacks semtimedop; only ``block = False`` makes
        # acquire() a try.  Waiting is _wait's, through semtimedop.
        sem.block = False
        self.what = what
        self.key = sem.key & 0xFFFFFFFF
        self.holder = holder or (lambda: "unknown")
        self.max_wait = 0.0
        self._try = sem.acquire
        self.release = sem.release
        self._down = _Sembuf(0, -1, SEM_UNDO)

    @classmethod
    def open(cls, key: int, what: str) -> tuple[SemLock, bool]:
        """Create (value 1) or attach the semaphore ``key``: (lock, created)."""
        for _attempt in range(5):
            try:
                sem = sysv_ipc.Semaphore(key, sysv_ipc.IPC_CREX, mode=MODE, initial_value=1)
            except sysv_ipc.ExistentialError:
                pass
            else:
                return cls(sem, what), True
            try:
                sem = sysv_ipc.Semaphore(key)
            except sysv_ipc.ExistentialError:
                continue  # removed between our two calls
            except sysv_ipc.PermissionsError:
                raise SegmentPermissionError(
                    f"semaphore {key_text(key)} exists but we may not use it (another user's?); "
                    f"pick another key",
                    key=key,
                ) from None
            problem = owner_problem(sem, key, "semaphore", "anyone could take or block it", "-S")
            if problem is not None:
                raise problem
            return cls(sem, what), False
        raise SegmentError(
            f"semaphore {key_text(key)} kept appearing and vanishing; is another program "
            f"removing it?",
            key=key,
        )

    # -- taking and giving back --------------------------------------------------------
    def acquire(self, timeout: float | None = None) -> bool:
        if self.try_acquire():
            return True
        return self._wait(timeout)

    def try_acquire(self) -> bool:
        """Take it if it is free right now; never waits."""
        try:
            self._try()
            return True
        except sysv_ipc.BusyError:
            return False
        except sysv_ipc.ExistentialError:
            raise self._removed() from None

    def _wait(self, timeout: float | None) -> bool:
        start = time.monotonic()
        deadline = None if timeout is None else start + timeout
        semid = self._sem.id
        down = ctypes.byref(self._down)
        span = _Timespec()
        warned = False
        try:
            while True:
                now = time.monotonic()
                left = WAIT_SLICE if deadline is None else min(WAIT_SLICE, deadline - now)
                if left <= 0:
                    return False
                span.tv_sec = int(left)
                span.tv_nsec = int((left - int(left)) * 1e9)
                if _semtimedop(semid, down, 1, ctypes.byref(span)) == 0:
                    return True
                err = ctypes.get_errno()
                if err == errno.EINTR:
                    continue
                if err != errno.EAGAIN:
                    if err in (errno.EIDRM, errno.EINVAL):
                        raise self._removed()
                    raise OSError(err, f"semtimedop on the {self.what}: {os.strerror(err)}")
                if not warned and time.monotonic() - start >= WAIT_SLICE:
                    warned = True
                    self._unstick()
                    log.warning(
                        "waited %.1f s for the %s of %s, held by %s",
                        time.monotonic() - start,
                        self.what,
                        key_text(self.key),
                        self.holder(),
                    )
        finally:
            waited = time.monotonic() - start
            if waited > self.max_wait:
                self.max_wait = waited

    def _unstick(self) -> None:
        """A semaphore whose creator died before giving it its value."""
        sem = self._sem
        if sem.o_time == 0 and sem.value == 0:
            log.warning(
                "the %s of %s was never given its value (its creator died at that moment): "
                "setting it to 1",
                self.what,
                key_text(self.key),
            )
            sem.value = 1

    def _removed(self) -> SegmentError:
        return SegmentError(
            f"the {self.what} (semaphore {key_text(self.key)}) was removed while in use; "
            f"open the queue again",
            key=self.key,
        )

    # -- facts ---------------------------------------------------------------------------
    @property
    def free(self) -> bool:
        return bool(self._sem.value)

    @property
    def waiting(self) -> int:
        """Processes blocked waiting for it."""
        return int(self._sem.waiting_for_nonzero)

    def remove(self) -> None:
        with contextlib.suppress(sysv_ipc.ExistentialError):
            self._sem.remove()


def remove_lock(key: int) -> bool:
    """Remove semaphore ``key`` if it is there and ours; False if there was none."""
    try:
        sem = sysv_ipc.Semaphore(key)
    except (sysv_ipc.ExistentialError, sysv_ipc.PermissionsError):
        return False
    if sem.uid != os.geteuid():
        return False
    try:
        sem.remove()
    except sysv_ipc.ExistentialError:
        return False
    return True


def lock_exists(key: int) -> bool:
    try:
        sysv_ipc.Semaphore(key)
    except sysv_ipc.ExistentialError:
        return False
    except sysv_ipc.PermissionsError:
        return True
    return True


def pop_lock_key(key: int) -> int:
    """The pop lock's semaphore key, derived from the queue's key."""
    mixed = ((key & 0xFFFFFFFF) * 0x9E3779B1 + 0x5351) & 0x7FFFFFFF
    return mixed ^ 1 if mixed in (0, key) else mixed
