"""Inbound codes on their way to the queue, and where their bytes are (pure).

The connect process reads a client's socket with ``MSG_PEEK`` and takes
bytes out of it only once the frames they make up are in the inbound queue
(``server.core.streams``).  So each inbound code waits as an *item*::

    (code, client, end)

``end`` is the client's stream offset just after the frames of the code
(what it has pushed once this code is in the queue), or -1 for a code in
the middle of a read that made several codes: the ledger may only be told
an offset at the end of a read (``fitting`` never cuts inside one).
``client`` is None for codes that carry no client bytes (OPENED, CLOSED,
codes a predecessor handed over): each of those is a boundary too.

Items of one client are in stream order, and one read's items are
consecutive, so an item's bytes are either all still in the kernel (its
read's ``end`` is past what was taken out: ``consumed``) or all taken out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .ring import RECORD_HEADER

Item = tuple[bytes, Any, int]  # (code, Client | None, end)


def read_items(
    c: Any, bodies: Sequence[bytes | memoryview], end: int, *, exact: bool
) -> list[Item]:
    """The items of one read of ``c`` that made several codes, the last
    ending at stream offset ``end``.  ``exact``: the bodies are the wire
    bytes themselves (the length framing), so every code's end is known;
    else (lines lost their newlines) only the last one's is."""
    prefix = c.prefix
    if not exact:
        items = [(prefix + body, c, -1) for body in bodies]
        items[-1] = (items[-1][0], c, end)
        return items
    start = end - sum(len(body) for body in bodies)
    out = []
    for body in bodies:
        start += len(body)
        out.append((prefix + body, c, start))
    return out


def fitting(items: Sequence[Item], room: int) -> tuple[int, int, dict[Any, int]]:
    """How many of ``items`` to push into ``room`` free bytes of the queue
    (a prefix ending at a boundary), the ring bytes they take, and per
    client the offset it will have pushed."""
    size = cut = cut_size = 0
    for i, (code, _c, end) in enumerate(items):
        size += len(code) + RECORD_HEADER
        if size > room:
            break
        if end >= 0:
            cut, cut_size = i + 1, size
    ends = {c: end for _code, c, end in items[:cut] if c is not None and end >= 0}
    return cut, cut_size, ends


def handed_over(items: Iterable[Item], still_in_kernel: Callable[[Any, int], bool]) -> list[bytes]:
    """The codes a successor must be given: those whose bytes are no longer
    in the kernel (``still_in_kernel(client, end)`` says; a successor reads
    the others again from the socket)."""
    out = []
    end_of_read = -1
    for code, c, end in reversed(list(items)):
        if end >= 0:
            end_of_read = end
        if c is None or not still_in_kernel(c, end_of_read):
            out.append(code)
    out.reverse()
    return out


def taken_partial(pending: bytes, received: int, consumed: int) -> bytes:
    """Of an incomplete frame (the last ``len(pending)`` of the ``received``
    bytes seen), the bytes already taken out of the socket."""
    start = received - len(pending)
    return pending[: max(0, consumed - start)]
