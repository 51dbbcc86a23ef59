"""Money's edges (a hostile review of issue 23): a charge above the ceiling counts the ceiling and
stops the model's submissions; a charge far below the price counts the estimate; charges are
rounded up, and a refund takes back exactly what was counted. Ledger tests run on both backends."""
from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner

from batcher import api
from batcher.cli import cli
from batcher.ledger import Ledger
from batcher.money import FIXED_CEILING, ZERO, ChargeVerdict, count_charge
from batcher.policy import RetryPolicy
from batcher.run import RunOptions, RunReport
from batcher.run.outcomes import ExitCode, StopReason
from batcher.simulator import SimConfig, Simulator

from .conftest import small_manifest
from .hostile import HostileApi, Mode

MODEL = "happyhorse-1.0-r2v"
# The most a job of it costs at its listed prices is 8 credits a second for 15 s (120); a charge
# is believed up to ten times that.
CEILING = 1200


def _manifest(tmp_path: Path, n: int) -> Path:
    path = tmp_path / f"m{n}.yaml"
    path.write_text(small_manifest(n_rows=n))  # batch `small`: 5 s at 720p, 20 credits a job
    return path


def _run(ledger_url: str, tmp_path: Path, sim: Simulator, n: int, *modes: Mode, settings: dict | None = None,
         **options: object) -> tuple[RunReport, HostileApi]:
    hostile = HostileApi(sim, *modes, **(settings or {}))
    to = api.Target(sim.config.api_key, "https://pixeldojo.ai", hostile, sim)
    fast = RetryPolicy(base=0.01, cap=0.05, max_attempts=6)
    opts = RunOptions.of(out_dir=tmp_path / "out", expected_render=0.02, seed=1, retry=fast, submit_retry=fast,
                         **options)
    report = anyio.run(lambda: api.run_async(_manifest(tmp_path, n), ledger=ledger_url, options=opts, to=to))
    return report, hostile


def _sim(**config: object) -> Simulator:
    return Simulator(SimConfig(render_seconds=0.02, render_jitter=0.2, **config))  # type: ignore[arg-type]


def _untrusted(ledger: Ledger) -> list[str]:
    return [e.detail or "" for job in ledger.iter_batch("small") for e in ledger.events(job.id)
            if e.kind == "cost-untrusted"]


# --- a charge above the ceiling (finding 6) ---------------------------------------------------

def test_a_real_price_rise_past_the_ceiling_counts_the_ceiling_and_stops_the_model(ledger_url, tmp_path):
    # The API really charges 500 credits a second (2,500 a job) for a model listed at 4. Before,
    # each such charge counted its estimate (20): under --budget 100, five jobs went, 12,500 spent.
    sim = _sim(rates={"720p": 500.0, "1080p": 900.0})
    report, _ = _run(ledger_url, tmp_path, sim, 6, budget=Decimal(100), concurrency=2)
    assert len(sim.record()["jobs"]) == 1  # one job found the price out; no other was sent
    assert report.stop_reason is StopReason.BUDGET and report.exit_code is ExitCode.BUDGET
    stops = [m for m in report.messages if "stopped sending jobs" in m and MODEL in m]
    assert len(stops) == 1 and "cannot tell a lie from a price change" in stops[0] and "--rate" in stops[0]
    # the job in flight was followed to its end: its video is not lost
    assert {s: n for s, n in report.counts.items() if n} == {"completed": 1, "pending": 5}
    with Ledger(ledger_url) as ledger:
        assert ledger.committed("small") == CEILING == ledger.spend("small").committed
        [paid] = [j for j in ledger.iter_batch("small") if j.remote_job_id]
        assert paid.credit_cost == CEILING and paid.file_path
        [detail] = _untrusted(ledger)
        assert f"more than any clip of {MODEL}" in detail and f"{CEILING} credits" in detail


def test_a_claim_beyond_any_amount_counts_the_ceiling_up_to_what_the_budget_has_left(ledger_url, tmp_path):
    # 1e308 is no price: it counts what the budget had left (100 of the ceiling's 1,200); the
    # model stops. Before, it counted the estimate and four more jobs were sent.
    sim = _sim()
    report, hostile = _run(ledger_url, tmp_path, sim, 6, Mode.ABSURD_COST, settings={"cost": 1e308},
                           budget=Decimal(100), concurrency=2)
    assert hostile.done[Mode.ABSURD_COST] == 1 and len(sim.record()["jobs"]) == 1
    assert report.stop_reason is StopReason.BUDGET and report.spent == 100
    with Ledger(ledger_url) as ledger:
        assert ledger.committed("small") == 100 == ledger.spend("small").committed
        [detail] = _untrusted(ledger)
        assert "100 credits" in detail


