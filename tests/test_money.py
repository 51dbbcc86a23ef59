"""Money (issue 23: 2, 3, 6, 14a): exact credits end to end, absurd charges not believed, one
remote job id for one job, budgets that are numbers. Ledger tests run on both backends."""
from __future__ import annotations

import json
import math
from decimal import Decimal
from pathlib import Path

import anyio
import pytest
import sqlalchemy
from click.testing import CliRunner

from batcher import api
from batcher.cli import cli
from batcher.errors import BudgetExceeded, UsageError
from batcher.ledger import Ledger
from batcher.manifest import load_manifest
from batcher.money import budget, credits, from_hundredths, json_safe, show, to_hundredths
from batcher.policy import Budget, RetryPolicy
from batcher.run import RunOptions, RunReport
from batcher.simulator import SimConfig, Simulator, SimulatorTransport
from batcher.states import JobState

from .conftest import small_manifest
from .hostile import HostileApi, Mode


def strict_json(text: str) -> object:
    """What a strict JSON reader makes of `text`: NaN and Infinity are not JSON."""
    def refuse(name: str) -> object:
        raise ValueError(f"not JSON: {name}")
    return json.loads(text, parse_constant=refuse)


def _manifest(tmp_path: Path, n: int) -> Path:
    path = tmp_path / f"m{n}.yaml"
    path.write_text(small_manifest(n_rows=n))  # batch `small`: 5 s at 720p, 20 credits a job
    return path


def _run(ledger_url: str, tmp_path: Path, transport: HostileApi | SimulatorTransport, sim: Simulator, n: int,
         **options: object) -> RunReport:
    to = api.Target(sim.config.api_key, "https://pixeldojo.ai", transport, sim)
    fast = RetryPolicy(base=0.01, cap=0.05, max_attempts=6)
    opts = RunOptions.of(out_dir=tmp_path / "out", expected_render=0.02, seed=1, retry=fast, submit_retry=fast,
                         **options)
    return anyio.run(lambda: api.run_async(_manifest(tmp_path, n), ledger=ledger_url, options=opts, to=to))


def _sim() -> Simulator:
    return Simulator(SimConfig(render_seconds=0.02, render_jitter=0.2))


def _status_json(ledger_url: str, tmp_path: Path) -> dict:
    result = CliRunner().invoke(cli, ["status", str(_manifest(tmp_path, 3)), "--json", "--ledger", ledger_url])
    assert result.exit_code in (0, 1), result.output
    data = strict_json(result.stdout)
    assert isinstance(data, dict)
    return data


# --- exact amounts -----------------------------------------------------------------------------

def test_amounts_are_exact_hundredths_made_once():
    assert credits(0.1) + credits(0.2) == Decimal("0.3")  # 0.1 + 0.2 is 0.30000000000000004 in floats
    assert credits(1 / 3) == Decimal("0.33") and credits(1 / 3, up=True) == Decimal("0.34")
    assert credits(0.005) == Decimal("0.01") and credits("12.50") == Decimal("12.5")
    assert str(credits(40.0)) == "40" and show(Decimal("40.00")) == "40" and show(credits(0.1)) == "0.1"
    assert from_hundredths(to_hundredths(credits(1234.56))) == Decimal("1234.56")
    for bad in (math.nan, math.inf, -math.inf, 1e20, 1e308, "abc", True, None):
        with pytest.raises(ValueError):
            credits(bad)
    # What JSON gets: numbers (whole ones without a fraction), never NaN or Infinity.
    text = json.dumps(json_safe({"a": credits(40), "b": [credits(0.1)], "c": math.inf, "d": math.nan}),
                      allow_nan=False)
    assert strict_json(text) == {"a": 40, "b": [0.1], "c": None, "d": None} and '"a": 40,' in text


def test_the_in_memory_budget_is_exact():
    b = Budget(limit=Decimal(100))
    for _ in range(1000):
        assert b.reserve(credits(0.1))
        b.settle(credits(0.1), credits(0.1))
    assert b.committed == 100 and b.remaining == 0 and not b.fits(credits(0.01))


# --- budgets are numbers (14a) -----------------------------------------------------------------

@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1", "1e400", "lots"])
def test_a_budget_that_is_no_number_of_credits_is_a_one_line_usage_error(tmp_path, value):
    result = CliRunner().invoke(cli, ["run", str(_manifest(tmp_path, 1)), "--simulate", "--budget", value,
                                      "--ledger", str(tmp_path / "l.db")])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("batcher: --budget") and "number of credits" in lines[0]
    assert not (tmp_path / "l.db").exists()  # refused before anything was staged


