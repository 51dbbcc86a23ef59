"""Orphans: jobs no row of the current manifest produces after an edit (a prompt fixed, a seed list
shortened, a row removed, a reference changed) are counted apart, left out of watch, exports and
the gallery, never submitted, and pruned (paid ones kept and marked); `batches` and `--batch`."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from sqlalchemy import text

from batcher.cli import cli
from batcher.launch import stage
from batcher.ledger import Ledger
from batcher.manifest import load_manifest
from batcher.states import JobState

BATCH = "edits"


def manifest(rows: str) -> str:
    return (f"version: 1\nbatch: {BATCH}\ndefaults:\n  duration: 5\n  resolution: 720p\n"
            "reference_sets:\n  hero: [https://example.com/hero.png]\n  villain: [https://example.com/villain.png]\n"
            f"rows:\n{rows}")


# Four rows; each edit below changes one of them.
FIRST = manifest("  - {name: storm, prompt: 'heavy raim falls', references: hero}\n"
                 "  - {name: seeds, prompt: 'a walk', references: hero, seeds: [1, 2, 3]}\n"
                 "  - {name: gone, prompt: 'a row removed later', references: hero}\n"
                 "  - {name: ref, prompt: 'a face', references: hero}\n")
EDITED = manifest("  - {name: storm, prompt: 'heavy rain falls', references: hero}\n"
                  "  - {name: seeds, prompt: 'a walk', references: hero, seeds: [1]}\n"
                  "  - {name: ref, prompt: 'a face', references: villain}\n")


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def test_every_kind_of_edit_orphans_the_jobs_it_replaced(simrun, tmp_path: Path, ledger_url: str) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(FIRST)
    report, _, _ = simrun(path, ledger=ledger_url)
    assert report.counts["completed"] == 6
    path.write_text(EDITED)
    with Ledger(ledger_url) as led:
        stage(led, load_manifest(path), simulated=True)
        orphans = led.orphans(BATCH)
        # the misspelt prompt, two seeds, the removed row, the old reference: all paid (completed)
        assert orphans.counts == {"completed": 5} and orphans.paid == 5
        assert sorted(r.label for r in orphans.rows) == ["gone", "ref", "seeds", "storm"]
        assert {r.label: r.jobs for r in orphans.rows}["seeds"] == 2
        f = led.figures(BATCH)
        assert f.orphans == 5 and f.counts["completed"] == 1 and f.counts["pending"] == 2
        assert led.fleet(BATCH).left == 2  # watch: what is left is the current manifest's
        keys = {j.key for j in led.iter_batch(BATCH, orphans=False)}
        assert len(keys) == 3 and len(list(led.iter_batch(BATCH))) == 8

    code, out = invoke("status", str(path), "--ledger", ledger_url)
    assert code == 0 and "3 job(s): 1 completed, 2 pending" in out and "orphans: 5 job(s)" in out
    assert "gone" in out and "storm" in out
    code, out = invoke("status", "--batch", BATCH, "--ledger", ledger_url, "--json")
    data = json.loads(out)
    assert data["orphans"] == 5 and data["orphan_jobs"]["paid"] == 5 and data["jobs"] == 3
    code, out = invoke("status", "--batch", BATCH, "--rows", "--ledger", ledger_url)
    assert "heavy raim" not in out and "orphans: 5" in out

    code, out = invoke("export", "--batch", BATCH, "--ledger", ledger_url)
    assert code == 0 and len(out.splitlines()) == 3
    code, out = invoke("export", "--ledger", ledger_url, "--format", "csv")  # every batch of the ledger
    assert code == 0 and len(out.splitlines()) == 1 + 3
    code, out = invoke("export", str(path), "--ledger", ledger_url, "--include-orphans")
    assert len(out.splitlines()) == 8 and "heavy raim" in out

    # paid orphans are never dropped, even with --forget: kept, marked, and said so
    code, out = invoke("prune", str(path), "--ledger", ledger_url, "--forget")
    assert code == 0 and "0 unpaid orphan(s) removed; 5 paid orphan(s) kept (5 completed)" in out
    with Ledger(ledger_url) as led:
        assert led.orphans(BATCH).jobs == 5
        marked = [j for j in led.iter_batch(BATCH) if any(e.kind == "orphaned" for e in led.events(j.id))]
        assert len(marked) == 5


def test_unpaid_orphans_are_cancelled_then_forgotten_and_never_submitted(simrun, tmp_path: Path,
                                                                          ledger_url: str) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(FIRST)
    with Ledger(ledger_url) as led:
        stage(led, load_manifest(path), simulated=True)  # staged by a run that never sent anything
    path.write_text(EDITED)
    code, out = invoke("prune", str(path), "--ledger", ledger_url)  # stages the edited manifest first
    assert code == 0 and "batch 'edits': 5 pending orphan(s) cancelled" in out
    with Ledger(ledger_url) as led:
        assert led.orphans(BATCH).counts == {"cancelled": 5}
        assert led.figures(BATCH).counts["pending"] == 3
    # `resume` of a cancelled batch puts them back to pending: still no run sends them
    with Ledger(ledger_url) as led:
        for job in led.iter_batch(BATCH):
            if job.state == "cancelled":
                led.write(led.move(job.id, JobState.CANCELLED, JobState.PENDING, "resumed", "test"))
    report, _, _ = simrun(path, ledger=ledger_url)
    assert report.counts["completed"] == 3
    with Ledger(ledger_url) as led:
        prompts = {j.parameters()["prompt"] for j in led.iter_batch(BATCH) if j.state == "completed"}
    assert "heavy raim falls" not in prompts and "a row removed later" not in prompts
    code, out = invoke("prune", "--batch", BATCH, "--ledger", ledger_url, "--forget", "--json")
    assert json.loads(out) == {"batch": BATCH, "cancelled": 0, "forgotten": 5, "kept_paid": 0, "kept": {}}
    with Ledger(ledger_url) as led:
        assert len(list(led.iter_batch(BATCH))) == 3 and led.orphans(BATCH).jobs == 0


def test_batches_lists_each_batch_and_a_command_needing_one_names_them(simrun, tmp_path: Path) -> None:
    ledger = str(tmp_path / "l.db")
    path = tmp_path / "m.yaml"
    path.write_text(FIRST)
    simrun(path, ledger=ledger)
    other = tmp_path / "o.yaml"
    other.write_text(FIRST.replace(f"batch: {BATCH}", "batch: second"))
    with Ledger(ledger) as led:
        stage(led, load_manifest(other), simulated=True)
    code, out = invoke("batches", "--ledger", ledger, "--json")
    listed = {b["name"]: b for b in json.loads(out)}
    assert listed[BATCH]["counts"] == {"completed": 6} and listed["second"]["counts"] == {"pending": 6}
    assert listed[BATCH]["credits_spent"] > 0 and listed["second"]["control"] == "running"
    code, out = invoke("batches", "--ledger", ledger)
    assert code == 0 and out.startswith(f"{BATCH}  ") and "6 completed" in out
    code, out = invoke("report", "--ledger", ledger, "-o", str(tmp_path / "r.html"))
    assert code == 2 and f"2 batches ({BATCH}, second)" in out
    code, out = invoke("report", "--batch", "second", "--ledger", ledger, "-o", str(tmp_path / "r.html"))
    assert code == 0


def test_plan_counts_the_ledgers_jobs_this_manifest_does_not_produce(simrun, tmp_path: Path) -> None:
    ledger = str(tmp_path / "l.db")
    path = tmp_path / "m.yaml"
    path.write_text(FIRST)
    simrun(path, ledger=ledger)
    path.write_text(EDITED)
    code, out = invoke("plan", str(path), "--ledger", ledger, "--json")
    led = json.loads(out)["ledger"]
    assert code == 0 and led["in_ledger"] == 1 and led["to_run"]["jobs"] == 2
    assert led["orphans"]["jobs"] == 5 and led["orphans"]["paid"] == 5
    assert {r["label"]: sum(r["counts"].values()) for r in led["orphans"]["rows"]} == {
        "storm": 1, "seeds": 2, "gone": 1, "ref": 1}
    code, out = invoke("plan", str(path), "--ledger", ledger)
    assert "orphans: 5 job(s) no row of the current manifest produces (5 completed), not in this plan" in out
    path.write_text(FIRST)
    code, out = invoke("plan", str(path), "--ledger", ledger, "--json")
    assert "orphans" not in json.loads(out)["ledger"]


def test_an_older_ledger_takes_its_orphans_from_the_generation_of_its_latest_staging(tmp_path: Path) -> None:
    import sqlite3
    path = tmp_path / "old.db"
    m = tmp_path / "m.yaml"
    m.write_text(FIRST)
    with Ledger(path) as led:
        stage(led, load_manifest(m))
        m.write_text(EDITED)
        stage(led, load_manifest(m))
    conn = sqlite3.connect(path)  # as version 14 left it: no mark, only the generations
    for table in ("job", "batch"):
        conn.execute(f"ALTER TABLE {table} DROP COLUMN manifest_generation")
    conn.execute("DELETE FROM schema_migrations WHERE version = 15")
    conn.commit()
    conn.close()
    with Ledger(path) as led:
        assert led.schema_version() == 15
        assert led.orphans(BATCH).counts == {"pending": 5}
        assert led.figures(BATCH).counts["pending"] == 3


def test_a_run_after_an_edit_counts_the_current_manifest_only(simrun, tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(FIRST)
    first, sim, ledger = simrun(path)
    path.write_text(EDITED)
    again, _, _ = simrun(path, simulator=sim, ledger=ledger)
    assert sum(first.counts.values()) == 6
    assert again.counts["completed"] == 3 and sum(again.counts.values()) == 3 and again.total == 3


def test_retry_requeues_the_current_manifests_jobs_only(tmp_path: Path, ledger_url: str) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(FIRST)
    with Ledger(ledger_url) as led:
        stage(led, load_manifest(path))
        for job in led.iter_batch(BATCH):  # every job failed, never charged
            led.write(lambda conn, i=job.id: led.x(conn, "UPDATE job SET state = 'failed' WHERE id = :i", {"i": i}))
        path.write_text(EDITED)
        staged = stage(led, load_manifest(path))
        # the staging counts the orphans it left, as the ledger counts them after it
        assert staged.orphans == led.orphan_jobs(BATCH) == 5 and staged.known == 1
        assert led.write(led.requeue(BATCH, [JobState.FAILED], "test")) == 1  # 'a walk', seed 1: the one kept
        assert led.orphans(BATCH).counts == {"failed": 5}


def test_a_job_claimed_before_an_edit_orphaned_it_is_never_sent(tmp_path: Path, ledger_url: str) -> None:
    from decimal import Decimal

    import pytest

    from batcher.errors import LeaseLost
    path = tmp_path / "m.yaml"
    path.write_text(FIRST)
    with Ledger(ledger_url) as led:
        stage(led, load_manifest(path))
        claimed = led.write(led.claim(BATCH, [JobState.PENDING], "host:1:a", 60, 10))
        assert len(claimed) == 6
        path.write_text(EDITED)
        stage(led, load_manifest(path))  # another runner stages the edited manifest
        orphan = next(j for j in claimed if j.parameters()["prompt"] == "heavy raim falls")
        with pytest.raises(LeaseLost):
            led.write(led.begin_submission(orphan.id, JobState.PENDING, Decimal(1), token=orphan.lease_token))
        again = led.write(led.claim(BATCH, [JobState.PENDING], "host:2:b", 60, 10))
        assert {j.parameters()["prompt"] for j in again} == {"heavy rain falls", "a face"}


def test_a_rerun_after_an_edit_says_what_it_leaves_and_sends(tmp_path: Path) -> None:
    ledger = str(tmp_path / "l.db")
    path = tmp_path / "m.yaml"
    path.write_text(FIRST)
    common = ["--simulate", "--ledger", ledger, "--sim-render-seconds", "0.05", "--out", str(tmp_path / "out")]
    assert invoke("run", str(path), *common)[0] == 0
    path.write_text(EDITED)
    code, out = invoke("run", str(path), *common)
    assert code == 0 and "sends 2 pending, holds 0; 1 already completed" in out
    assert "5 job(s) of the ledger no row of the manifest produces any more (orphans): never sent" in out
    assert "3 completed (of 3)" in out


def test_figures_count_in_one_pass_what_counts_and_orphan_jobs_count(tmp_path: Path, ledger_url: str) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(FIRST)
    with Ledger(ledger_url) as led:
        stage(led, load_manifest(path))
        jobs = list(led.iter_batch(BATCH))
        # not pending: one job the edit orphans (the misspelt prompt's), one it keeps (seed 1's)
        failed = {name: next(j.id for j in jobs if j.label == name) for name in ("storm", "seeds")}
        with led.engine.begin() as conn:
            conn.execute(text("UPDATE job SET state = 'failed' WHERE id IN (:storm, :seeds)"), failed)
        path.write_text(EDITED)
        stage(led, load_manifest(path))  # a new generation: the edit's jobs; the replaced ones orphans
        generation = led.generation(BATCH)
        for gen, model in ((None, None), (generation, None), (generation - 1, None), (None, "no-such-model")):
            f = led.figures(BATCH, gen, model=model)
            assert f.counts == led.counts(BATCH, gen, model=model, orphans=False)
            assert f.orphans == led.orphan_jobs(BATCH, model=model)
        now, before = led.figures(BATCH), led.figures(BATCH, generation - 1)
        assert (now.orphans, now.counts["pending"], now.counts["failed"]) == (5, 2, 1)
        assert (before.orphans, before.counts["pending"], before.counts["failed"]) == (5, 0, 1)
