"""One budget object: a submission's reservation ends once (charged, held, or released), on every
exit path, and each end wakes whoever waits for room in the budget. The accounting first, pure;
then the run's waiting (`RunContext.reserve`); then each answer of a real submission."""
from __future__ import annotations

from decimal import Decimal

import anyio
import pytest

from batcher import api
from batcher.client import PixelDojoClient
from batcher.errors import LeaseLost
from batcher.ledger import Ledger
from batcher.policy import Budget, CostMemory, Reservation
from batcher.run import RunOptions
from batcher.run.context import RunContext
from batcher.run.outcomes import StopReason, Submitted
from batcher.run.submission import submit_once
from batcher.simulator import SimConfig, Simulator, SimulatorTransport
from batcher.states import Control, JobState

from .conftest import small_manifest


def _budget(limit: int = 100) -> tuple[Budget, list[int]]:
    woken: list[int] = []
    return Budget(Decimal(limit), on_change=lambda: woken.append(1)), woken


# --- the accounting, pure -------------------------------------------------------------------------

def test_a_charged_reservation_commits_the_charge_and_tells_the_budget():
    b, woken = _budget()
    r = b.open(Decimal(60))
    assert isinstance(r, Reservation) and b.reserved == 60 and b.reservations == 1 and r.room == 100
    assert b.open(Decimal(41)) is None and b.reservations == 1  # refused without a trace
    r.charge(Decimal("12.34"))
    assert (b.committed, b.reserved, b.reservations, r.ended, woken) == (Decimal("12.34"), 0, 0, "charged", [1])


def test_a_held_reservation_stays_committed_at_its_estimate():
    b, woken = _budget()
    with b.open(Decimal(60)) as r:
        r.hold()
    assert (b.committed, b.reserved, b.reservations, r.ended, woken) == (60, 0, 0, "held", [1])


def test_a_reservation_refused_by_the_ledger_takes_its_committed_total():
    b, woken = _budget()
    other = b.open(Decimal(20))
    mine = b.open(Decimal(30))
    assert other is not None and mine is not None
    mine.release(ledger_committed=Decimal(70))  # the ledger counts 50 by other runners, plus our 20 in flight
    assert (b.committed, b.reserved, b.reservations, woken) == (50, 20, 1, [1])
    assert b.remaining == 30


@pytest.mark.parametrize("how", ["not sent", "exception"])
def test_a_reservation_nothing_charged_is_released_on_any_exit(how):
    b, woken = _budget()
    with pytest.raises(KeyError) if how == "exception" else _nothing(), b.open(Decimal(60)) as r:
        if how == "exception":
            raise KeyError("boom")
    assert (b.committed, b.reserved, b.reservations, r.ended, woken) == (0, 0, 0, "released", [1])


def test_a_reservation_ends_once():
    b, woken = _budget()
    with b.open(Decimal(60)) as r:
        r.charge(Decimal(5))
        with pytest.raises(AssertionError, match="ends once"):
            r.release()
    assert (b.committed, b.reserved, b.reservations, woken) == (5, 0, 0, [1])  # the exit adds nothing


def test_a_refund_tells_the_budget_too():
    b, woken = _budget()
    b.committed = Decimal(40)
    b.refund(Decimal(15))
    assert b.committed == 25 and woken == [1]


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


# --- what the run learns of charges -----------------------------------------------------------------

def test_cost_memory_reserves_what_the_api_charged_and_scales_the_models_other_classes():
    costs = CostMemory()
    short, long = ("m", 5, "720p"), ("m", 10, "720p")
    assert costs.estimate("m", short, Decimal(10)) == 10 and costs.scale_for("m") == 1
    assert costs.gate("m", short) == ("m",)  # nothing charged for the model: one probe for all of it
    costs.learn("m", short, Decimal(10), Decimal(15))
    assert costs.charged(short) and not costs.charged(long) and costs.most_for(short) == 15
    assert costs.scale_for("m") == Decimal("1.5") and costs.gate("m", long) == long
    assert costs.estimate("m", long, Decimal("20.01")) == Decimal("30.02")  # scaled, up to the next hundredth
    assert costs.estimate("m", short, Decimal(10)) == 15
    costs.learn("m", short, Decimal(0), Decimal(1))  # charged for a free estimate: the most scale
    assert costs.scale_for("m") == Decimal(10) ** 6 and costs.scale_for("other") == 1


