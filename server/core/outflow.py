"""How far the connect process may move the outbound queue's head (pure).

The connect process reads outbound codes from a position of its own,
``read``, and appends their bytes to each client's output.  A code leaves
the queue (the head passes it) only once every client it was for has
handed its bytes to the kernel, so that a ``kill -9`` of connect loses no
reply: the next process delivers the codes from the head again and each
client drops what its kernel already took (``server.core.streams``).

Per client the shell keeps an *anchor* (in the stream ledger): a queue
position P such that every reply byte for it in codes before P was taken
by the kernel.  A client whose output is all taken is anchored at ``read``;
one with bytes still waiting in process memory is *pinned* at its last
anchor.  The rule::

    head <= min(anchor of every pinned client), and head <= read
    head only moves forward, and only to the end of a delivered batch

(batch ends are code boundaries; every anchor is one too).

A client that reads its replies slowly would pin the head for as long as
it dawdles, and the queue would fill for everybody.  Once a pinned anchor
is more than ``limit`` bytes behind ``read`` (half the queue), the client
is released (``overdue``): its output stays in process memory only, its
ledger entry says so, and a crash closes it with that reason instead of
resuming it.  It is anchored again as soon as its output is all taken.
"""

from __future__ import annotations

import collections


class ReplyAnchors:
    """The head's limit, from the pinned clients' anchors (see above)."""

    def __init__(self, read: int, limit: int) -> None:
        if limit <= 0:
            raise ValueError(f"limit must be positive, got {limit}")
        self.read = read  # codes before this position were delivered
        self.head = read  # the head as last moved
        self.limit = limit
        self.pinned: dict[int, int] = {}  # conn -> anchor: its output is not all taken
        self._batches: collections.deque[tuple[int, int]] = collections.deque()  # (end, codes)

    def delivered(self, end: int, count: int) -> None:
        """``count`` codes ending at ``end`` were delivered to their clients."""
        if end < self.read or count <= 0:
            raise ValueError(f"a batch of {count} codes ending at {end}, before {self.read}")
        self._batches.append((end, count))
        self.read = end

    def pin(self, conn: int, anchor: int) -> None:
        """``conn`` has output the kernel did not take; it is anchored at
        ``anchor`` (kept if it was pinned already: the oldest counts)."""
        if conn not in self.pinned:
            self.pinned[conn] = max(anchor, self.head)

    def unpin(self, conn: int) -> None:
        self.pinned.pop(conn, None)

    def overdue(self) -> list[int]:
        """Pinned clients that hold the head more than ``limit`` bytes back."""
        oldest = self.read - self.limit
        return [conn for conn, anchor in self.pinned.items() if anchor < oldest]

    def advance(self) -> tuple[int, int] | None:
        """(new head, codes it passes) if the head may move on now, else None."""
        pinned = self.pinned
        target = min(pinned.values()) if pinned else self.read
        batches = self._batches
        count = 0
        head = self.head
        while batches and batches[0][0] <= target:
            head, n = batches.popleft()
            count += n
        if not count:
            return None
        self.head = head
        return head, count

    @property
    def behind(self) -> int:
        """Bytes of delivered codes still in the queue."""
        return self.read - self.head
