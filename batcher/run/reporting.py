"""What a run tells: progress snapshots while it works, how far the budget goes before it spends,
and the report of where it left its batch."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Protocol, runtime_checkable

from ..ledger import Ledger
from ..money import ZERO
from ..policy import Learned
from ..text import format_credits
from .outcomes import ExitCode, StopReason


@dataclass(frozen=True)
class BudgetOutlook:
    """What a budget will let a run do, told before anything is spent."""

    budget: Decimal
    committed: Decimal  # already charged, reserved or held, by every runner
    pending: int  # jobs still to submit
    covered: int  # of them, how many the budget covers (in the order they are submitted)
    estimate: Decimal  # what the pending jobs are expected to cost

    def message(self) -> str | None:
        """`budget 1,000 covers about 50 of 60 jobs (estimate 1,200)`, or None if it covers all."""
        if self.covered >= self.pending:
            return None
        spent = f" ({format_credits(self.committed)} committed already)" if self.committed else ""
        left = "jobs" if not self.committed else "jobs left"
        return (f"budget {format_credits(self.budget)}{spent} covers about {self.covered:,} of {self.pending:,} "
                f"{left} (estimate {format_credits(self.estimate)}); the run stops there (exit 3)")


def budget_outlook(ledger: Ledger, batch: str, generation: int, budget: Decimal) -> BudgetOutlook:
    """How far `budget` goes for the batch's pending jobs, given what the batch has committed."""
    committed = ledger.committed(batch)
    pending, covered, estimate = ledger.budget_outlook(batch, generation, max(ZERO, budget - committed))
    return BudgetOutlook(budget, committed, pending, covered, estimate)


@dataclass
class Progress:
    """A snapshot for progress displays."""

    batch: str
    counts: dict[str, int]
    spent: Decimal  # credits, exact (as every amount below)
    reserved: Decimal
    budget: Decimal | None
    elapsed: float
    completed_this_run: int
    total: int
    # Jobs the budget lets finish (done, in flight, and the pending ones it covers), when the
    # budget will stop the run before the end; None when it covers everything.
    covered: int | None = None
    # What this run spent (its charges less the refunds it recorded), where `spent` is the whole
    # batch's, other runners' and earlier runs' included; None: not told apart.
    run_spent: Decimal | None = None
    paused: bool = False  # the batch is paused (`batcher pause`): no time left can be told


@runtime_checkable
class ProgressDisplay(Protocol):
    """A progress display that redraws one line in place: before a message is said, it is asked to
    make way (`clear`), so the message gets a line of its own; the next snapshot draws it again."""

    def __call__(self, progress: Progress) -> None: ...

    def clear(self) -> None: ...


@dataclass(frozen=True)
class WebhookFigures:
    """How webhooks did in a run: jobs a poke announced, jobs a safety poll found done first (their
    webhook lost or late), valid pokes received, and models whose API refused the field."""

    base: str  # where the API was asked to post (the secret tokens are not part of it)
    announced: int
    missed: int
    pokes: int
    refused: tuple[str, ...] = ()
    late: int = 0  # of the missed, those whose webhook came after all

    def line(self) -> str:
        jobs = self.announced + self.missed
        refused = f"; refused by the API for {', '.join(self.refused)} (polled instead)" if self.refused else ""
        late = f" ({self.late} of whose webhooks came later: late, not lost)" if self.late else ""
        return (f"webhooks: {self.announced} of {jobs} finished job(s) announced by a webhook, {self.missed} found "
                f"by safety polls{late}; {self.pokes} poke(s) received at {self.base}{refused}")

    def as_dict(self) -> dict[str, object]:
        return {"base": self.base, "announced": self.announced, "missed": self.missed, "late": self.late,
                "pokes": self.pokes, "refused": list(self.refused)}


@dataclass
class RunReport:
    """Where a run left its batch."""

    batch: str
    counts: dict[str, int]
    spent: Decimal  # credits, exact (as every amount below)
    held_jobs: int
    held_cost: Decimal
    budget: Decimal | None
    elapsed: float
    submitted: int
    completed: int
    stop_reason: StopReason | None
    messages: list[str]
    downloaded_bytes: int = 0
    # Failed and expired jobs by reason: (state, reason, count, a few keys), largest first.
    failures: list[tuple[str, str, int, list[str]]] = field(default_factory=list)
    uploads: str | None = None  # what became of the batch's local reference images, in a line
    control: str = "running"  # the batch's control word as this run last saw it (`states.Control`)
    webhooks: WebhookFigures | None = None  # when the run listened for webhooks
    run_spent: Decimal | None = None  # what this run spent, where `spent` is the batch's (see `Progress`)
    told: frozenset[str] = frozenset()  # messages said as they happened: the end summary does not repeat them
    render_times: tuple[Learned, ...] = ()  # what the run learned of its classes' render times

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def exit_code(self) -> ExitCode:
        forced = self.stop_reason.exit_code if self.stop_reason is not None else None
        if forced is not None:
            return forced
        return ExitCode.OK if self.counts.get("completed", 0) == self.total else ExitCode.ATTENTION
