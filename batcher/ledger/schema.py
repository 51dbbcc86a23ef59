"""The ledger's schema, defined once: these tables create a new ledger whole, and migrations
name the columns and tables of them that an older ledger lacks.

Types are chosen to be the same on SQLite and PostgreSQL: ids are 64-bit on PostgreSQL and
SQLite's rowid alias (INTEGER PRIMARY KEY) there; columns added by migrations carry server
defaults so `ALTER TABLE ... ADD COLUMN ... NOT NULL` works on a table with rows. Money is
integer hundredths of a credit (`_cents`, read and written through `batcher.money`): sums and
the shared running total are exact on both databases.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlmodel import Field, SQLModel

# 64-bit ids on PostgreSQL; on SQLite only INTEGER PRIMARY KEY is the auto-numbered rowid.
ID = BigInteger().with_variant(Integer(), "sqlite")
REAL = Float(precision=53)  # DOUBLE PRECISION on PostgreSQL, REAL on SQLite


def _id() -> Column[Any]:
    return Column(ID, primary_key=True, autoincrement=True)


def _ref(target: str) -> Column[Any]:
    return Column(ID, ForeignKey(target), nullable=False)


def _real(nullable: bool = True, default: str | None = None) -> Column[Any]:
    return Column(REAL, nullable=nullable, server_default=text(default) if default is not None else None)


def _cents(nullable: bool = True) -> Column[Any]:
    """An amount of money: whole hundredths of a credit (never a float: a running total of
    floats drifts, and one absurd value cancels earlier ones)."""
    return Column(BigInteger, nullable=nullable, server_default=None if nullable else text("0"))


def _int(default: str) -> Column[Any]:
    return Column(Integer, nullable=False, server_default=text(default))


class SchemaMigration(SQLModel, table=True):
    __tablename__ = "schema_migrations"
    version: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    name: str
    applied_at: float = Field(sa_column=_real(nullable=False))


class BatchTable(SQLModel, table=True):
    __tablename__ = "batch"
    name: str = Field(primary_key=True)
    model: str
    manifest: str
    generation: int = Field(default=0, sa_column=_int("0"))
    # bumped by each staging of the whole manifest; its jobs carry it (an older mark: an orphan)
    manifest_generation: int = Field(default=0, sa_column=_int("0"))
    budget: int | None = Field(default=None, sa_column=_cents())  # the budget of the latest run
    # credits charged or reserved: the shared budget's running total
    committed: int = Field(default=0, sa_column=_cents(nullable=False))
    # rendered by the built-in simulator: its clips are not real renders
    simulated: bool = Field(default=False, sa_column=Column("simulated", nullable=False, server_default=false(),
                                                             type_=Boolean))
    created_at: float = Field(sa_column=_real(nullable=False))
    updated_at: float = Field(sa_column=_real(nullable=False))
    # What the operator asked of every runner of the batch: running, paused or cancelled (a
    # `Control` word), and when.
    control: str = Field(default="running", sa_column=Column("control", nullable=False, server_default="running",
                                                             type_=Text))
    control_at: float | None = Field(default=None, sa_column=_real())
    # The secret every runner of the batch signs and checks its webhook tokens with (HMAC).
    webhook_secret: str | None = None


class JobTable(SQLModel, table=True):
    __tablename__ = "job"
    __table_args__ = (
        UniqueConstraint("batch", "key"),
        Index("job_batch_state_seq", "batch", "state", "seq"),
        Index("job_batch_owner", "batch", "owner"),
        # One remote job is one job's: an id the API gives twice never pairs two jobs with one clip.
        Index("job_remote_id", "api_base", "remote_job_id", unique=True),
    )
    id: int | None = Field(default=None, sa_column=_id())
    batch: str = Field(foreign_key="batch.name")
    key: str
    seq: int
    generation: int = Field(default=0, sa_column=_int("0"))
    # the batch's manifest_generation when a staging of the whole manifest last produced this job
    manifest_generation: int = Field(default=0, sa_column=_int("0"))
    row: int
    take: int
    origin: str
    label: str
    params: str  # JSON, manifest names
    estimate: int = Field(sa_column=_cents(nullable=False))
    state: str = Field(default="pending", sa_column=Column("state", nullable=False, server_default="pending",
                                                           type_=Text))
    remote_job_id: str | None = None
    status_url: str | None = None
    credit_cost: int | None = Field(default=None, sa_column=_cents())
    output_url: str | None = None
    output_expires_at: float | None = Field(default=None, sa_column=_real())
    file_path: str | None = None
    size: int | None = Field(default=None, sa_column=Column(BigInteger))
    sha256: str | None = None
    # the file's modification time (ns) when it was verified: a rerun trusts a file that kept it
    file_mtime_ns: int | None = Field(default=None, sa_column=Column(BigInteger))
    error: str | None = None
    attempts: int = Field(default=0, sa_column=_int("0"))
    render_seconds: float | None = Field(default=None, sa_column=_real())
    owner: str | None = None  # the runner holding the lease
    lease_until: float | None = Field(default=None, sa_column=_real())
    lease_token: int = Field(default=0, sa_column=_int("0"))  # fencing token: bumped by every claim
    created_at: float = Field(sa_column=_real(nullable=False))
    updated_at: float = Field(sa_column=_real(nullable=False))
    submitted_at: float | None = Field(default=None, sa_column=_real())
    finished_at: float | None = Field(default=None, sa_column=_real())
    model: str | None = None  # the API id it renders with (a batch may mix models)
    # The API base that gave remote_job_id ('' for ids an older ledger held without one).
    api_base: str | None = None
    row_data: str | None = None  # JSON: the row's template variables and `meta:`, for exports
    rejected_at: float | None = Field(default=None, sa_column=_real())  # curated out of exports
    reroll_of: str | None = None  # a new take of this key's request (`batcher reroll`)


class AttemptTable(SQLModel, table=True):
    """One submission attempt: the record that says what a job may have cost."""

    __tablename__ = "attempt"
    __table_args__ = (Index("attempt_job", "job_id"), Index("attempt_remote_id", "remote_job_id"))
    id: int | None = Field(default=None, sa_column=_id())
    job_id: int = Field(sa_column=_ref("job.id"))
    number: int
    outcome: str  # submitting | accepted | unknown | not_sent | rejected
    reserved: int = Field(sa_column=_cents(nullable=False))
    remote_job_id: str | None = None
    credit_cost: int | None = Field(default=None, sa_column=_cents())
    refunded: bool = Field(default=False, sa_column=Column("refunded", nullable=False, server_default=false(),
                                                           type_=Boolean))
    started_at: float = Field(sa_column=_real(nullable=False))
    ended_at: float | None = Field(default=None, sa_column=_real())


class EventTable(SQLModel, table=True):
    __tablename__ = "event"
    __table_args__ = (Index("event_job", "job_id", "id"),)
    id: int | None = Field(default=None, sa_column=_id())
    job_id: int = Field(sa_column=_ref("job.id"))
    at: float = Field(sa_column=_real(nullable=False))
    kind: str
    from_state: str | None = None
    to_state: str | None = None
    detail: str | None = None


class RunnerTable(SQLModel, table=True):
    """A runner working on a batch: where it runs and when it last said it was alive."""

    __tablename__ = "runner"
    owner: str = Field(primary_key=True)  # the name its leases carry
    batch: str
    host: str
    pid: int
    started_at: float = Field(sa_column=_real(nullable=False))
    heartbeat_at: float = Field(sa_column=_real(nullable=False))


class ReferenceTable(SQLModel, table=True):
    """What preflight last found at a reference URL, with the validators to ask again cheaply."""

    __tablename__ = "reference_check"
    url: str = Field(primary_key=True)
    outcome: str  # ok, error or unreachable (only ok is trusted on a rerun)
    detail: str | None = None
    etag: str | None = None
    last_modified: str | None = None
    checked_at: float = Field(sa_column=_real(nullable=False))


class LocalImageTable(SQLModel, table=True):
    """Where a local reference image was last found on this host, by its content address (the
    gallery shows it from there; the run uploads it from there)."""

    __tablename__ = "local_image"
    address: str = Field(primary_key=True)  # local:sha256:<hex>
    host: str = Field(primary_key=True)  # runners on other hosts keep the same content elsewhere
    path: str
    size: int
    origin: str  # FILE:LINE that named it
    seen_at: float = Field(sa_column=_real(nullable=False))


class StoredImageTable(SQLModel, table=True):
    """Which content lives where: a local image's object in a reference store."""

    __tablename__ = "stored_image"
    store: str = Field(primary_key=True)  # the store's identity (endpoint, bucket, prefix), no credentials
    address: str = Field(primary_key=True)
    object_key: str
    size: int
    uploaded: bool  # false: it was already there when this ledger first looked
    stored_at: float = Field(sa_column=_real(nullable=False))


class ModelInfoTable(SQLModel, table=True):
    """A model described by the API (its info and request schema), kept so that plans, runs and
    reruns need not ask again, with the time it was fetched."""

    __tablename__ = "model_info"
    api_id: str = Field(primary_key=True)
    info: str  # JSON: the model's info (name, type, creditCost), request schema removed
    request_schema: str  # JSON
    fetched_at: float = Field(sa_column=_real(nullable=False))