def test_a_refund_of_an_over_ceiling_charge_takes_back_what_was_counted(ledger_url, tmp_path):
    # The third answer claims 5,000 (ceiling 1,200 counted) and its render fails (refunded): the
    # refund takes back the 1,200, and nothing after it is sent (before: all five were).
    sim = _sim()
    report, hostile = _run(ledger_url, tmp_path, sim, 5, Mode.ABSURD_COST_REFUNDED, settings={"nth": 3, "cost": 5000},
                           concurrency=1, max_attempts=1)
    assert hostile.done[Mode.ABSURD_COST_REFUNDED] == 1 and len(sim.record()["jobs"]) == 3
    assert {s: n for s, n in report.counts.items() if n} == {"completed": 2, "failed": 1, "pending": 2}
    with Ledger(ledger_url) as ledger:
        spend = ledger.spend("small")
        assert spend.refunded == CEILING and spend.spent == 40 == ledger.committed("small")


# --- a charge far below the price (finding 7) -------------------------------------------------

@pytest.mark.parametrize("share", [0.0, 0.4])
def test_a_charge_below_half_the_estimate_counts_the_estimate(ledger_url, tmp_path, share):
    # The API claims 0 (or 8 of 20) while it charges the real price: before, the claim was
    # believed and all six jobs went under a 40-credit budget.
    sim = _sim()
    report, hostile = _run(ledger_url, tmp_path, sim, 6, Mode.CLAIMED_SHARE, settings={"share": share},
                           budget=Decimal(40), concurrency=1)
    assert len(sim.record()["jobs"]) == 2 == hostile.done[Mode.CLAIMED_SHARE]
    assert report.exit_code is ExitCode.BUDGET and report.spent == 40
    said = [m for m in report.messages if "creditCost" in m]
    assert len(said) == 1 and "below half the job's estimate" in said[0]
    with Ledger(ledger_url) as ledger:
        assert ledger.committed("small") == 40 == ledger.spend("small").committed
        details = _untrusted(ledger)
        assert len(details) == 2
        assert all("less than half of the job's estimate 20" in d and "its estimate 20 is counted" in d
                   for d in details)
    status = CliRunner().invoke(cli, ["status", str(_manifest(tmp_path, 6)), "--ledger", ledger_url])
    assert "2 job(s) were answered with a creditCost that cannot be believed" in status.stdout
    assert "below half the job's estimate" in status.stdout


def test_half_the_estimate_is_believed(ledger_url, tmp_path):
    sim = _sim()
    report, _ = _run(ledger_url, tmp_path, sim, 3, Mode.CLAIMED_SHARE, settings={"share": 0.5}, concurrency=1)
    assert report.spent == 30 and not [m for m in report.messages if "creditCost" in m]
    with Ledger(ledger_url) as ledger:
        assert ledger.committed("small") == 30 and not _untrusted(ledger)


def test_a_model_with_no_known_price_keeps_believing_the_api():
    assert count_charge(0.0, ZERO, ZERO, FIXED_CEILING, None) == (ZERO, ChargeVerdict.BELIEVED)
    assert count_charge(12.5, ZERO, ZERO, FIXED_CEILING, None) == (Decimal("12.5"), ChargeVerdict.BELIEVED)
    assert count_charge(0.0, Decimal(20), Decimal(20), Decimal(200), None) == (20, ChargeVerdict.TOO_LOW)


# --- charges rounded up (finding 14) -----------------------------------------------------------

def test_charges_are_rounded_up_to_the_hundredth(ledger_url, tmp_path):
    # 19.994 a job: half-up counted 19.99, less than was spent.
    sim = _sim()
    report, _ = _run(ledger_url, tmp_path, sim, 3, Mode.CLAIMED_SHARE, settings={"share": 0.9997}, concurrency=1)
    assert report.spent == 60
    with Ledger(ledger_url) as ledger:
        assert [j.credit_cost for j in ledger.iter_batch("small")] == [20, 20, 20]
        assert ledger.committed("small") == 60 == ledger.spend("small").committed


def test_a_refund_takes_back_exactly_the_rounded_charge(ledger_url, tmp_path):
    # The third answer claims 20.004 (counted 20.01) and its render fails: 20.01 comes back.
    sim = _sim()
    report, _ = _run(ledger_url, tmp_path, sim, 3, Mode.ABSURD_COST_REFUNDED, settings={"nth": 3, "cost": 20.004},
                     concurrency=1, max_attempts=1)
    assert {s: n for s, n in report.counts.items() if n} == {"completed": 2, "failed": 1}
    with Ledger(ledger_url) as ledger:
        spend = ledger.spend("small")
        assert spend.refunded == Decimal("20.01") and spend.spent == 40 == ledger.committed("small")
