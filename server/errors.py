"""Every exception the package raises, in one tree.

``ServerError`` is the root; catch it to catch anything of ours.  Each leaf
also inherits the builtin it refines (``CodeTooLarge`` is a ``ValueError``), so
callers that only know the builtins still catch it::

    ServerError
    +-- SegmentError (OSError)            a segment cannot be made, attached, removed
    |   +-- SegmentInUse                  ... because other processes use it
    |   +-- SegmentPermissionError        ... because it is not safely ours
    +-- CorruptSegment (ValueError)       a value read from shared memory is impossible
    |   +-- CorruptQueue                  ... in a queue's counters or records
    |   +-- BadCode                       ... in a code's kind or length
    +-- LayoutMismatch (ValueError)       RECOVER found other objects than configured
    +-- SegmentFull (MemoryError)         a placement does not fit
    +-- Detached (ValueError)             the segment was detached: you closed it
    +-- CodeTooLarge (ValueError)         a code can never fit in its queue
    +-- DoorbellInUse (OSError)           another consumer listens on a doorbell
    +-- DoorbellPermissionError (PermissionError)  its folder is not safely ours
    +-- ProtocolError (ValueError)        a client broke the framing
    |   +-- FrameTooLarge                 ... with a frame over the limit
    +-- ConfigError (ValueError)          an option has a value we cannot run with
    +-- CannotListen (OSError)            the listening address cannot be bound
    +-- ServerUnreachable (ConnectionError)  a client cannot reach the server
    +-- HandoverError (ValueError)        a connect process's handover is malformed

Each error declares the data it talks about as keyword fields with
defaults (as asyncio's ``IncompleteReadError`` does), so a type checker sees
them and ``pickle`` keeps them: an error may cross a process boundary (a
child reports why it died), and ``BaseException.__reduce__`` passes the
message back to ``__init__`` and restores the fields from ``__dict__``.
Messages name the offending value and say what to do next.
"""

from __future__ import annotations


class ServerError(Exception):
    """Root of every error raised by this package."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


# -- shared memory ----------------------------------------------------------


class SegmentError(ServerError, OSError):
    """A System V segment with ``key`` could not be created, attached or
    removed (``size``: the size asked for, when creating)."""

    def __init__(self, message: str, *, key: int | None = None, size: int | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.size = size


class SegmentInUse(SegmentError):
    """The segment must be removed or re-created, but ``attached`` other live
    processes still use it (``problem``: why it had to be re-made)."""

    def __init__(
        self, message: str, *, key: int | None = None, attached: int = 0, problem: str = ""
    ) -> None:
        super().__init__(message, key=key)
        self.attached = attached
        self.problem = problem


class SegmentPermissionError(SegmentError, PermissionError):
    """The segment belongs to another user (``found`` is its uid), or group
    or other may use it (``found`` is its mode): attaching to it would let
    others inject codes.  ``expected`` is our uid or 0o600."""

    def __init__(
        self,
        message: str,
        *,
        key: int | None = None,
        found: int | None = None,
        expected: int | None = None,
    ) -> None:
        super().__init__(message, key=key)
        self.found = found
        self.expected = expected


class CorruptSegment(ServerError, ValueError):
    """A value read from shared memory is out of range: ``field`` held
    ``found`` where ``expected`` was allowed.  Shared memory is untrusted."""

    def __init__(
        self, message: str, *, field: str = "", found: object = None, expected: object = None
    ) -> None:
        super().__init__(message)
        self.field = field
        self.found = found
        self.expected = expected


class CorruptQueue(CorruptSegment):
    """A queue's counters or a record length read from shared memory are
    impossible."""


class BadCode(CorruptSegment):
    """A code read from a queue has an unknown kind, is too short, or its
    frames do not chain to its end."""


class LayoutMismatch(ServerError, ValueError):
    """RECOVER found object #``index`` (``found``: name, kind, size) placed
    otherwise than this configuration places it (``expected``), or another
    number of objects."""

    def __init__(
        self,
        message: str,
        *,
        name: str = "",
        index: int | None = None,
        expected: object = None,
        found: object = None,
    ) -> None:
        super().__init__(message)
        self.name = name
        self.index = index
        self.expected = expected
        self.found = found


class SegmentFull(ServerError, MemoryError):
    """Placing ``name`` needs the segment to be ``needed`` bytes, but it has
    ``size`` (or the directory is full)."""

    def __init__(
        self, message: str, *, name: str = "", needed: int | None = None, size: int | None = None
    ) -> None:
        super().__init__(message)
        self.name = name
        self.needed = needed
        self.size = size


class Detached(ServerError, ValueError):
    """The segment ``key`` was detached (by you); objects placed on it can no
    longer be used."""

    def __init__(self, message: str, *, key: int | None = None) -> None:
        super().__init__(message)
        self.key = key


# -- queues -------------------------------------------------------------------


class CodeTooLarge(ServerError, ValueError):
    """A code of ``size`` bytes is larger than ``limit``, the most its queue
    could ever hold (or the most one step's replies may take)."""

    def __init__(self, message: str, *, size: int = 0, limit: int = 0) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit


class DoorbellInUse(ServerError, OSError):
    """Another live consumer already listens on the doorbell at ``address``."""

    def __init__(self, message: str, *, address: bytes = b"") -> None:
        super().__init__(message)
        self.address = address


class DoorbellPermissionError(ServerError, PermissionError):
    """The doorbells' folder ``path`` is missing, not ours, or open to others:
    another user could take or ring our doorbells."""

    def __init__(self, message: str, *, path: str = "") -> None:
        super().__init__(message)
        self.path = path


# -- wire protocol ------------------------------------------------------------


class ProtocolError(ServerError, ValueError):
    """A client sent bytes that break the framing (``at``: where, when known)."""

    def __init__(self, message: str, *, at: int | None = None) -> None:
        super().__init__(message)
        self.at = at


class FrameTooLarge(ProtocolError):
    """A client announced or sent a frame of ``size`` bytes, over ``limit``."""

    def __init__(self, message: str, *, size: int = 0, limit: int = 0) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit


# -- running a server ---------------------------------------------------------------


class ConfigError(ServerError, ValueError):
    """The option ``option`` has ``value``, which the server cannot run with."""

    def __init__(self, message: str, *, option: str = "", value: object = None) -> None:
        super().__init__(message)
        self.option = option
        self.value = value


class CannotListen(ServerError, OSError):
    """The listening socket cannot be bound to ``host``:``port`` (in use,
    or not allowed)."""

    def __init__(self, message: str, *, host: str = "", port: int = 0) -> None:
        super().__init__(message)
        self.host = host
        self.port = port


class ServerUnreachable(ServerError, ConnectionError):
    """A client cannot connect to ``host``:``port``."""

    def __init__(self, message: str, *, host: str = "", port: int = 0) -> None:
        super().__init__(message)
        self.host = host
        self.port = port


class HandoverError(ServerError, ValueError):
    """A message of a connect process's handover to its successor (message
    number ``index``) is malformed: ``found`` is what was wrong."""

    def __init__(self, message: str, *, index: int = 0, found: object = None) -> None:
        super().__init__(message)
        self.index = index
        self.found = found
