"""One way to be an object placed in a segment (pure).

Every kind of object that lives in a segment (``CodeQueue``, ``StepJournal``,
``StatusBoard``, ``ConnTable``, and the ones to come) answers the same five
questions, so the server's segment and the inspector loop over kinds instead
of naming each one::

    KIND                         the kind recorded in the directory (<= 16 bytes)
    region_size(param) -> int    bytes its region takes for one configuration
                                 value (a queue's capacity, a table's slots;
                                 ignored by fixed-size kinds)
    param_of(size) -> int        the inverse, for a reader that only has the
                                 directory (the inspector)
    place(shm, name, param, observer=False) -> the object
                                 take the next region of ``shm`` and open it:
                                 INIT formats it, RECOVER validates and keeps
                                 it; an ``observer`` only looks (it skips
                                 checks that race with the running workers)
    report(name) -> dict         what the inspector shows of it, merged into
                                 the status dict one level deep

``Allocator`` is all ``place`` needs of a segment: ``core.allocator.SharedMemory``
is one, and so is anything else with ``placing(name, kind, size)`` and
``on_detach(release)``.  ``place`` opens the region inside ``placing``, so
the object is recorded as initialised only once ``on_region`` returned.  ``InSegment`` gives a pure kind
its ``place``; it only writes ``on_region`` (open a region it is handed).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, ClassVar, Protocol, TypeVar

from ..errors import CorruptSegment
from .header import StartMode

T = TypeVar("T", bound="InSegment")


class Allocator(Protocol):
    def placing(
        self, name: str, kind: str, size: int
    ) -> AbstractContextManager[tuple[memoryview, StartMode]]: ...

    def on_detach(self, release: Callable[[], None]) -> None: ...


class InSegment:
    """Base of every kind placed in a segment (see the module docstring)."""

    KIND: ClassVar[str]
    SIZE: ClassVar[int] = 0  # fixed-size kinds say their size here

    @classmethod
    def region_size(cls, param: int = 0) -> int:
        return cls.SIZE

    @classmethod
    def param_of(cls, size: int) -> int:
        return 0

    @classmethod
    def on_region(cls: type[T], region: memoryview, param: int, *, init: bool, observer: bool) -> T:
        raise NotImplementedError

    @classmethod
    def place(
        cls: type[T], shm: Allocator, name: str, param: int = 0, *, observer: bool = False
    ) -> T:
        with shm.placing(name, cls.KIND, cls.region_size(param)) as (region, mode):
            obj = cls.on_region(region, param, init=mode is StartMode.INIT, observer=observer)
        shm.on_detach(obj.release)
        return obj

    def release(self) -> None:
        raise NotImplementedError

    def report(self, name: str) -> dict[str, Any]:
        raise NotImplementedError


def magic_words(
    region: memoryview,
    size: int,
    magic: int,
    what: str,
    field: str,
    *,
    init: bool,
    where: str = "the segment",
    remedy: str = "remove it (python -m server clean) to start afresh",
) -> memoryview:
    """``region`` (``size`` bytes, else ValueError) as u64 words whose word 0
    is ``magic``: zeroed and stamped in INIT; checked in RECOVER, where
    another value is ``CorruptSegment`` naming ``what`` and ``field``."""
    if len(region) != size:
        raise ValueError(f"a {what} takes {size} bytes, got {len(region)}")
    words = region.cast("Q")
    if init:
        region[:] = bytes(size)
        words[0] = magic
    elif words[0] != magic:
        found = words[0]
        words.release()
        raise CorruptSegment(
            f"{what} magic is {found:#x}, expected {magic:#x}: {where} is corrupt; {remedy}",
            field=field,
            found=found,
            expected=magic,
        )
    return words


def slot_words(region: memoryview, slots: int, words: int, what: str, *, init: bool) -> memoryview:
    """``region`` as u64 words, ``words`` for each of ``slots`` slots (a
    per-connection table), zeroed in INIT; ValueError if the sizes differ."""
    size = 8 * words * slots
    if slots < 1 or len(region) != size:
        raise ValueError(f"{what} of {slots} slots takes {size} bytes, got {len(region)}")
    if init:
        region[:] = bytes(size)
    return region.cast("Q")


def merge_report(into: dict[str, Any], report: dict[str, Any]) -> None:
    """Merge one object's ``report`` into the status dict, one level deep
    (two queues both report under ``queues``)."""
    for key, value in report.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            into[key].update(value)
        else:
            into[key] = value
