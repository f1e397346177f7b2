"""Shared fixtures: random System V keys that are always removed.

Every test that touches System V takes a ``key`` (or ``keys``) from here;
whatever exists under that key when the test ends, passes or fails, is
removed, and processes a test started are killed first (see ``procs``).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import random
import signal
from collections.abc import Iterator, Sequence

import pytest
import sysv_ipc

_fork = multiprocessing.get_context("fork")


def _free_key() -> int:
    while True:
        key = random.randint(0x1000_0000, 0x7FFF_FFFF)
        try:
            sysv_ipc.SharedMemory(key, 0).detach()
        except sysv_ipc.ExistentialError:
            return key


def remove_everything(key: int) -> None:
    with contextlib.suppress(sysv_ipc.ExistentialError):
        seg = sysv_ipc.SharedMemory(key, 0)
        seg.remove()
        seg.detach()
    from server.ipc.semlock import pop_lock_key

    for sem_key in (key, pop_lock_key(key)):  # a SharedQueue's two locks
        with contextlib.suppress(sysv_ipc.ExistentialError):
            sysv_ipc.Semaphore(sem_key).remove()
    from server.ipc.doorbell import remove_doorbells

    remove_doorbells(key)  # a killed consumer leaves its doorbell's socket file


class Procs:
    """Start child processes (fork) and make sure none outlives the test."""

    def __init__(self) -> None:
        self.started: list[multiprocessing.process.BaseProcess] = []

    def start(self, target, *args) -> multiprocessing.process.BaseProcess:  # type: ignore[no-untyped-def]
        p = _fork.Process(target=target, args=args, daemon=True)
        p.start()
        self.started.append(p)
        return p

    def kill_all(self) -> None:
        for p in self.started:
            if p.is_alive() and p.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGKILL)
            p.join(5)


@pytest.fixture
def procs() -> Iterator[Procs]:
    tracker = Procs()
    yield tracker
    tracker.kill_all()


@pytest.fixture
def key(procs: Procs) -> Iterator[int]:
    k = _free_key()
    yield k
    procs.kill_all()
    remove_everything(k)


@pytest.fixture
def keys(procs: Procs) -> Iterator[list[int]]:
    made = [_free_key() for _ in range(3)]
    yield made
    procs.kill_all()
    for k in made:
        remove_everything(k)


@pytest.fixture
def start_server(key: int, tmp_path):  # type: ignore[no-untyped-def]
    """start_server(*args) -> a running ServerProc on a free port; every
    process of it is killed and its segment removed after the test."""
    from helpers.server import ServerProc

    started: list[ServerProc] = []

    def start(
        *args: str,
        log_name: str = "server.log",
        env: dict[str, str] | None = None,
        prefix: Sequence[str] = (),
    ) -> ServerProc:
        server = ServerProc(key, tmp_path / log_name, *args, env=env, prefix=prefix).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill_all()
