"""What the ledger hands out: frozen rows. Code that changes a job writes to the ledger and takes
the new row (or `dataclasses.replace`s its copy with what it wrote); nothing edits a row in place."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from decimal import Decimal
from functools import cache
from typing import TYPE_CHECKING, Any, TypeVar

from ..money import from_hundredths
from ..states import JobState

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

R = TypeVar("R", bound="DataclassInstance")


@cache
def _names(cls: type[DataclassInstance]) -> frozenset[str]:
    return frozenset(f.name for f in fields(cls))


@cache
def _money(cls: type[DataclassInstance]) -> frozenset[str]:
    """A row's fields that hold credits (the ledger stores them as integer hundredths)."""
    return frozenset(f.name for f in fields(cls) if str(f.type).startswith("Decimal"))


def from_mapping(cls: type[R], row: Mapping[Any, Any]) -> R:
    """A frozen row from a database row (extra columns ignored; amounts as exact credits)."""
    names = _names(cls)  # once per class: `fields()` per row cost a fifth of reading 100,000 jobs
    values = {k: v for k, v in row.items() if k in names}
    for name in _money(cls):
        if name in values:
            values[name] = from_hundredths(values[name])
    return cls(**values)


@dataclass(frozen=True)
class Batch:
    name: str
    model: str
    manifest: str
    generation: int
    budget: Decimal | None  # the budget of the latest run
    committed: Decimal  # credits charged or reserved: the shared budget's running total
    simulated: bool
    created_at: float
    updated_at: float
    control: str = "running"  # a `Control` word: what the operator asked of every runner
    control_at: float | None = None
    webhook_secret: str | None = field(default=None, repr=False)  # never printed
    manifest_generation: int = 0  # bumped by each staging of the whole manifest


@dataclass(frozen=True)
class Job:
    id: int
    batch: str
    key: str
    seq: int
    generation: int
    row: int
    take: int
    origin: str
    label: str
    params: str  # JSON, manifest names
    estimate: Decimal
    state: str
    remote_job_id: str | None
    status_url: str | None
    credit_cost: Decimal | None
    output_url: str | None
    output_expires_at: float | None
    file_path: str | None
    size: int | None
    sha256: str | None
    error: str | None
    attempts: int
    render_seconds: float | None
    owner: str | None
    lease_until: float | None
    lease_token: int
    created_at: float
    updated_at: float
    submitted_at: float | None
    finished_at: float | None
    model: str | None = None  # None on jobs a ledger held before batches could mix models
    api_base: str | None = None  # the API that gave remote_job_id
    file_mtime_ns: int | None = None  # the file's modification time when it was verified (None: hash it)
    row_data: str | None = None  # JSON: its template variables and its row's `meta:` (None: staged before)
    rejected_at: float | None = None  # when `batcher reject` left it out of exports
    reroll_of: str | None = None  # the key of the job it renders again (`batcher reroll`)
    manifest_generation: int = 0  # the batch's, when a staging of the whole manifest last produced it

    @property
    def job_state(self) -> JobState:
        return JobState(self.state)

    def evolve(self, **changes: Any) -> Job:
        """This job with some fields changed (as `dataclasses.replace`, without re-running the
        constructor: the run does this for every write, thousands of times a second)."""
        unknown = changes.keys() - _JOB_FIELDS
        if unknown:
            raise TypeError(f"Job has no field {sorted(unknown)[0]!r}")
        new = object.__new__(Job)
        new.__dict__.update(self.__dict__)
        new.__dict__.update(changes)
        return new

    def parameters(self) -> dict[str, Any]:
        params: dict[str, Any] = json.loads(self.params)
        return params

    def dataset_columns(self) -> dict[str, Any]:
        """Its template variables (`vars`) and its row's `meta:` (`meta`), empty when not staged."""
        found: dict[str, Any] = json.loads(self.row_data) if self.row_data else {}
        return {"vars": found.get("vars", {}), "meta": found.get("meta", {})}


@dataclass(frozen=True)
class Reference:
    """What preflight last found at a reference URL."""

    url: str
    outcome: str  # ok, error or unreachable
    detail: str | None
    etag: str | None
    last_modified: str | None
    checked_at: float


@dataclass(frozen=True)
class LocalImage:
    """Where a local reference image was last found."""

    address: str
    path: str
    size: int
    origin: str
    seen_at: float
    host: str = ""


@dataclass(frozen=True)
class StoredImage:
    """A local image's object in a reference store."""

    store: str
    address: str
    object_key: str
    size: int
    uploaded: bool
    stored_at: float


@dataclass(frozen=True)
class ModelInfo:
    """A model as the API described it, when it was asked."""

    api_id: str
    info: str  # JSON
    request_schema: str  # JSON
    fetched_at: float


_JOB_FIELDS = frozenset(f.name for f in fields(Job))


@dataclass(frozen=True)
class Attempt:
    """One submission attempt: the record that says what a job may have cost."""

    id: int
    job_id: int
    number: int
    outcome: str  # submitting | accepted | unknown | not_sent | rejected
    reserved: Decimal
    remote_job_id: str | None
    credit_cost: Decimal | None
    refunded: bool
    started_at: float
    ended_at: float | None


@dataclass(frozen=True)
class Event:
    id: int
    job_id: int
    at: float
    kind: str
    from_state: str | None
    to_state: str | None
    detail: str | None


@dataclass(frozen=True)
class Figures:
    """Where a batch stands, in one place: what status, a run's report and the gallery show."""

    batch: Batch | None
    counts: dict[str, int]
    spend: Spend
    held: int  # jobs held as unknown
    held_cost: Decimal  # what resubmitting them all may cost
    lost: int  # of the held, jobs the API charged and then no longer knew
    videos: int
    bytes: int
    average_render: float | None
    committed: Decimal  # the shared budget's running total
    untrusted_costs: int  # jobs answered with a creditCost that could not be believed
    first_submitted: float | None
    last_finished: float | None
    orphans: int = 0  # jobs no row of the current manifest produces: not in `counts`

    @property
    def jobs(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True)
class Spend:
    """Credits a batch has cost, by how sure we are of it."""

    spent: Decimal  # charged by the API and not refunded
    held: Decimal  # reserved for submissions whose outcome is unknown (may have been charged)
    refunded: Decimal

    @property
    def committed(self) -> Decimal:
        return self.spent + self.held
