"""A ledger that fails after the API acted (issue 23, item 1): the write is tried again while the
database may come back, and an answer it still cannot record is kept in the fsync'd journal beside
the ledger, which the next run (or any command that opens the ledger to write) records first:
the job is polled, never POSTed again. Real outages on both backends (tests/outages.py)."""
from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from batcher import api
from batcher.errors import LedgerUnavailable
from batcher.ledger import Ledger
from batcher.ledger.journal import Record, Recorded, journal_path, parse, read
from batcher.policy import RetryPolicy
from batcher.run import RunOptions
from batcher.simulator import SimConfig, Simulator

from .conftest import small_manifest
from .hostile import HostileApi, Mode
from .outages import ledger_outage

FAST = RetryPolicy(base=0.01, cap=0.05, max_attempts=6)


@pytest.fixture(autouse=True)
def _state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))  # a PostgreSQL ledger's journal lives there


def _run(manifest: Path, location: str, sim: Simulator, tmp_path: Path, transport=None, **options):
    opts = RunOptions.of(out_dir=tmp_path / "out", expected_render=0.05, retry=FAST, submit_retry=FAST,
                         concurrency=3, seed=1, **options)
    to = api.Target(sim.config.api_key, "https://pixeldojo.ai", transport or HostileApi(sim), sim)

    async def go():
        with Ledger(location, busy_timeout=0.2) as led:
            return await api.run_async(manifest, ledger=led, options=opts, to=to)
    return anyio.run(go)


def _states(location: str) -> dict[str, str]:
    with Ledger(location) as led:
        return {j.key: j.state for j in led.iter_batch("small")}


def test_an_outage_shorter_than_the_patience_is_waited_out(ledger_url, tmp_path, write):
    manifest = write("m.yaml", small_manifest(n_rows=3))
    sim = Simulator(SimConfig(render_seconds=0.05))
    outage = ledger_outage(ledger_url)
    hostile = HostileApi(sim, Mode.LEDGER_DOWN_AFTER_POST, outage=outage, seconds=1.5)
    report = _run(manifest, ledger_url, sim, tmp_path, hostile, ledger_patience=30)
    outage.wait()
    assert hostile.done[Mode.LEDGER_DOWN_AFTER_POST] == 1 and outage.count == 1
    assert report.exit_code == 0
    assert set(_states(ledger_url).values()) == {"completed"}
    assert len(sim.record()["jobs"]) == 3  # nothing paid twice
    assert read(journal_path(ledger_url)) == []


@pytest.mark.parametrize("after", ["submit", "status", "download"])
def test_an_answer_the_ledger_cannot_record_is_journaled_and_never_paid_again(ledger_url, tmp_path, write, after):
    manifest = write("m.yaml", small_manifest(n_rows=3))
    sim = Simulator(SimConfig(render_seconds=0.05))
    outage = ledger_outage(ledger_url)
    hostile = HostileApi(sim, Mode.LEDGER_DOWN_AFTER_POST, outage=outage, seconds=3, after=after)
    with pytest.raises(LedgerUnavailable) as failed:
        # (its leases could not be given back: short ones run out while the outage lasts)
        _run(manifest, ledger_url, sim, tmp_path, hostile, ledger_patience=0.5, lease_seconds=1.0)
    records = read(journal_path(ledger_url))
    assert records, "the answer the ledger could not record is in the journal"
    first = records[0]
    message = str(failed.value)
    assert first.remote_job_id in message and str(journal_path(ledger_url)) in message
    if after == "submit":
        assert first.kind is Recorded.ACCEPTED and first.status_url and first.status_url in message
    charged = len(sim.record()["jobs"])
    outage.wait()

    # Any command that opens the ledger to write records the journal first: `retry --unknown` finds
    # nothing of it held.
    with Ledger(ledger_url) as led:
        applied = led.journal_applied
        job = next(j for j in led.iter_batch("small") if j.id == first.job_id)
        kinds = [e.kind for e in led.events(job.id)]
    assert len(applied) == len(records) and all("journal" in line for line in applied)
    assert job.state != "unknown" and job.remote_job_id == first.remote_job_id
    assert f"journal-{first.kind.value}" in kinds
    assert read(journal_path(ledger_url)) == []

    report = _run(manifest, ledger_url, sim, tmp_path, HostileApi(sim))
    assert report.exit_code == 0
    assert set(_states(ledger_url).values()) == {"completed"}
    jobs = sim.record()["jobs"]
    assert len(jobs) == 3 and charged <= 3  # each clip paid once
    with Ledger(ledger_url) as led:
        files = [j.file_path for j in led.iter_batch("small")]
    assert len(set(files)) == 3 and all(Path(f).is_file() for f in files)


