"""How things end, as enums: a run's stop reason (which owns its exit code, one of `ExitCode`'s,
defined once in errors), and the outcome of one submission or one job's polling."""

from __future__ import annotations

import enum

from ..errors import ExitCode as ExitCode  # re-exported: stop reasons name their exit codes
from ..text import Word


class StopReason(Word):
    """Why a run stopped submitting before its batch was done."""

    BUDGET = "budget"
    CREDITS = "credits"
    INTERRUPTED = "interrupted"
    AUTH = "auth"
    DISK = "disk"
    UNREACHABLE = "unreachable"
    CANCELLED = "cancelled"  # `batcher cancel`: the operator's word, obeyed by every runner

    @property
    def overriding(self) -> bool:
        """Reasons that replace an earlier one: the user's or the machine's word is final."""
        return self in (StopReason.AUTH, StopReason.DISK, StopReason.INTERRUPTED)

    @property
    def exit_code(self) -> ExitCode | None:
        """The exit status this reason forces, or None (then the jobs' states decide)."""
        codes: dict[StopReason, ExitCode] = {
            StopReason.AUTH: ExitCode.USAGE, StopReason.DISK: ExitCode.USAGE,
            StopReason.INTERRUPTED: ExitCode.INTERRUPTED, StopReason.BUDGET: ExitCode.BUDGET,
            StopReason.CREDITS: ExitCode.BUDGET, StopReason.CANCELLED: ExitCode.CANCELLED}
        return codes.get(self)


class Submitted(enum.Enum):
    """What one submission attempt came to."""

    ACCEPTED = "accepted"  # the API took it: polled next
    NOT_SENT = "not sent"  # provably never reached the API: send again after a pause
    RATE_LIMITED = "rate limited"  # 429 before acceptance: send again after Retry-After
    FAILED = "failed"  # the API refused it (4xx)
    HOOK_REFUSED = "webhook refused"  # refused (4xx) while it carried a webhook URL: sent again without
    HELD = "held"  # the outcome is unknown: held for the user
    BUDGET = "budget"  # the shared budget had no room
    STOPPED = "stopped"  # the run is stopping (credits, auth) or another runner took the job


class Followed(enum.Enum):
    """What following one submitted job to the end of its render came to."""

    RENDERED = "rendered"  # finished, queued for download
    FAILED = "failed"
    REQUEUED = "requeued"  # failed remotely, refunded, to be submitted again
    HELD = "held"  # paid, but the API no longer knows it
    LEFT = "left"  # not finished in this run (timeout, polls failing, stopping): the next run goes on