def test_a_probe_holds_its_gate_back_until_it_ends():
    woken: list[int] = []
    costs = CostMemory(on_change=lambda: woken.append(1))
    cls, gate = ("m", 5, "720p"), ("m",)
    with costs.probe(cls, gate):
        assert costs.waits(gate) and not woken
    assert not costs.waits(gate) and woken == [1]
    costs.learn("m", cls, Decimal(1), Decimal(1))
    with costs.probe(cls, cls):  # a class already charged probes nothing
        assert not costs.waits(cls)
    assert woken == [1]


# --- the run's waiting: RunContext.reserve -----------------------------------------------------------

def _context(ledger: Ledger, client: PixelDojoClient, manifest: api.Manifest, budget: int = 100) -> RunContext:
    return RunContext(ledger, client, manifest.model, manifest.batch, RunOptions.of(budget=budget))


async def _waiter(ctx: RunContext, estimate: int, got: list[Reservation | None]) -> None:
    """Reserve `estimate` (a waiter nothing wakes fails, rather than hang the suite)."""
    with anyio.fail_after(10):
        async with ctx.reserve(Decimal(estimate)) as r:
            got.append(r)


def _in_run(tmp_path, write, body, config: SimConfig | None = None, rows: int = 1):
    """`body(ctx, ledger, manifest, jobs)` inside a run's context against the simulator, its
    writer running; returns what it returns."""
    manifest = api.load(write("m.yaml", small_manifest(n_rows=rows)))
    with Ledger(tmp_path / "l.db") as ledger:
        api.stage(ledger, manifest, simulated=True)
        jobs = ledger.write(ledger.claim(manifest.batch, [JobState.PENDING], "a:1:x", 60, rows))

        async def go():
            sim = Simulator(config or SimConfig())
            async with PixelDojoClient("sim-key", "https://pixeldojo.ai", transport=SimulatorTransport(sim)) as c:
                ctx = _context(ledger, c, manifest)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(ctx.writer.run)
                    try:
                        return await body(ctx, ledger, manifest, jobs)
                    finally:
                        ctx.writer.close()
        return anyio.run(go)


@pytest.mark.parametrize("exit_by", ["cancelled", "exception"])
def test_a_reservation_the_run_leaves_is_released_and_its_waiter_wakes(tmp_path, write, exit_by):
    async def body(ctx, ledger, manifest, jobs):
        got: list[Reservation | None] = []
        async with anyio.create_task_group() as tg:
            with anyio.CancelScope() as scope:
                with pytest.raises(KeyError) if exit_by == "exception" else _nothing():
                    async with ctx.reserve(Decimal(60)) as r:
                        assert r is not None and ctx.budget.reservations == 1
                        tg.start_soon(_waiter, ctx, 41, got)
                        await anyio.wait_all_tasks_blocked()
                        assert not got  # 60 + 41 > 100: waits for room
                        if exit_by == "cancelled":
                            scope.cancel()
                            await anyio.sleep(5)
                        raise KeyError("boom")
        b = ctx.budget
        assert (b.committed, b.reserved, b.reservations, r.ended) == (0, 0, 0, "released")
        assert len(got) == 1 and got[0] is not None and got[0].estimate == 41  # woke, and had room
    _in_run(tmp_path, write, body)


def test_a_stop_wakes_a_waiter_with_no_reservation(tmp_path, write):
    async def body(ctx, ledger, manifest, jobs):
        got: list[Reservation | None] = []
        async with ctx.reserve(Decimal(60)), anyio.create_task_group() as tg:
            tg.start_soon(_waiter, ctx, 41, got)
            await anyio.wait_all_tasks_blocked()
            ctx.state.stop(StopReason.INTERRUPTED, "stopped")
        assert got == [None] and ctx.budget.reservations == 0
    _in_run(tmp_path, write, body)


def test_a_paused_batch_reserves_nothing_until_it_resumes(tmp_path, write):
    async def body(ctx, ledger, manifest, jobs):
        got: list[Reservation | None] = []
        ctx.state.control = Control.PAUSED
        async with anyio.create_task_group() as tg:
            tg.start_soon(_waiter, ctx, 10, got)
            await anyio.wait_all_tasks_blocked()
            assert not got and ctx.budget.reservations == 0
            assert ctx.state.obey(Control.RUNNING) is Control.PAUSED
        assert len(got) == 1 and got[0] is not None and ctx.budget.reservations == 0
    _in_run(tmp_path, write, body)