def _staged(write, location: str, rows: int) -> list:
    """The jobs of a small manifest, added to the ledger at `location`."""
    with Ledger(location) as led:
        api.stage(led, api.load_manifest(write("m.yaml", small_manifest(n_rows=rows))))
        return list(led.iter_batch("small"))


def test_the_journal_is_applied_only_where_the_ledger_still_agrees(tmp_path, write):
    location = str(tmp_path / "l.db")
    job = _staged(write, location, 2)[0]
    path = journal_path(location)
    stale = Record(Recorded.ACCEPTED, "small", job.id, job.key, "job_x", 1.0, attempt_id=99,
                   status_url="https://pixeldojo.ai/api/v1/jobs/job_x", credit_cost="20")
    other_batch = Record(Recorded.RENDERED, "another", job.id, job.key, "job_y", 1.0, output_url="https://x/y.mp4")
    path.write_bytes(stale.line() + other_batch.line() + b'{"kind": "accepted", "batch": "small", "job_id": ')
    with Ledger(location) as led:
        said = led.journal_applied
        after = next(j for j in led.iter_batch("small") if j.id == job.id)
        events = [(e.kind, e.detail) for e in led.events(job.id)]
    assert len(said) == 3  # the torn last line is no record: set aside, said once
    assert after.state == "pending" and after.remote_job_id is None
    assert any(kind == "journal-ignored" and "moved on" in (detail or "") for kind, detail in events)
    assert "no such job" in said[1] and "not whole records" in said[2]
    assert path.read_bytes() == b""
    assert Path(f"{path}.rejected").read_bytes().startswith(b'{"kind": "accepted", "batch": "small", "job_id": ')


@pytest.mark.parametrize("line", [
    b"not json", b"[]", b'{"kind": "accepted"}', b'{"kind": "paid", "batch": "b", "job_id": 1, "key": "k", '
    b'"remote_job_id": "r", "at": 1}', b'{"kind": "accepted", "batch": "b", "job_id": -1, "key": "k", '
    b'"remote_job_id": "r", "at": 1}', b'{"kind": "accepted", "batch": "b", "job_id": 1, "key": "k", '
    b'"remote_job_id": "r", "at": 1, "credit_cost": "1e400000"}', b'{"kind": "accepted", "batch": "b", '
    b'"job_id": 1, "key": "k", "remote_job_id": "r", "at": 1, "credit_cost": "-3"}',
    b'{"kind": "accepted", "batch": "b", "job_id": 1, "key": "k", "remote_job_id": "r", "at": NaN}',
    b'{"kind": "accepted", "batch": "b", "job_id": 1, "key": "k", "remote_job_id": "r", "at": 1, "extra": 2}',
])
def test_a_line_that_is_not_a_whole_record_is_not_believed(line):
    assert parse(line) is None


def test_a_record_survives_its_own_line():
    r = Record(Recorded.DOWNLOADED, "b", 3, "k", "job_1", 5.5, file_path="/x/y.mp4", size=10, sha256="ab" * 32)
    assert parse(r.line()) == r
    assert json.loads(r.line())["kind"] == "downloaded"


def test_a_journaled_answer_naming_another_jobs_id_holds_the_job_never_pairs_it(tmp_path, write):
    from decimal import Decimal

    from batcher.states import JobState as S
    manifest = write("m.yaml", small_manifest(n_rows=2))
    location, base = str(tmp_path / "l.db"), "https://pixeldojo.ai"
    with Ledger(location) as led:
        api.stage(led, api.load_manifest(manifest))
        first, second = list(led.iter_batch("small"))
        a1 = led.write(led.begin_submission(first.id, S.PENDING, Decimal(20)))
        led.write(led.end_attempt(a1, "accepted", remote_job_id="job_1", credit_cost=Decimal(20)))
        led.write(led.move(first.id, S.SUBMITTING, S.SUBMITTED, "accepted", remote_job_id="job_1", api_base=base))
        a2 = led.write(led.begin_submission(second.id, S.PENDING, Decimal(20)))
    record = Record(Recorded.ACCEPTED, "small", second.id, second.key, "job_1", 1.0, attempt_id=a2,
                    status_url=f"{base}/api/v1/jobs/job_1", credit_cost="20", api_base=base)
    journal_path(location).write_bytes(record.line())
    with Ledger(location) as led:
        held = led.get(second.id)
        kinds = [e.kind for e in led.events(second.id)]
        committed = led.spend("small").committed
    assert held.state == "unknown" and held.remote_job_id is None and "job_1" in (held.error or "")
    assert "duplicate-job-id" in kinds
    assert committed == Decimal(40)  # both charges count as spent


