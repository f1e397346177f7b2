"""The server's segment: which objects it holds, in which order.

One segment per server key, placed in this order (the directory in the
header records it, and RECOVER checks it)::

    name      kind         size                       written by
    --------  -----------  -------------------------  ---------------------
    inbound   CodeQueue    256 + queue_bytes          connect -> logic
    outbound  CodeQueue    256 + queue_bytes          logic -> connect
    journal   StepJournal  128                        logic
    status    StatusBoard  1024                       supervisor, workers
    conns     ConnTable    8 * max_conns              connect
    setaside  SetAsideLog  256 + 64 KiB               logic (poison requests kept)

Every kind is placed the same way (``server.core.placed``): ``objects(cfg)``
lists (name, kind, parameter), and both the layout that ``create_product``
checks and the placing itself are read off that one list.  ``KINDS`` maps a
directory kind back to its class, for the inspector.

The supervisor makes the segment (INIT or RECOVER, see ``SHMFactory``); the
workers attach to it and validate what they find.
"""

from __future__ import annotations

import contextlib

from ..core.config import ServerConfig
from ..core.conntable import ConnTable
from ..core.header import HEADER_SIZE, StartMode, align_up
from ..core.journal import StepJournal
from ..core.placed import InSegment
from ..core.setaside import CAPACITY as SETASIDE_CAPACITY
from ..core.setaside import SetAsideLog
from ..core.status import StatusBoard
from ..errors import CorruptSegment
from .codequeue import CodeQueue
from .shm import SharedMemory, SHMFactory

Layout = list[tuple[str, str, int]]
Objects = list[tuple[str, type[InSegment], int]]

KINDS: dict[str, type[InSegment]] = {
    cls.KIND: cls for cls in (CodeQueue, StepJournal, StatusBoard, ConnTable, SetAsideLog)
}


def objects(cfg: ServerConfig) -> Objects:
    """(name, kind, parameter) of every object of a server segment, in order."""
    return [
        ("inbound", CodeQueue, cfg.queue_bytes),
        ("outbound", CodeQueue, cfg.queue_bytes),
        ("journal", StepJournal, 0),
        ("status", StatusBoard, 0),
        ("conns", ConnTable, cfg.max_conns),
        ("setaside", SetAsideLog, SETASIDE_CAPACITY),
    ]


def layout_of(objs: Objects) -> Layout:
    """The directory entries (name, kind, size) that ``objs`` take."""
    return [(name, cls.KIND, cls.region_size(param)) for name, cls, param in objs]


def server_layout(cfg: ServerConfig) -> Layout:
    return layout_of(objects(cfg))


def segment_size(layout: Layout) -> int:
    return HEADER_SIZE + sum(align_up(size) for _, _, size in layout)


class ServerSegment:
    """The objects of one server segment, placed (INIT) or found (RECOVER)."""

    inbound: CodeQueue
    outbound: CodeQueue
    journal: StepJournal
    status: StatusBoard
    conns: ConnTable
    setaside: SetAsideLog

    def __init__(self, shm: SharedMemory, cfg: ServerConfig) -> None:
        self.shm = shm
        try:
            for name, cls, param in objects(cfg):
                setattr(self, name, cls.place(shm, name, param))
            shm.mark_ready()
        except BaseException:
            shm.detach()
            raise

    @classmethod
    def create(cls, cfg: ServerConfig) -> ServerSegment:
        """The supervisor's start: INIT or RECOVER."""
        layout = server_layout(cfg)
        return cls(SHMFactory.create_product(cfg.key, segment_size(layout), layout), cfg)

    @classmethod
    def attach(cls, cfg: ServerConfig) -> ServerSegment:
        """A worker's start: the supervisor made the segment ready."""
        return cls(SHMFactory.attach(cfg.key), cfg)

    def losses(self) -> str:
        """What re-initialising would throw away, in words (best effort: the
        segment may be corrupt)."""
        parts = []
        for name in ("inbound", "outbound"):
            try:
                parts.append(f"{getattr(self, name).stats()['pending']} codes pending {name}")
            except (CorruptSegment, ValueError):
                parts.append(f"the {name} queue (unreadable)")
        with contextlib.suppress(ValueError):
            parts.append(f"{self.conns.count_open()} open connections")
        return ", ".join(parts)

    @property
    def start_mode(self) -> StartMode:
        return self.shm.start_mode

    def detach(self) -> None:
        self.shm.detach()
