"""The answer journal: what the API did that the ledger could not record (its write failed after
the POST was answered, a render was seen done, a video was saved), appended and fsync'd in a file
beside the ledger, and recorded in the ledger before anything else the next time it is opened for
writing, so a paid job is polled, never POSTed again.

A record is applied only if the ledger still agrees with it (the job is where the record left it:
an accepted answer to the job's latest attempt while it is `submitting` or `unknown`; a render or a
download of the remote job the ledger holds); anything else is said in the job's history and
dropped. Applying is idempotent: a crash between the ledger's commit and the journal's truncation
applies the same records again, to no effect. The file is locked (flock) while it is appended to
and while it is applied, so a runner appending while another applies loses nothing.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import hashlib
import json
import math
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, text

from ..errors import BatcherError, DiskFullError
from ..outputs import file_sha256
from ..states import JobState as S
from .answers import Answer, Arrival, LedgerAnswers, shared_id
from .dialect import engine_url, is_database_url
from .store import refused_value

SUFFIX = ".answers.jsonl"
_REFUSED = "could not record:"
_MOST = Decimal(10) ** 9  # credits: more than any account holds


class Recorded(str, enum.Enum):
    """What the API did that a record keeps."""

    ACCEPTED = "accepted"  # a submission was answered with a job id (and charged)
    RENDERED = "rendered"  # a poll found the render done, with its output URL
    DOWNLOADED = "downloaded"  # the video is on disk, verified


@dataclass(frozen=True)
class Record:
    """One answer the ledger could not record. `job_id` is the ledger's id of the job."""

    kind: Recorded
    batch: str
    job_id: int
    key: str
    remote_job_id: str
    at: float
    attempt_id: int | None = None  # ACCEPTED: the attempt it answers
    api_base: str | None = None  # ACCEPTED: the API that answered (remote ids are unique per base)
    status_url: str | None = None
    credit_cost: str | None = None  # exact, as text (what was counted against the budget)
    submitted_at: float | None = None
    output_url: str | None = None  # RENDERED
    output_expires_at: float | None = None
    render_seconds: float | None = None
    finished_at: float | None = None
    file_path: str | None = None  # DOWNLOADED
    size: int | None = None
    sha256: str | None = None

    def line(self) -> bytes:
        data = {k: v for k, v in asdict(self).items() if v is not None}
        data["kind"] = self.kind.value
        return (json.dumps(data, allow_nan=False, ensure_ascii=True, sort_keys=True) + "\n").encode()

    def describe(self) -> str:
        """What the record keeps, as a user needs it to find the job (no secret is in a record)."""
        if self.kind is Recorded.ACCEPTED:
            return f"job {self.key} was accepted by the API as {self.remote_job_id} (status URL {self.status_url})"
        if self.kind is Recorded.RENDERED:
            return f"job {self.key} ({self.remote_job_id}, status URL {self.status_url}) finished rendering"
        return f"job {self.key} ({self.remote_job_id}) was saved as {self.file_path}"


_FIELDS = {f.name: f for f in fields(Record)}
_TEXT = {"batch", "key", "remote_job_id", "status_url", "credit_cost", "output_url", "file_path", "sha256",
         "api_base"}
_INTS = {"job_id", "attempt_id", "size"}


def parse(line: bytes) -> Record | None:
    """A record from one line of the journal, or None for a line that is not one (a torn last
    line from a crash mid-append, or anything else: the file is only as trusted as the host)."""
    try:
        data = json.loads(line)
        if not isinstance(data, dict) or data.keys() - _FIELDS.keys():
            return None
        kind = Recorded(data.pop("kind"))
        for name, value in data.items():
            if name in _TEXT and (not isinstance(value, str) or not _storable(value)):
                return None
            if name in _INTS and (type(value) is not int or value < 0):
                return None
            if name not in _TEXT and name not in _INTS and (
                    type(value) not in (int, float) or not math.isfinite(value)):
                return None
        record = Record(kind=kind, **data)
    except (ValueError, TypeError, KeyError):
        return None
    if not record.remote_job_id or len(record.remote_job_id) > 200:
        return None  # (the client refuses to poll an id that is not a plain token)
    if record.credit_cost is not None and not _exact(record.credit_cost):
        return None
    return record


