"""A stepwise TCP server framework whose work survives ``kill -9``.

General layout (each module's docstring is its theory of operation; a layer
imports only the layers below it, and ``tests/test_layers.py`` checks it)::

    server.cli     command line, inspector formatting, demo, line client
    server.proc    supervisor, connect and logic processes: thin loops
    server.ipc     System V segment + allocator, doorbells, CodeQueue
    server.core    pure: ring, segment header, codes, framing, journal,
                   client table, logic stepper, supervisor decisions, apps
    server.errors  the whole exception tree

A new part goes in the lowest layer that can hold it: a decision (when to
close, what to resend, when to restart) is a pure function or class in
``core``, tested on bytes and numbers; only ``ipc`` and ``proc`` touch the
operating system.

The names below are the public API::

    from server import SHMFactory, StartMode, CodeQueue

    shm = SHMFactory.create_product(key, size)   # INIT, or RECOVER if it exists
    q = CodeQueue(shm, 1 << 16, "inbound")       # INIT formats, RECOVER keeps
    q.push(b"hello"); q.pop()                    # nothing else to call, ever

    from server import SharedQueue               # many unrelated writers and readers
    sq = SharedQueue.open(key, capacity=1 << 20) # creates or attaches, in any order
    sq.push(b"hello", timeout=None); sq.pop(timeout=None)
"""

from .core.app import Conn
from .core.header import StartMode
from .errors import (
    BadCode,
    CannotListen,
    CodeTooLarge,
    ConfigError,
    CorruptQueue,
    CorruptSegment,
    Detached,
    DoorbellInUse,
    DoorbellPermissionError,
    FrameTooLarge,
    HandoverError,
    LayoutMismatch,
    ProtocolError,
    SegmentError,
    SegmentFull,
    SegmentInUse,
    SegmentPermissionError,
    ServerError,
    ServerUnreachable,
)
from .ipc.codequeue import CodeQueue
from .ipc.sharedqueue import SharedQueue
from .ipc.shm import SharedMemory, SHMFactory

__version__ = "0.1.0"

__all__ = [
    "SHMFactory",
    "SharedMemory",
    "StartMode",
    "CodeQueue",
    "SharedQueue",
    "Conn",
    "ServerError",
    "SegmentError",
    "SegmentInUse",
    "SegmentPermissionError",
    "CorruptSegment",
    "CorruptQueue",
    "BadCode",
    "LayoutMismatch",
    "SegmentFull",
    "Detached",
    "CodeTooLarge",
    "DoorbellInUse",
    "DoorbellPermissionError",
    "ProtocolError",
    "FrameTooLarge",
    "HandoverError",
    "ConfigError",
    "CannotListen",
    "ServerUnreachable",
]
