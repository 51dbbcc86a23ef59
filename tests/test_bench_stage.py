"""`batcher bench stage` on a tiny size: every figure it prints is measured, whole process."""
from __future__ import annotations

from batcher.bench.stage import RUN_TARGET, STARTUP_TARGET, section


def test_the_stage_section_measures_run_beside_plan_status_and_start_up(tmp_path):
    figures, lines = section(300, 400, runs=1, run_runs=2)
    assert figures["added"] == 300 and figures["jobs"] == 300
    r, u = figures["run_beside_plan"], figures["startup"]
    assert r["jobs"] == 400 and r["run_seconds"] > 0 and r["plan_seconds"] > 0
    assert r["ratio"] == r["run_seconds"] / r["plan_seconds"] and r["target"] == RUN_TARGET
    assert u["ratio"] == u["version_seconds"] / u["imports_seconds"] and u["target"] == STARTUP_TARGET
    assert figures["status_cli_seconds"] > 0 and figures["plan_cli_seconds"] > 0
    f = r["floor"]
    assert f["rows"] == 400  # counted in the copy the floor inserted, not taken from the run's ledger
    # the floor's insert taken in turn with each run and plan
    assert r["runs"] == len(r["run_each"]) == len(r["plan_each"]) == len(f["insert_each"]) == 2
    t = r["tuned_floor"]  # the same insert with the ledger's page settings, beside it
    assert len(t["insert_each"]) == 2 and t["seconds"] == r["plan_seconds"] + t["insert_seconds"] + f["imports_seconds"]
    assert t["run_ratio"] == r["run_seconds"] / t["seconds"]
    assert f"{t['run_ratio']:.2f} x that floor" in "\n".join(lines)
    assert 0 < f["imports_seconds"] < r["run_seconds"]
    assert f["seconds"] == r["plan_seconds"] + f["insert_seconds"] + f["imports_seconds"]
    assert r["floor_ratio"] == r["run_seconds"] / f["seconds"] and RUN_TARGET == 1.2
    text = "\n".join(lines)
    assert f"least ratio {f['least_ratio']:.2f}" in text
    assert "batcher run --budget 0 on 400 jobs" in text and f"ratio {r['ratio']:.2f}" in text
    assert "batcher --version" in text and "within 1.2 x the floor: " in text and "target <= 2" in text
    assert f"{r['floor_ratio']:.2f} x the floor" in text and f"= {f['seconds']:.2f}s" in text