def _storable(text: str) -> bool:
    """Text either database can hold, of a sane length (no NUL, no lone surrogate)."""
    return len(text) <= 4096 and "\x00" not in text and not any("\ud800" <= c <= "\udfff" for c in text)


def _exact(value: str) -> bool:
    try:
        number = Decimal(value)
    except InvalidOperation:
        return False
    return number.is_finite() and 0 <= number <= _MOST  # (the run wrote a charge it believed)


def journal_path(location: str | Path) -> Path:
    """Where the journal of a ledger lives: beside an SQLite file; for PostgreSQL, in this host's
    state folder ($XDG_STATE_HOME/batcher, else ~/.local/state/batcher), named by the database
    (its URL without the password), since runners on other hosts keep their own."""
    if not is_database_url(location):
        return Path(f"{location}{SUFFIX}")
    url = engine_url(str(location)).set(password=None).render_as_string(hide_password=False)
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "batcher"
    return base / f"ledger-{hashlib.sha256(url.encode()).hexdigest()[:16]}{SUFFIX}"


@contextlib.contextmanager
def _locked(path: Path, create: bool) -> Iterator[int | None]:
    """The journal open and locked (exclusively, this host's runners wait for each other)."""
    flags = os.O_RDWR | os.O_APPEND | (os.O_CREAT if create else 0)
    try:
        fd = os.open(path, flags, 0o600)
    except FileNotFoundError:
        if create:
            raise
        yield None
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)  # (closing releases the lock)


def append(path: Path, record: Record) -> None:
    """Add one record and make it durable (the file's data and, when the file is new, its name)
    before returning. Raises OSError when even that fails (a full disk): the caller says so."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with _locked(path, create=True) as fd:
        assert fd is not None
        os.write(fd, record.line())
        os.fsync(fd)
    if new:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _parsed(path: Path) -> list[tuple[bytes, Record | None]]:
    """Each line of the journal with its record (None: not a whole record); none without a journal."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    return [(line, parse(line)) for line in data.splitlines() if line.strip()]


def read(path: Path) -> list[Record]:
    """Every record the journal holds (none when there is no journal)."""
    return [r for _, r in _parsed(path) if r is not None]