@pytest.mark.parametrize("value", [math.nan, math.inf, -1, -0.5, "nan"])
def test_a_budget_from_the_python_api_is_checked_too(value):
    with pytest.raises(UsageError, match="number of credits"):
        RunOptions.of(budget=value)
    with pytest.raises(UsageError):
        Budget(limit=value)  # type: ignore[arg-type]
    assert RunOptions.of(budget=0.1).limits.budget == Decimal("0.1")
    assert budget("0.019") == Decimal("0.01")  # rounded down: never past the budget given


# --- the shared running total is exact (3), on both backends ------------------------------------

def _stage(ledger: Ledger, tmp_path: Path, n: int) -> list[int]:
    manifest = tmp_path / "many.yaml"
    manifest.write_text(small_manifest(n_rows=1, repeat=n).replace("batch: small", "batch: many"))
    api.stage(ledger, load_manifest(manifest))
    return [j.id for j in ledger.iter_batch("many")]


def test_the_shared_total_agrees_with_the_attempts_exactly(ledger_url, tmp_path):
    charges = [0.1, 0.2, 1 / 3]  # as the API's JSON gives them: floats
    with Ledger(ledger_url) as ledger:
        ids = _stage(ledger, tmp_path, 1500)
        ops = []
        expected = Decimal(0)
        for i, job_id in enumerate(ids):
            charge = charges[i % 3]

            def cycle(conn, job_id=job_id, charge=charge, i=i):
                attempt = ledger.begin_submission(job_id, JobState.PENDING, credits(20), batch="many")(conn)
                ledger.end_attempt(attempt, "accepted", remote_job_id=f"r{i}", credit_cost=charge)(conn)
                ledger.move(job_id, JobState.SUBMITTING, JobState.SUBMITTED, "accepted", remote_job_id=f"r{i}",
                            api_base="https://pixeldojo.ai")(conn)
                if i % 4 == 0:
                    ledger.refund(job_id)(conn)
            ops.append(cycle)
            expected += Decimal(0) if i % 4 == 0 else credits(charge)
        for start in range(0, len(ops), 500):
            ledger.write_many(ops[start:start + 500])
        committed, spend = ledger.committed("many"), ledger.spend("many")
        assert committed == expected == spend.committed and isinstance(committed, Decimal)
        # The shared check holds the budget to the hundredth: exactly enough room is room.
        spare = ids[-1]
        ledger.write(ledger.move(spare, JobState.SUBMITTED, JobState.PENDING, "requeued"))
        with pytest.raises(BudgetExceeded):
            ledger.write(ledger.begin_submission(spare, JobState.PENDING, credits(20), batch="many",
                                                 budget=expected + credits(19.99)))
        ledger.write(ledger.begin_submission(spare, JobState.PENDING, credits(20), batch="many",
                                             budget=expected + 20))
        assert ledger.committed("many") == expected + 20 == ledger.spend("many").committed


def test_a_refunded_absurd_charge_cancels_nothing_and_two_runners_keep_the_budget(ledger_url, tmp_path):
    # Two jobs charged 20 each, then one answered with creditCost 1e20 whose render fails (the
    # API refunds it). In floats, 40 + 1e20 - 1e20 is 0: two runners under --budget 100 then
    # spent 140. The charge is not believed (the ceiling, 1,200, is counted, then refunded).
    sim = _sim()
    hostile = HostileApi(sim, Mode.ABSURD_COST_REFUNDED, nth=3, cost=1e20)
    first = _run(ledger_url, tmp_path, hostile, sim, 3, concurrency=1, max_attempts=1)
    assert hostile.done[Mode.ABSURD_COST_REFUNDED] == 1
    assert {s: n for s, n in first.counts.items() if n} == {"completed": 2, "failed": 1}
    with Ledger(ledger_url) as ledger:
        assert ledger.committed("small") == 40 == ledger.spend("small").committed == first.spent
    # Two runners at once on 7 more jobs, each with --budget 100: 60 is left, three jobs.
    _run(ledger_url, tmp_path, SimulatorTransport(sim), sim, 10, budget=0)  # stage only

    async def both() -> None:
        async with anyio.create_task_group() as tg:
            for i in range(2):
                to = api.Target(sim.config.api_key, "https://pixeldojo.ai", SimulatorTransport(sim), sim)
                opts = RunOptions.of(out_dir=tmp_path / f"out{i}", expected_render=0.02, seed=i, budget=100,
                                     concurrency=2)
                tg.start_soon(lambda to=to, opts=opts: api.run_async(
                    _manifest(tmp_path, 10), ledger=ledger_url, options=opts, to=to, stage_jobs=False))
    anyio.run(both)
    with Ledger(ledger_url) as ledger:
        spend = ledger.spend("small")
        assert spend.spent == 100 and ledger.committed("small") == spend.committed == 100


# --- absurd charges (2) ------------------------------------------------------------------------

