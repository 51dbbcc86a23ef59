"""The run's budget, exact and pure: what is committed and reserved, and each submission's
reservation from the moment it is made until its answer says what it cost.

A reservation ends once: charged (the API accepted the job), held (the outcome is unknown: it
stays committed at its estimate), or released (nothing was charged: not sent, refused, cancelled,
an error). Used as a context manager it is released on any exit that did not end it, and every
end tells the budget's `on_change`, so whoever waits for room wakes without being told by hand.
No I/O, no clock: the waiting itself is the run's (`run/context.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from types import TracebackType

from ..money import ZERO, budget


def _nothing() -> None:
    return None


@dataclass
class Budget:
    """Credits a batch may still commit, exact (Decimal hundredths, never a running float).
    `committed` is what earlier runs and answered submissions cost (charged and not refunded, plus
    held unknowns); `reserved` is estimates of submissions whose answer has not come yet.
    `on_change` is called whenever room may have been freed (a reservation ended, a refund)."""

    limit: Decimal | None
    committed: Decimal = ZERO
    reserved: Decimal = ZERO
    reservations: int = 0
    on_change: Callable[[], None] = field(default=_nothing, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.limit = budget(self.limit)  # nan, inf, a negative budget: refused here too

    def fits(self, estimate: Decimal) -> bool:
        return self.limit is None or self.committed + self.reserved + estimate <= self.limit

    def reserve(self, estimate: Decimal) -> bool:
        if not self.fits(estimate):
            return False
        self.reserved += estimate
        self.reservations += 1
        return True

    def open(self, estimate: Decimal) -> Reservation | None:
        """A reservation of `estimate`, or None when it does not fit."""
        return Reservation(self, estimate) if self.reserve(estimate) else None

    def settle(self, estimate: Decimal, cost: Decimal | None, ledger_committed: Decimal | None = None) -> None:
        """A reservation is answered: `cost` charged (None: nothing was charged). `ledger_committed`:
        what the ledger counts committed when it refused the reservation (other runners share the
        budget; this run's reservations still in flight are part of it)."""
        self.reserved = max(ZERO, self.reserved - estimate)
        self.reservations = max(0, self.reservations - 1)
        if cost:
            self.committed += cost
        if ledger_committed is not None:
            self.committed = max(self.committed, ledger_committed - self.reserved)
        self.on_change()

    def refund(self, cost: Decimal) -> None:
        self.committed = max(ZERO, self.committed - cost)
        self.on_change()

    @property
    def remaining(self) -> Decimal | None:
        return None if self.limit is None else max(ZERO, self.limit - self.committed - self.reserved)


@dataclass
class Reservation:
    """`estimate` reserved in `budget` for one submission, until its answer ends it (once)."""

    budget: Budget
    estimate: Decimal
    ended: str | None = None  # "charged", "held" or "released"

    @property
    def room(self) -> Decimal | None:
        """What the budget has left, this reservation included (None: no budget)."""
        left = self.budget.remaining
        return None if left is None else left + self.estimate

    def charge(self, cost: Decimal) -> None:
        """The API accepted the submission and charged `cost` (as the budget counts it)."""
        self._end("charged", cost)

    def hold(self) -> None:
        """The outcome is unknown: the API may have charged it, so its estimate stays committed."""
        self._end("held", self.estimate)

    def release(self, ledger_committed: Decimal | None = None) -> None:
        """Nothing was charged; `ledger_committed`: the ledger's committed total, when it refused."""
        self._end("released", None, ledger_committed)

    def _end(self, how: str, cost: Decimal | None, ledger_committed: Decimal | None = None) -> None:
        if self.ended is not None:
            raise AssertionError(f"a reservation ends once: it was {self.ended}, then {how}")
        self.ended = how
        self.budget.settle(self.estimate, cost, ledger_committed)

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self.ended is None:  # not sent, refused, cancelled, an error: nothing was charged
            self.release()
