"""A runner whose claim finds the batch's pending jobs held by another runner's staging (its
transaction not yet committed: PostgreSQL's claims skip locked rows) waits for that staging
instead of ending with work left (seen in `batcher bench shared`: one of four runners ended
after 40 of 2,000 jobs, exit 1)."""
from __future__ import annotations

import threading
import time

import anyio
import pytest
import sqlalchemy

from batcher import api
from batcher.ledger import Ledger
from batcher.manifest import load_manifest
from batcher.run import RunOptions
from batcher.simulator import SimConfig, Simulator

from .conftest import small_manifest


def hold_rows(url: str, batch: str, started: threading.Event, hold: float) -> None:
    """What another runner's `batcher run` does to the batch's job rows while it stages the
    manifest again: holds them (row locks) until its transaction commits, `hold` seconds later."""
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text("SELECT id FROM job WHERE batch = :b FOR UPDATE"), {"b": batch})
            started.set()
            time.sleep(hold)
    finally:
        engine.dispose()


def test_a_runner_waits_for_another_runners_staging_instead_of_ending(ledger_url, write, tmp_path):
    if "://" not in ledger_url:
        pytest.skip("SQLite: a claim waits for the write lock another runner's staging holds; it skips nothing")
    manifest = load_manifest(write("m.yaml", small_manifest(n_rows=6)))
    with Ledger(ledger_url) as ledger:
        api.stage(ledger, manifest)
    started = threading.Event()
    other = threading.Thread(target=hold_rows, args=(ledger_url, manifest.batch, started, 1.5))
    other.start()
    try:
        assert started.wait(10)
        sim = Simulator(SimConfig(render_seconds=0.05))
        options = RunOptions.of(concurrency=3, out_dir=tmp_path / "out", expected_render=0.05, seed=1)
        with Ledger(ledger_url) as ledger:
            report = anyio.run(lambda: api.run_async(manifest, ledger=ledger, options=options,
                                                     to=api.target(simulate=sim), stage_jobs=False))
    finally:
        other.join(30)
    assert report.counts.get("completed") == 6, report.counts  # before: it ended at once, all 6 left pending
    assert len(sim.record()["jobs"]) == 6