@pytest.mark.parametrize("cost", [1e308, 1e20, 5000])
def test_an_absurd_charge_is_not_believed_and_every_json_output_is_strict(ledger_url, tmp_path, cost):
    # 5000 is finite and fits any column, but no 5 s clip of this model costs it: its most is
    # 8 credits a second for 15 s (120), and a charge is believed up to ten times that. The
    # ceiling (1,200) is counted instead, and the run sends no more jobs of the model.
    sim = _sim()
    hostile = HostileApi(sim, Mode.ABSURD_COST, cost=cost)
    report = _run(ledger_url, tmp_path, hostile, sim, 3)
    assert report.counts["completed"] == 1 and report.counts["pending"] == 2 and report.spent == 1200
    said = [m for m in report.messages if "stopped sending jobs" in m]
    assert len(said) == 1 and "more for a job of happyhorse-1.0-r2v than any clip of it could cost" in said[0]
    with Ledger(ledger_url) as ledger:
        assert ledger.committed("small") == 1200 == ledger.spend("small").committed
        [job] = [j for j in ledger.iter_batch("small") if j.remote_job_id]
        assert job.credit_cost == 1200
        untrusted = [e.detail for e in ledger.events(job.id) if e.kind == "cost-untrusted"]
        assert len(untrusted) == 1 and "more than any clip of happyhorse-1.0-r2v" in untrusted[0]
        assert ledger.figures("small").untrusted_costs == 1
    status = _status_json(ledger_url, tmp_path)
    assert status["credits_spent"] == 1200 and status["credits_committed"] == 1200 and status["untrusted_costs"] == 1
    export = CliRunner().invoke(cli, ["export", str(_manifest(tmp_path, 3)), "--ledger", ledger_url,
                                      "--format", "jsonl", "-o", str(tmp_path / "e.jsonl")])
    assert export.exit_code == 0, export.output
    rows = [strict_json(line) for line in (tmp_path / "e.jsonl").read_text().splitlines()]
    assert sorted(r["credit_cost"] or 0 for r in rows) == [0, 0, 1200]  # type: ignore[index]


def test_a_charge_within_the_ceiling_is_believed_exactly(ledger_url, tmp_path):
    sim = _sim()
    hostile = HostileApi(sim, Mode.ABSURD_COST, cost=20.1)  # a little above the estimate: believed
    report = _run(ledger_url, tmp_path, hostile, sim, 3)
    assert report.spent == Decimal("60.3") and not [m for m in report.messages if "creditCost" in m]
    assert _status_json(ledger_url, tmp_path)["credits_spent"] == 60.3


# --- one remote job id, one job (6) ------------------------------------------------------------

def test_a_job_id_the_ledger_already_holds_is_refused(ledger_url, tmp_path):
    sim = _sim()
    hostile = HostileApi(sim, Mode.DUPLICATE_JOB_ID)
    report = _run(ledger_url, tmp_path, hostile, sim, 3, concurrency=1)
    assert hostile.done[Mode.DUPLICATE_JOB_ID] == 2
    assert report.counts["completed"] == 1 and report.counts["unknown"] == 2 and report.exit_code == 1
    assert len([m for m in report.messages if "job id another job already has" in m]) == 1
    with Ledger(ledger_url) as ledger:
        jobs = list(ledger.iter_batch("small"))
        done = [j for j in jobs if j.state == "completed"]
        held = [j for j in jobs if j.state == "unknown"]
        assert len(done) == 1 and len(held) == 2
        for job in held:
            # never polled, never given the other job's clip; charged, so its cost counts
            assert job.remote_job_id is None and job.file_path is None and job.credit_cost == 20
            assert "another job of this ledger already has" in (job.error or "") and "charged" in job.error
            assert [e.kind for e in ledger.events(job.id)][-1] == "duplicate-job-id"
            assert ledger.attempts(job.id)[-1].remote_job_id == done[0].remote_job_id  # the attempt remembers
        assert ledger.committed("small") == 60 == ledger.spend("small").committed  # all three were charged
    # The schema says so too: one (API base, remote job id) per job.
    engine = sqlalchemy.create_engine(ledger_url if "://" in ledger_url else f"sqlite:///{ledger_url}")
    try:
        with pytest.raises(sqlalchemy.exc.IntegrityError), engine.begin() as conn:
            conn.exec_driver_sql(f"UPDATE job SET remote_job_id = '{done[0].remote_job_id}', "
                                 f"api_base = '{done[0].api_base}' WHERE id = {held[0].id}")
    finally:
        engine.dispose()


# --- an older ledger, with floats and a shared job id, upgraded (3, 6) ---------------------------

