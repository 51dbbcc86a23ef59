"""Every exception batcher raises on purpose.

    BatcherError                 base; the CLI maps each kind to a message and an exit code
    ├── UsageError               bad options or configuration (exit 2)
    │   ├── MissingKeyError      PIXELDOJO_API_KEY is not set for a real run (exit 2)
    │   ├── SimulationMismatch   a real run on a simulated batch, or the other way round (exit 2)
    │   ├── PreflightFailed      reference URLs refused before anything was spent (exit 2)
    │   ├── LocalReferencesNeedStore  a run with local reference images and nowhere to upload them (exit 2)
    │   └── StoreError           a bucket (storage/) cannot be reached, read or written (exit 2)
    │       ├── ReferenceStoreError  the reference store's: local images cannot be uploaded
    │       └── OutputStoreError     the output store's: a clip cannot be stored or read back
    ├── ManifestError            one or more `FILE:LINE: message` diagnostics (exit 2)
    ├── LedgerError              the ledger cannot be opened, upgraded or written (exit 2)
    │   ├── IllegalTransition    a job state change the state machine forbids
    │   │   └── LeaseLost        another runner took the job over (its fencing token moved on)
    │   ├── DiskFullError        the disk filled up while writing (exit 2; rerun after freeing space)
    │   ├── WriteRefused         the database refused a write as it is (a constraint): waiting cannot help
    │   └── LedgerUnavailable    the API acted, the ledger failed past patience: kept in the journal (exit 2)
    ├── BudgetExceeded           the shared budget has no room for another submission
    ├── SchemaMismatch           the live model schema rejects the batch's parameters (exit 2)
    └── ApiError                 the API answered something we cannot use
        ├── AuthError            401/403: the key is wrong; stops the run
        ├── CreditsExhausted     402 or 403 insufficient_credits; stops new submissions
        ├── RejectedError        4xx for one job (404, 422, 400): that job fails with the message
        ├── JobForbidden         401/403 on one job's status: that job is left with the reason, the run goes on
        ├── RateLimited          429; carries `retry_after` seconds (capped) and the `asked` wait
        ├── NotSentError         the request provably never reached the API (safe to retry a POST)
        ├── OutcomeUnknown       a POST may or may not have reached the API (never retried silently)
        ├── ServerError          5xx or a transport failure on a request that is safe to retry
        │   └── TooSlow          an answer that did not arrive whole within its overall deadline
        ├── MalformedAnswer      a body that is not the documented answer
        │   ├── OversizeError    a download over the configured size cap
        │   └── AnswerTooLarge   an API answer longer than the answer cap (never read whole)
        ├── DownloadRefused      an output URL that will never be fetched (not http(s), carries the key)
        └── OutputGone           an output URL answered 403/404/410

Messages never contain the API key: the client never puts headers into an error, and redacts the
key from every text an answer brings (the API may echo it back).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from decimal import Decimal


class BatcherError(Exception):
    """Base of every error batcher raises on purpose."""


class UsageError(BatcherError):
    """Bad options or configuration."""


class MissingKeyError(UsageError):
    """A real run needs PIXELDOJO_API_KEY."""


class SimulationMismatch(UsageError):
    """Simulated and real results must never mix in one batch."""


class LocalReferencesNeedStore(UsageError):
    """A batch with local reference images cannot run before they can be uploaded: refused
    before anything is spent (plan and validate work)."""


class StoreError(UsageError):
    """A bucket the user owns refused or could not be reached. Never carries a credential."""


class OutputStoreError(StoreError):
    """The output store (bucket, endpoint, credentials) refused or could not be reached: a clip
    cannot be stored there or read back."""


class ReferenceStoreError(StoreError):
    """The reference store (bucket, endpoint, credentials) refused or could not be reached: local
    images cannot be uploaded, so nothing is submitted. Never carries a credential."""


class PreflightFailed(UsageError):
    """References the API would refuse, found before anything was spent: one
    `FILE:LINE: reference URL: why` line each."""

    def __init__(self, lines: list[str]):
        self.lines = lines
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class Diagnostic:
    """One problem in an input file, located to the line."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