def test_a_journal_line_holding_what_no_database_stores_is_set_aside_not_a_traceback(tmp_path, write):
    # A record whose text holds a lone surrogate or a NUL (a corrupt or hostile file) is no record:
    # every later command would otherwise fail on it.
    location = str(tmp_path / "l.db")
    job = _staged(write, location, 1)[0]
    good = Record(Recorded.RENDERED, "small", job.id, job.key, "job_1", 1.0, output_url="https://x/y.mp4")
    bad = [json.dumps({**json.loads(good.line()), "status_url": text}).encode() + b"\n"
           for text in ("https://x/\ud800", "https://x/\u0000")]
    journal_path(location).write_bytes(bad[0] + good.line() + bad[1])
    with Ledger(location) as led:
        said = led.journal_applied
    assert any("not whole records" in line and "2 line(s)" in line for line in said)
    assert Path(f"{journal_path(location)}.rejected").read_bytes() == bad[0] + bad[1]


def test_one_write_the_database_refuses_fails_alone_and_the_writer_lives_on(ledger_url, tmp_path, write):
    from batcher.errors import LedgerError, WriteRefused
    from batcher.run.threads import IoThreads
    from batcher.run.writer import LedgerWriter
    manifest = write("m.yaml", small_manifest(n_rows=2))
    poison = "\x00" if "postgres" in ledger_url else "\ud800"  # what each database cannot store
    with Ledger(ledger_url) as led:
        api.stage(led, api.load_manifest(manifest))
        first, second = list(led.iter_batch("small"))
        results = led.write_many([led.note(first.id, "fine", "a"), led.note(first.id, "bad", poison),
                                  led.note(second.id, "fine", "b")])
        assert results[0] is None and isinstance(results[1], WriteRefused) and results[2] is None
        assert [e.kind for e in led.events(second.id)][-1] == "fine"  # the others committed

        def broken(conn):
            raise RuntimeError("a bug in an operation")

        async def go():
            writer = LedgerWriter(led, IoThreads(), patience=0.2)
            async with anyio.create_task_group() as tg:
                tg.start_soon(writer.run)
                with anyio.fail_after(20):  # a dead writer would leave this waiting for ever
                    with pytest.raises(LedgerError):
                        await writer.write(broken)
                    await writer.write(led.note(second.id, "after", "c"))
                writer.close()
        anyio.run(go)
        assert [e.kind for e in led.events(second.id)][-1] == "after"


def test_an_accept_written_twice_counts_once(ledger_url, tmp_path, write):
    # A commit can land while its connection drops: the same accept, written again, must neither
    # count the charge twice in the shared running total nor fail.
    from decimal import Decimal

    from batcher.states import JobState as S
    manifest = write("m.yaml", small_manifest(n_rows=1))
    with Ledger(ledger_url) as led:
        api.stage(led, api.load_manifest(manifest))
        job = next(iter(led.iter_batch("small")))
        attempt = led.write(led.begin_submission(job.id, S.PENDING, Decimal(20)))
        accept = led.end_attempt(attempt, "accepted", remote_job_id="job_1", credit_cost=Decimal("20.5"),
                                 known=("submitting", Decimal(20), "small"))
        led.write(accept)
        led.write(accept)
        assert led.spend("small").committed == Decimal("20.5")
        move = led.move(job.id, S.SUBMITTING, S.SUBMITTED, "accepted", remote_job_id="job_1")
        led.write(move)
        led.write(move)  # found done, not an illegal transition
        assert led.get(job.id).state == "submitted"
        assert [e.kind for e in led.events(job.id)].count("accepted") == 1
