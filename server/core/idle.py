"""When a waiting process spins before it sleeps (pure: the caller measures).

A process that has just handed work to its peer (the connect process a
request, the logic process a reply) expects an answer within
microseconds.  Sleeping on a doorbell at once costs a wake-up each way, a
context switch that takes tens of microseconds here, and makes the peer
ring the doorbell (a system call).  So it first watches the queue for a
bounded time (Aeron's ``BackoffIdleStrategy``: spin, then park), yielding
the core on each look, so that on two cores a spinner gives way to the
process it waits for.

``Spinner`` decides how long, and adapts: after ``patience`` spins in a row
that found nothing, it spins only before every ``every``-th sleep, until a
spin pays off again.  So an idle process, or one whose peer is slow,
sleeps at once and costs nothing, and a busy one stops burning a core it
does not win anything with::

    spinner = Spinner(most=100e-6)
    budget = spinner.budget()          # seconds to spin now (0.0: sleep at once)
    ... spin up to budget ...
    spinner.spun(found)                # did the spin find the work?
"""

from __future__ import annotations


class Spinner:
    def __init__(self, most: float, patience: int = 4, every: int = 16) -> None:
        if most < 0 or patience < 1 or every < 1:
            raise ValueError(f"Spinner(most={most}, patience={patience}, every={every})")
        self.most = most
        self.patience = patience
        self.every = every
        self.misses = 0  # spins in a row that found nothing
        self.skipped = 0  # sleeps without a spin since the last one
        self.spins = self.hits = 0  # for the figures

    def budget(self) -> float:
        """How long to spin before this sleep."""
        if self.misses >= self.patience:
            self.skipped += 1
            if self.skipped < self.every:
                return 0.0
            self.skipped = 0  # a probe: has the peer become quick again?
        return self.most

    def spun(self, found: bool) -> None:
        """The spin just made found work (True) or ran out (False)."""
        self.spins += 1
        if found:
            self.hits += 1
            self.misses = 0
            self.skipped = 0
        else:
            self.misses += 1
