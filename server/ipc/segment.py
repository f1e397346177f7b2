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
    streams   StreamLedger 128 * max_conns            connect (where each stream stands)
    busjournal BusJournal  64                         logic (on a bus: the room's steps)

Every kind is placed the same way (``server.core.placed``): ``objects(cfg)``
lists (name, kind, parameter), and both the layout that ``create_product``
checks and the placing itself are read off that one list.  ``KINDS`` maps a
directory kind back to its class, for the inspector.

The supervisor makes the segment (INIT or RECOVER, see ``SHMFactory``); the
workers attach to it and validate what they find.
"""

from __future__ import annotations

import contextlib
import logging

from ..core.bridge import BusJournal
from ..core.config import ServerConfig
from ..core.conntable import ConnTable
from ..core.header import HEADER_SIZE, StartMode, align_up
from ..core.journal import StepJournal
from ..core.linkboard import LinkBoard
from ..core.placed import InSegment
from ..core.setaside import CAPACITY as SETASIDE_CAPACITY
from ..core.setaside import SetAsideLog
from ..core.status import StatusBoard
from ..core.streams import StreamLedger
from ..errors import ConfigError, CorruptSegment, SegmentError
from .codequeue import CodeQueue
from .sharedqueue import SharedQueue
from .shm import SharedMemory, SHMFactory

log = logging.getLogger("server.supervisor")

Layout = list[tuple[str, str, int]]
Objects = list[tuple[str, type[InSegment], int]]

KINDS: dict[str, type[InSegment]] = {
    cls.KIND: cls
    for cls in (
        CodeQueue,
        StepJournal,
        StatusBoard,
        ConnTable,
        SetAsideLog,
        StreamLedger,
        SharedQueue,
        LinkBoard,
        BusJournal,
    )
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
        ("streams", StreamLedger, cfg.max_conns),
        ("busjournal", BusJournal, 0),
    ]


def layout_of(objs: Objects) -> Layout:
    """The directory entries (name, kind, size) that ``objs`` take."""
    return [(name, cls.KIND, cls.region_size(param)) for name, cls, param in objs]


def server_layout(cfg: ServerConfig) -> Layout:
    return layout_of(objects(cfg))


def segment_size(layout: Layout) -> int:
    return HEADER_SIZE + sum(align_up(size) for _, _, size in layout)


def refuse_layout_change(cfg: ServerConfig, layout: Layout, discard_pending: bool) -> None:
    """Pending work is never thrown away silently because an option changed."""
    if not SHMFactory.exists(cfg.key):
        return
    try:
        shm = SHMFactory.attach(cfg.key)
    except (CorruptSegment, SegmentError):
        return  # not recoverable anyway: the factory re-makes it, with a warning
    try:
        found = [(p.name, p.kind, p.size) for p in shm.placements()]
        if found == layout and shm.size == segment_size(layout):
            return
        pending = _pending(shm)
    finally:
        shm.detach()
    what = ", ".join(f"{n} {name}" for name, n in pending.items() if n) or "nothing pending"
    differ = _options_that_differ(found, cfg)
    if not any(pending.values()):
        log.info("segment 0x%08x was made with %s; it holds nothing: re-made", cfg.key, differ)
        return
    if discard_pending:
        log.warning(
            "--discard-pending: segment 0x%08x was made with %s; discarding %s",
            cfg.key,
            differ,
            what,
        )
        return
    raise ConfigError(
        f"segment 0x{cfg.key:08x} was made with {differ}, and it holds {what}; to keep them, "
        f"run with the options it was made with (it drains, then stop and start anew); to throw "
        f"them away, run with --discard-pending",
        option=differ.split()[0] if differ.startswith("--") else "--key",
        value=cfg.key,
    )


def _pending(shm: SharedMemory) -> dict[str, int]:
    """Codes pending in each queue and connections open, read as an observer."""
    counts = {"codes pending inbound": 0, "codes pending outbound": 0, "open connections": 0}
    for p in shm.placements():
        kind = KINDS.get(p.kind)
        if kind is CodeQueue and p.name in ("inbound", "outbound"):
            queue = CodeQueue.place(shm, p.name, CodeQueue.param_of(p.size), observer=True)
            counts[f"codes pending {p.name}"] = len(queue)
        elif kind is ConnTable:
            counts["open connections"] = ConnTable.place(
                shm, p.name, ConnTable.param_of(p.size), observer=True
            ).count_open()
        else:
            shm.skip()  # keep the order; nothing to count
    return counts


def _options_that_differ(found: Layout, cfg: ServerConfig) -> str:
    sizes = {name: size for name, _, size in found}
    differ = []
    if "inbound" in sizes and CodeQueue.param_of(sizes["inbound"]) != cfg.queue_bytes:
        differ.append(
            f"--queue-bytes {CodeQueue.param_of(sizes['inbound'])} (now {cfg.queue_bytes})"
        )
    if "conns" in sizes and ConnTable.param_of(sizes["conns"]) != cfg.max_conns:
        differ.append(f"--max-conns {ConnTable.param_of(sizes['conns'])} (now {cfg.max_conns})")
    return ", ".join(differ) or "another layout (another version of the server?)"


class ServerSegment:
    """The objects of one server segment, placed (INIT) or found (RECOVER)."""

    inbound: CodeQueue
    outbound: CodeQueue
    journal: StepJournal
    status: StatusBoard
    conns: ConnTable
    setaside: SetAsideLog
    streams: StreamLedger
    busjournal: BusJournal

    def __init__(self, shm: SharedMemory, cfg: ServerConfig) -> None:
        self.shm = shm
        try:
            for name, cls, param in objects(cfg):
                setattr(self, name, cls.place(shm, name, param))
            shm.check_all_placed()
        except BaseException:
            shm.detach()
            raise

    @classmethod
    def create(cls, cfg: ServerConfig, *, discard_pending: bool = False) -> ServerSegment:
        """The supervisor's start: INIT or RECOVER.  A segment laid out for
        other options is re-made only if it holds nothing pending (or with
        ``discard_pending``); otherwise ``ConfigError`` says what differs."""
        layout = server_layout(cfg)
        refuse_layout_change(cfg, layout, discard_pending)
        return cls(SHMFactory.create_product(cfg.key, segment_size(layout), layout), cfg)

    @classmethod
    def attach(cls, cfg: ServerConfig) -> ServerSegment:
        """A worker's start: the supervisor made the segment (an observer's
        attach: a worker never initialises an object)."""
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
