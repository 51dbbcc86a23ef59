"""Job states and the one table of transitions between them.

    pending ──► submitting ──► submitted ──► rendered ──► completed
     ▲ │ ▲          │  │  │        │ │ │         │  │
     │ │ │          │  │  └► failed │ │ └► pending │  └► expired
     │ │ │          │  └► unknown   │ └► failed     └► failed (download refused: size cap, not a video)
     │ │ │          │               └► unknown (paid, but the API no longer knows the job)
     │ │ │          └► pending (never reached the API: safe to send again)
     │ │ └──── unknown / failed / expired (only when the user asks: `batcher retry`)
     │ └► cancelled (`batcher cancel`: never sent, and never will be while the batch is cancelled)
     └──── cancelled (`batcher resume`)

- submitting: the intent is on disk and the POST may be on the wire; a crash here leaves the
  outcome unknown, so start-up turns it into `unknown`, never back into `pending`.
- unknown: the API may have created and charged a job (or did, and then lost it: polls answered
  404 in two runs, ten minutes or more apart); held until the user decides, never resubmitted silently.
- submitted: the API gave a job id; polled until it ends.
- rendered: the API finished and gave an output URL; the video is not on disk yet.
- completed: the video is on disk, verified, with its size and sha256.
- cancelled: a job that was pending when its batch was cancelled. Only a pending job can be
  cancelled (one that reached `submitting` may have been paid for: it is followed to its end);
  a cancelled job is never submitted (the intent is a compare-and-set from `pending`); `batcher
  resume` puts it back to pending. A job that becomes pending again while its batch is cancelled
  (a refunded failure, a submission that never left) is cancelled by the runner that sees it.

A batch has a control word too (`Control`), set by `batcher pause / resume / cancel` and obeyed by
every runner of the batch: running -> paused -> running, running or paused -> cancelled ->
running (resume). Setting the word a batch already has changes nothing; a cancelled batch cannot
be paused (resume it first).
"""

from __future__ import annotations

from .errors import IllegalTransition
from .text import Word


class JobState(Word):
    """Where a job stands (the words are stored in the ledger)."""

    PENDING = "pending"
    SUBMITTING = "submitting"
    UNKNOWN = "unknown"
    SUBMITTED = "submitted"
    RENDERED = "rendered"
    COMPLETED = "completed"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


S = JobState

TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    # -> cancelled: `batcher cancel` (or a runner of a cancelled batch); never from a later state.
    S.PENDING: frozenset({S.SUBMITTING, S.CANCELLED}),
    # -> pending: provably not sent (connection refused, 429 before acceptance, no credits).
    S.SUBMITTING: frozenset({S.SUBMITTED, S.UNKNOWN, S.PENDING, S.FAILED}),
    # -> pending only through `batcher retry --unknown` or `run --resubmit-unknown`: the user's consent.
    # -> submitted: a late answer from a runner that lost its lease mid-POST (Ledger.resolve_unknown).
    S.UNKNOWN: frozenset({S.PENDING, S.SUBMITTED}),
    # -> pending: the remote render failed (refunded) and attempts remain.
    # -> unknown: a paid job the API no longer knows (polls answered 4xx in 2 runs, 10+ minutes apart):
    #    charged, not refunded.
    S.SUBMITTED: frozenset({S.RENDERED, S.FAILED, S.PENDING, S.COMPLETED, S.UNKNOWN}),
    S.RENDERED: frozenset({S.COMPLETED, S.EXPIRED, S.FAILED, S.RENDERED}),
    # -> rendered: the file was deleted from disk and the URL may still serve it.
    S.COMPLETED: frozenset({S.RENDERED}),
    S.FAILED: frozenset({S.PENDING}),
    S.EXPIRED: frozenset({S.PENDING}),
    # -> pending only through `batcher resume`.
    S.CANCELLED: frozenset({S.PENDING}),
}

# States in which the API is (or may be) holding credits for the job.
IN_FLIGHT = frozenset({S.SUBMITTING, S.SUBMITTED})
HELD = frozenset({S.UNKNOWN})
FINAL = frozenset({S.COMPLETED, S.FAILED, S.EXPIRED})
NEEDS_ATTENTION = frozenset({S.FAILED, S.EXPIRED, S.UNKNOWN})


class Control(Word):
    """What the operator asked of every runner of a batch (stored in `batch.control`)."""

    RUNNING = "running"  # submit, poll, download
    PAUSED = "paused"  # no new submissions; jobs in flight are polled and downloaded; runners wait
    CANCELLED = "cancelled"  # pending jobs cancelled; paid work finished; runners exit

    @classmethod
    def of(cls, word: str | None) -> Control:
        """The word as stored; one this version does not know counts as paused (submit nothing)."""
        try:
            return cls(word or "running")
        except ValueError:
            return cls.PAUSED


CONTROL_MOVES: dict[Control, frozenset[Control]] = {
    Control.RUNNING: frozenset({Control.PAUSED, Control.CANCELLED}),
    Control.PAUSED: frozenset({Control.RUNNING, Control.CANCELLED}),
    Control.CANCELLED: frozenset({Control.RUNNING}),
}


def can_move(source: JobState, target: JobState) -> bool:
    """True when the state machine allows source -> target."""
    return target in TRANSITIONS[source]


def check_move(source: JobState, target: JobState, key: str = "") -> None:
    """Raise IllegalTransition unless source -> target is allowed."""
    if not can_move(source, target):
        raise IllegalTransition(f"job {key}: {source.value} -> {target.value} is not an allowed transition")