class LedgerJournal(LedgerAnswers):
    """Applying the journal beside this ledger (the run appends to it through `journal_record`)."""

    @property
    def journal(self) -> Path:
        return journal_path(self.location)

    def journal_record(self, record: Record) -> Path:
        """Keep `record` in the journal, durably; returns where (OSError if it cannot)."""
        append(self.journal, record)
        return self.journal

    def apply_journal(self) -> list[str]:
        """Record in the ledger what the journal holds, then empty it; returns what was done, one
        line a record. Raises LedgerError when the ledger cannot be written (the journal stays)."""
        path = self.journal
        if not path.exists():
            return []
        with _locked(path, create=False) as fd:
            if fd is None:
                return []
            parsed = _parsed(path)
            checked = [(r, _file_matches(r)) for _, r in parsed if r is not None]
            said = self.write(lambda conn: [self._apply_one(conn, r, ok) for r, ok in checked]) if checked else []
            refused = [r.line() for (r, _), line in zip(checked, said, strict=True) if line.startswith(_REFUSED)]
            unread = [line + b"\n" for line, r in parsed if r is None]
            if unread:
                said.append(f"{_REFUSED} {len(unread)} line(s) of {path} that are not whole records; kept in "
                            f"{path}.rejected")
            if refused or unread:  # kept where a person can read them, out of the way of every later command
                with open(f"{path}.rejected", "ab") as kept:
                    kept.write(b"".join(refused + unread))
                    kept.flush()
                    os.fsync(kept.fileno())
            os.ftruncate(fd, 0)
            os.fsync(fd)
        return said

    def _apply_one(self, conn: Connection, r: Record, file_ok: bool) -> str:
        """One record, in a savepoint: a record the database refuses is set aside, the rest apply."""
        savepoint = conn.begin_nested()
        try:
            line = self._apply(conn, r, file_ok)
        except Exception as e:
            refused = refused_value(e) if not isinstance(e, BatcherError) else e
            if refused is None or isinstance(refused, DiskFullError):
                raise
            savepoint.rollback()
            return f"{_REFUSED} {r.describe()}: {refused}; kept in {self.journal}.rejected"
        savepoint.commit()
        return line

    def _apply(self, conn: Connection, r: Record, file_ok: bool) -> str:
        job = conn.execute(text("SELECT state, remote_job_id, batch FROM job WHERE id = :id"), {"id": r.job_id}).first()
        if job is None or job[2] != r.batch:
            return f"{r.describe()}: no such job in this ledger; ignored"
        state, remote, _ = job
        now = self.clock()
        if r.kind is Recorded.ACCEPTED:
            return self._apply_accepted(conn, r, S(state), now)
        if remote != r.remote_job_id:
            return self._said(conn, r, f"{r.describe()}: the job is now {remote or 'without a remote job'}; ignored",
                              now)
        if r.kind is Recorded.RENDERED:
            if state != S.SUBMITTED.value:
                return f"{r.describe()}: already {state}"
            self._move(conn, r, S.SUBMITTED, S.RENDERED, "rendered", output_url=r.output_url,
                       output_expires_at=r.output_expires_at, render_seconds=r.render_seconds,
                       finished_at=r.finished_at)
            return f"{r.describe()}: recorded from the journal"
        if state == S.COMPLETED.value:
            return f"{r.describe()}: already completed"
        if not file_ok:
            return self._said(conn, r, f"{r.describe()}: the file is gone or changed; it is downloaded again", now)
        if state == S.SUBMITTED.value:
            self._move(conn, r, S.SUBMITTED, S.RENDERED, "rendered", finished_at=r.finished_at)
            state = S.RENDERED.value
        if state != S.RENDERED.value:
            return self._said(conn, r, f"{r.describe()}: the job is {state} now; ignored", now)
        self._move(conn, r, S.RENDERED, S.COMPLETED, "downloaded", file_path=r.file_path, size=r.size,
                   sha256=r.sha256)
        return f"{r.describe()}: recorded from the journal"

    def _apply_accepted(self, conn: Connection, r: Record, state: S, now: float) -> str:
        latest = conn.execute(text("SELECT MAX(id) FROM attempt WHERE job_id = :j"), {"j": r.job_id}).scalar()
        if state not in (S.SUBMITTING, S.UNKNOWN) or latest != r.attempt_id or r.attempt_id is None:
            return self._said(conn, r, f"{r.describe()}: the job has moved on ({state.value}) since; "
                                       f"its history keeps this answer", now)
        cost = Decimal(r.credit_cost) if r.credit_cost is not None else None
        answer = Answer(r.job_id, r.remote_job_id, r.status_url, cost, r.submitted_at, r.api_base or "", r.attempt_id)
        accepted = self.accept_answer(answer, Arrival.JOURNAL, source=state)(conn)
        if accepted.holder is not None:
            return f"{r.describe()}: {shared_id(r.remote_job_id)} ({accepted.holder}); held: it was charged"
        return f"{r.describe()}: recorded from the journal; it is polled, not submitted again"

    def _move(self, conn: Connection, r: Record, source: S, target: S, kind: str, **values: Any) -> None:
        self.move(r.job_id, source, target, f"journal-{kind}",
                  "the ledger could not record this when it happened; the journal kept it", **values)(conn)

    def _said(self, conn: Connection, r: Record, line: str, now: float) -> str:
        self._event(conn, r.job_id, "journal-ignored", None, None, line, now)
        return line


def _file_matches(r: Record) -> bool:
    """A downloaded record's file is on disk with its recorded size and sha256 (read before the write)."""
    if r.kind is not Recorded.DOWNLOADED or not r.file_path:
        return False
    path = Path(r.file_path)
    try:
        return path.is_file() and path.stat().st_size == r.size and file_sha256(path) == r.sha256
    except OSError:
        return False