class ManifestError(BatcherError):
    """A manifest (or a file it reads rows from) is invalid; carries every diagnostic found."""

    def __init__(self, diagnostics: list[Diagnostic]):
        self.diagnostics = diagnostics
        super().__init__("\n".join(str(d) for d in diagnostics))


class LedgerError(BatcherError):
    """The ledger cannot be opened, upgraded or written."""


class IllegalTransition(LedgerError):
    """A job state change the state machine forbids."""


class LeaseLost(IllegalTransition):
    """Another runner holds this job now: the write was refused by its fencing token."""


class BudgetExceeded(BatcherError):
    """The batch's budget, shared by every runner, cannot cover another reservation."""

    def __init__(self, message: str, committed: Decimal):
        self.committed = committed
        super().__init__(message)


class DiskFullError(LedgerError):
    """No space left while writing the ledger or a video."""


class WriteRefused(LedgerError):
    """The database refused a write as it is (a unique or other constraint): not a failing ledger,
    so it is not waited out."""


class LedgerUnavailable(LedgerError):
    """The ledger could not record what the API did (a charge, a render, a saved video), even after
    waiting for it; the answer is kept in the journal beside the ledger, and the message names the
    job, its remote id and status URL."""


class SchemaMismatch(BatcherError):
    """The live model schema rejects a parameter the batch would send."""


class ApiError(BatcherError):
    """The API answered something we cannot use."""

    def __init__(self, message: str, status: int | None = None):
        self.status = status
        super().__init__(message)


class AuthError(ApiError):
    """The API rejected the key: nothing else can succeed."""


class CreditsExhausted(ApiError):
    """The account has no credits for another submission."""


class RejectedError(ApiError):
    """The API refused this one request (4xx): retrying it as it is cannot help."""


class RateLimited(ApiError):
    """429: come back after `retry_after` seconds.

    `asked` is what the server's Retry-After asked for (None if it named no usable wait); it
    exceeds `retry_after` when the client capped a wait too long to honour.
    """

    def __init__(self, message: str, retry_after: float, status: int = 429, asked: float | None = None):
        self.retry_after = retry_after
        self.asked = asked
        super().__init__(message, status)


class NotSentError(ApiError):
    """The request provably never reached the API: safe to send again, even a paid POST."""


class OutcomeUnknown(ApiError):
    """A POST may have reached the API and been charged; only the user may resubmit it."""


class ServerError(ApiError):
    """5xx or a transport failure on a request that is safe to retry (GETs)."""


class MalformedAnswer(ApiError):
    """The API answered, but not with the documented shape."""


class OversizeError(MalformedAnswer):
    """A download larger than the configured cap: stopped so a broken server cannot fill the disk."""


class JobForbidden(ApiError):
    """401/403 on one job's status ("belongs to another workspace"): that job's problem, not the run's."""


class TooSlow(ServerError):
    """An answer (status, submission or download) that did not arrive whole within its overall
    deadline: a slow drip restarts a read timeout with every byte, a deadline does not."""


class AnswerTooLarge(MalformedAnswer):
    """An API answer longer than the cap: read no further, so an endless body cannot exhaust memory."""


class DownloadRefused(ApiError):
    """An output URL batcher will never fetch (a scheme other than http(s), a redirect to one, a URL
    carrying the key): retrying cannot help, only a fresh URL from the API can."""


class OutputGone(ApiError):
    """The output URL no longer serves the video (403/404/410)."""


class ExitCode(enum.IntEnum):
    """The process's exit status, documented in the README (the CLI maps each error to one)."""

    OK = 0  # success (for `run`: every job completed)
    ATTENTION = 1  # some jobs failed, expired, are held, or could not be finished in this run
    USAGE = 2  # usage, manifest or configuration error
    BUDGET = 3  # stopped by the budget or the account's credits
    CANCELLED = 4  # the batch was cancelled (`batcher cancel`): paid work finished, nothing more sent
    INTERRUPTED = 130  # Ctrl-C or SIGTERM