# --- each answer of a submission -----------------------------------------------------------------------

async def _submit_beside_a_waiter(ctx: RunContext, job, wire) -> tuple[Submitted, list[Reservation | None]]:
    """Submit `job` under a reservation of 60 while another submission waits for 41 of the 100."""
    got: list[Reservation | None] = []
    async with anyio.create_task_group() as tg, ctx.reserve(Decimal(60)) as r:
        assert r is not None
        tg.start_soon(_waiter, ctx, 41, got)
        await anyio.wait_all_tasks_blocked()
        assert not got
        outcome, _, _ = await submit_once(ctx, job, wire, r)
        await anyio.wait_all_tasks_blocked()
        assert len(got) == 1 and ctx.budget.reservations == 0  # ended before the block: the waiter woke
    return outcome, got


@pytest.mark.parametrize("answer", ["accepted", "not sent", "refused", "held"])
def test_every_answer_ends_the_reservation_and_wakes_a_waiter(tmp_path, write, answer):
    config = {"accepted": SimConfig(), "refused": SimConfig(),
              "not sent": SimConfig(refuse_rate=1.0, fault_routes=("run",)),
              "held": SimConfig(lost_answer_rate=1.0, fault_routes=("run",))}[answer]

    async def body(ctx, ledger, manifest, jobs):
        [job] = jobs
        wire = manifest.model.to_wire(job.parameters())
        if answer == "refused":
            wire = {**wire, "duration": 999}  # the API refuses it (4xx): nothing charged
        outcome, got = await _submit_beside_a_waiter(ctx, job, wire)
        return outcome, got, ctx.budget, ledger.spend(manifest.batch).committed

    outcome, got, b, ledger_committed = _in_run(tmp_path, write, body, config)
    expected = {"accepted": Submitted.ACCEPTED, "not sent": Submitted.NOT_SENT, "refused": Submitted.FAILED,
                "held": Submitted.HELD}[answer]
    assert outcome is expected
    assert b.reserved == 0 and b.reservations == 0
    assert len(got) == 1  # the waiter woke
    if answer == "accepted":
        assert 0 < b.committed < 60 and b.committed == ledger_committed  # the charge, as the ledger has it
        assert got[0] is not None  # and found room
    elif answer == "held":
        assert b.committed == 60 == ledger_committed  # may have been charged: held at its estimate
        assert got[0] is None  # no room left, and nothing in flight to free some
    else:
        assert b.committed == 0 == ledger_committed and got[0] is not None


def test_a_reservation_the_ledger_refuses_takes_its_total_and_wakes_a_waiter(tmp_path, write):
    async def body(ctx, ledger, manifest, jobs):
        mine, others = jobs
        # Another runner of the batch reserved 50 of the budget they share: the ledger says no to our 60.
        ledger.write(ledger.begin_submission(others.id, JobState.PENDING, Decimal(50), token=others.lease_token,
                                             batch=manifest.batch, budget=Decimal(100)))
        outcome, got = await _submit_beside_a_waiter(ctx, mine, manifest.model.to_wire(mine.parameters()))
        return outcome, got, ctx.budget

    outcome, got, b = _in_run(tmp_path, write, body, rows=2)
    assert outcome is Submitted.BUDGET
    assert (b.committed, b.reserved, b.reservations) == (50, 0, 0)
    assert len(got) == 1 and got[0] is not None  # woke, and 50 + 41 fits


def test_an_intent_the_ledger_cannot_write_releases_the_reservation(tmp_path, write):
    async def body(ctx, ledger, manifest, jobs):
        [mine] = jobs
        ledger.write(lambda conn: conn.exec_driver_sql("UPDATE job SET lease_until = 0"))  # our lease ran out
        ledger.write(ledger.claim(manifest.batch, [JobState.PENDING], "b:2:y", 60, 1))  # another runner took the job
        got: list[Reservation | None] = []
        async with anyio.create_task_group() as tg:
            with pytest.raises(LeaseLost):
                async with ctx.reserve(Decimal(60)) as r:
                    tg.start_soon(_waiter, ctx, 41, got)
                    await anyio.wait_all_tasks_blocked()
                    await submit_once(ctx, mine, manifest.model.to_wire(mine.parameters()), r)
        return got, ctx.budget, r

    got, b, r = _in_run(tmp_path, write, body)
    assert (b.committed, b.reserved, b.reservations, r.ended) == (0, 0, 0, "released")
    assert len(got) == 1 and got[0] is not None