_FLOATS = [("job", "estimate"), ("job", "credit_cost"), ("attempt", "reserved"), ("attempt", "credit_cost"),
           ("batch", "budget"), ("batch", "committed")]


def _as_version_11(url: str) -> None:
    """Turn a ledger of today back into version 11's shape: money as floats of credits, no API
    base, no unique remote job ids."""
    engine = sqlalchemy.create_engine(url if "://" in url else f"sqlite:///{url}")
    real = "DOUBLE PRECISION" if "://" in url else "REAL"
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP INDEX job_remote_id")
            conn.exec_driver_sql("DROP INDEX attempt_remote_id")
            conn.exec_driver_sql("ALTER TABLE job DROP COLUMN api_base")
            for table, column in _FLOATS:
                conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {column}_f {real}")
                conn.exec_driver_sql(f"UPDATE {table} SET {column}_f = {column} / 100.0")
                conn.exec_driver_sql(f"ALTER TABLE {table} DROP COLUMN {column}")
                conn.exec_driver_sql(f"ALTER TABLE {table} RENAME COLUMN {column}_f TO {column}")
            conn.exec_driver_sql("DELETE FROM schema_migrations WHERE version = 12")
            ids = [i for (i,) in conn.exec_driver_sql("SELECT id FROM job ORDER BY id")]
            # Two jobs given one remote id; a third charged 1e20, then refunded; the float total
            # after that refund: 0.
            rows = [(ids[0], "submitted", "r-shared", 20.0, False), (ids[1], "submitted", "r-shared", 0.1, False),
                    (ids[2], "failed", "r-3", 1e20, True)]
            for job_id, state, remote, cost, refunded in rows:
                conn.execute(sqlalchemy.text(
                    "UPDATE job SET state = :s, remote_job_id = :r, credit_cost = :c WHERE id = :id"),
                    {"s": state, "r": remote, "c": cost, "id": job_id})
                conn.execute(sqlalchemy.text(
                    "INSERT INTO attempt (job_id, number, outcome, reserved, remote_job_id, credit_cost, refunded, "
                    "started_at) VALUES (:j, 1, 'accepted', 20.0, :r, :c, :f, 0)"),
                    {"j": job_id, "r": remote, "c": cost, "f": refunded})
            conn.exec_driver_sql("UPDATE batch SET committed = 0.0, budget = 100.0")
    finally:
        engine.dispose()


def test_an_older_ledger_upgrades_to_exact_totals_and_holds_a_shared_id(ledger_url, tmp_path):
    with Ledger(ledger_url) as ledger:
        api.stage(ledger, load_manifest(_manifest(tmp_path, 4)))
    _as_version_11(ledger_url)
    with Ledger(ledger_url) as ledger:  # upgraded on opening
        assert ledger.schema_version() >= 12
        info = ledger.batch("small")
        assert info is not None and info.budget == 100
        assert ledger.committed("small") == Decimal("20.1") == ledger.spend("small").committed
        jobs = list(ledger.iter_batch("small"))
        assert [j.estimate for j in jobs] == [20, 20, 20, 20] and jobs[0].credit_cost == 20
        assert jobs[3].state == "pending" and jobs[3].credit_cost is None  # never charged: still no cost
        assert jobs[0].state == "submitted" and jobs[0].api_base == ""  # the first holder keeps its id
        # the later holder is never given the other's clip: held, with the reason in its history
        assert jobs[1].state == "unknown" and "r-shared" in (jobs[1].error or "")
        assert [e.kind for e in ledger.events(jobs[1].id)][-1] == "duplicate-job-id"
        assert ledger.attempts(jobs[2].id)[0].credit_cost == 20  # 1e20 was no charge: its estimate


def test_an_estimate_beyond_any_amount_is_a_usage_error_not_a_traceback(tmp_path):
    result = CliRunner().invoke(cli, ["run", str(_manifest(tmp_path, 1)), "--simulate", "--rate", "720p=1e300",
                                      "--ledger", str(tmp_path / "l.db")])
    assert result.exit_code == 2 and "beyond any amount batcher counts" in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_a_rerun_with_a_rate_reprices_only_jobs_never_sent(ledger_url, write):
    # After a stop for a charge over the ceiling, the way on is a --rate at the real price: jobs
    # never sent take it; a job already sent keeps what was reserved for it.
    from batcher import api
    from batcher.states import JobState as S
    m = api.load_manifest(write("m.yaml", small_manifest(n_rows=2)))
    with Ledger(ledger_url) as led:
        api.stage(led, m)
        sent, fresh = list(led.iter_batch("small"))
        led.write(led.begin_submission(sent.id, S.PENDING, sent.estimate))
        api.stage(led, m, {"720p": 500.0})
        assert led.get(fresh.id).estimate == Decimal(2500) and led.get(sent.id).estimate == Decimal(20)
