"""The server's segment: which objects it holds, in which order.

One segment per server key, placed in this order (the directory in the
header records it, and RECOVER checks it)::

    name      kind         size                       written by
    --------  -----------  -------------------------  ---------------------
    inbound   CodeQueue    256 + queue_bytes          connect -> logic
    outbound  CodeQueue    256 + queue_bytes          logic -> connect
    journal   StepJournal  64                         logic
    status    StatusBoard  512                        supervisor, workers
    conns     ConnTable    8 * max_conns              connect

The supervisor makes the segment (INIT or RECOVER, see ``SHMFactory``); the
workers attach to it and validate what they find.
"""

from __future__ import annotations

from .codequeue import CodeQueue
from .config import ServerConfig
from .conntable import ConnTable
from .conntable import region_size as conns_size
from .journal import REGION_SIZE as JOURNAL_SIZE
from .journal import StepJournal
from .layout import HEADER_SIZE, StartMode, align_up
from .shm import SharedMemory, SHMFactory
from .status import REGION_SIZE as STATUS_SIZE
from .status import StatusBoard

Layout = list[tuple[str, str, int]]


def server_layout(cfg: ServerConfig) -> Layout:
    return [
        CodeQueue.layout(cfg.queue_bytes, "inbound"),
        CodeQueue.layout(cfg.queue_bytes, "outbound"),
        ("journal", StepJournal.KIND, JOURNAL_SIZE),
        ("status", StatusBoard.KIND, STATUS_SIZE),
        ("conns", ConnTable.KIND, conns_size(cfg.max_conns)),
    ]


def segment_size(layout: Layout) -> int:
    return HEADER_SIZE + sum(align_up(size) for _, _, size in layout)


class ServerSegment:
    """The objects of one server segment, placed (INIT) or found (RECOVER)."""

    def __init__(self, shm: SharedMemory, cfg: ServerConfig) -> None:
        self.shm = shm
        init = shm.start_mode is StartMode.INIT
        try:
            self.inbound = CodeQueue(shm, cfg.queue_bytes, "inbound")
            self.outbound = CodeQueue(shm, cfg.queue_bytes, "outbound")
            self.journal = StepJournal(
                shm.place("journal", StepJournal.KIND, JOURNAL_SIZE), init=init
            )
            shm.on_detach(self.journal.release)
            self.status = StatusBoard(shm.place("status", StatusBoard.KIND, STATUS_SIZE), init=init)
            shm.on_detach(self.status.release)
            region = shm.place("conns", ConnTable.KIND, conns_size(cfg.max_conns))
            self.conns = ConnTable(region, cfg.max_conns, init=init)
            shm.on_detach(self.conns.release)
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

    @property
    def start_mode(self) -> StartMode:
        return self.shm.start_mode

    def detach(self) -> None:
        self.shm.detach()
