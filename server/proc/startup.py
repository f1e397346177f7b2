"""The supervisor's start: the checks and the resources it takes first.

``refuse_if_running`` (another server holds the segment), ``listen`` (a
busy or invalid address fails before anything else, with what its errno
means), ``doorbell_folder`` (a private folder when the usual one is not
safely ours) and ``open_segment`` (INIT or RECOVER; a corrupt segment is
saved to a file and re-initialised, with a warning).
"""

from __future__ import annotations

import errno
import logging
import socket

from ..core.config import ServerConfig
from ..errors import CannotListen, CorruptSegment, DoorbellPermissionError, SegmentInUse
from ..ipc.doorbell import private_run_dir, run_dir
from ..ipc.segment import ServerSegment
from ..ipc.shm import SHMFactory
from .workers import save_copy

log = logging.getLogger("server.supervisor")


def refuse_if_running(cfg: ServerConfig) -> None:
    others = SHMFactory.attached_elsewhere(cfg.key)
    if others > 0:
        raise SegmentInUse(
            f"a server is already running with key 0x{cfg.key:08x} ({others} process(es) "
            f"attached); stop it first, or use another --key",
            key=cfg.key,
            attached=others,
        )


def listen(cfg: ServerConfig) -> socket.socket:
    try:
        return socket.create_server((cfg.host, cfg.port), backlog=1024)
    except OSError as err:
        raise CannotListen(
            f"cannot listen on {cfg.host}:{cfg.port}: {(err.strerror or str(err)).split(' (')[0]}; "
            f"{_why(err)}",
            host=cfg.host,
            port=cfg.port,
        ) from None


def _why(err: OSError) -> str:
    """What a failed bind means for the user."""
    if isinstance(err, socket.gaierror) or (err.errno or 0) < 0:  # getaddrinfo's EAI_* codes
        return "--host is not a valid address or host name"
    if err.errno == errno.EADDRINUSE:
        return "is another server using the port? pick another with --port (0: any free one)"
    if err.errno == errno.EADDRNOTAVAIL:
        return "--host is not an address of this machine"
    if err.errno == errno.EACCES:
        return "ports below 1024 need privileges; pick another with --port"
    return "check --host and --port"


def doorbell_folder() -> tuple[str, bool]:
    """Where the workers' doorbells go, and whether it is a private folder
    of our own (made when the usual one is not safely ours: a squatter
    cannot stop us)."""
    try:
        return run_dir(), False
    except DoorbellPermissionError as err:
        path = private_run_dir()
        log.warning("%s; using a private folder for the doorbells instead: %s", err, path)
        return path, True


def open_segment(cfg: ServerConfig, discard_pending: bool) -> ServerSegment:
    try:
        return ServerSegment.create(cfg, discard_pending=discard_pending)
    except CorruptSegment as err:
        path = save_copy(cfg.key)
        log.warning(
            "the segment 0x%08x is corrupt (%s): saved a copy to %s; re-initialising it, "
            "whatever it held is lost",
            cfg.key,
            err,
            path,
        )
        SHMFactory.remove(cfg.key)
        return ServerSegment.create(cfg)
