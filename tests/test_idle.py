"""The spin-then-sleep decision (``server.core.idle.Spinner``), pure."""

from __future__ import annotations

import pytest

from server.core.idle import Spinner


def test_it_spins_while_spinning_pays_and_mostly_sleeps_at_once_when_it_does_not() -> None:
    s = Spinner(most=100e-6, patience=3, every=4)
    for _ in range(10):  # the peer answers within the spin: keep spinning
        assert s.budget() == 100e-6
        s.spun(True)
    for _ in range(3):  # three spins in vain...
        assert s.budget() == 100e-6
        s.spun(False)
    budgets = [s.budget() for _ in range(8)]  # ...then only every 4th sleep spins first
    assert budgets == [0.0, 0.0, 0.0, 100e-6, 0.0, 0.0, 0.0, 100e-6]
    s.spun(True)  # a probe that paid off: spinning again
    assert [s.budget() for _ in range(3)] == [100e-6] * 3
    assert (s.spins, s.hits) == (14, 11)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="patience=0"):
        Spinner(most=1e-4, patience=0)
