"""Every exception the package raises, in one tree.

``ServerError`` is the root; catch it to catch anything of ours.  Each leaf
also inherits the builtin it refines (``CodeTooLarge`` is a ``ValueError``), so
callers that only know the builtins still catch it.

Errors carry the data they talk about as attributes and survive pickling,
because they may cross a process boundary (a child reports why it died).
Their messages name the offending value and say what to do next.
"""

from __future__ import annotations

from typing import Any


class ServerError(Exception):
    """Root of every error raised by this package."""

    def __init__(self, message: str, **data: Any) -> None:
        super().__init__(message)
        self.message = message
        self.data = data
        for name, value in data.items():
            setattr(self, name, value)

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep the keyword data across pickling (the default __reduce__ would
        # only pass ``args`` back to __init__).
        return (_rebuild, (type(self), self.message, self.data))

    def __str__(self) -> str:
        return self.message


def _rebuild(cls: type[ServerError], message: str, data: dict[str, Any]) -> ServerError:
    err = cls.__new__(cls)
    ServerError.__init__(err, message, **data)
    return err


# -- shared memory ----------------------------------------------------------


class SegmentError(ServerError, OSError):
    """A System V segment could not be created, attached or removed."""


class SegmentInUse(SegmentError):
    """The segment must be removed or re-created, but other live processes
    are still attached to it (``attached`` says how many)."""


class SegmentPermissionError(SegmentError, PermissionError):
    """The segment belongs to another user, or is readable or writable by
    group/other: attaching to it would let others inject codes."""


class CorruptSegment(ServerError, ValueError):
    """A value read from shared memory is out of range (``field``,
    ``found``, ``expected`` say which).  Shared memory is untrusted input."""


class LayoutMismatch(ServerError, ValueError):
    """RECOVER mode found objects placed differently from what this
    configuration places (another queue size, another order, more objects)."""


class SegmentFull(ServerError, MemoryError):
    """A placement does not fit in the segment or its directory."""


class Detached(ServerError, ValueError):
    """The segment was detached; objects placed on it can no longer be used."""


# -- queues -------------------------------------------------------------------


class CodeTooLarge(ServerError, ValueError):
    """A code is larger than the queue could ever hold, even empty."""


class CorruptQueue(CorruptSegment):
    """A queue's counters or a record length read from shared memory are
    impossible (``field``, ``found``, ``expected``)."""


# -- wire protocol ------------------------------------------------------------


class ProtocolError(ServerError, ValueError):
    """A client sent bytes that break the framing."""


class FrameTooLarge(ProtocolError):
    """A client announced or sent a frame larger than ``limit`` bytes."""
