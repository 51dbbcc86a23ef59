"""What confused a newcomer in the first hour: each message and screen they met, as it reads now."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from batcher.errors import LedgerError
from batcher.ledger import Ledger

from .conftest import MANIFESTS, small_manifest


def cli(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in ("BATCHER_LEDGER", "PIXELDOJO_API_KEY")}
    full.update(env)
    return subprocess.run([sys.executable, "-m", "batcher", *args], cwd=cwd, env=full, capture_output=True,
                          text=True, timeout=120)


def test_a_postgres_ledger_without_its_driver_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if the extra were not installed
    with pytest.raises(LedgerError) as caught:
        Ledger("postgresql+psycopg://me:secret@127.0.0.1/db")
    message = str(caught.value)
    assert "pip install 'batcher[postgres]'" in message and "secret" not in message


def test_a_rate_for_a_resolution_the_model_lacks_is_refused(tmp_path):
    done = cli(["plan", str(MANIFESTS / "demo.yaml"), "--rate", "4k=3"], tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "batcher: --rate 4k=3: happyhorse-1.0-r2v has no resolution '4k' (it has 720p, 1080p)"]
    assert cli(["plan", str(MANIFESTS / "demo.yaml"), "--rate", "1080p=-1"], tmp_path).returncode == 2


def test_status_after_the_demo_names_the_simulated_ledger(tmp_path):
    (tmp_path / "m.yaml").write_text(small_manifest(n_rows=1))
    assert cli(["run", "m.yaml", "--simulate", "--sim-render-seconds", "0.02"], tmp_path).returncode == 0
    done = cli(["status", "m.yaml"], tmp_path)
    assert done.returncode == 2
    assert "no ledger at batcher.db" in done.stderr and "--ledger batcher-sim.db" in done.stderr
    # a real ledger that lacks the batch, beside a simulated one that has it
    Ledger(tmp_path / "batcher.db").close()
    done = cli(["status", "m.yaml"], tmp_path)
    assert done.returncode == 2 and "not in the ledger batcher.db" in done.stderr
    assert "--ledger batcher-sim.db" in done.stderr


# --- the run, on screen ---------------------------------------------------------------------------

def _progress(**kw):
    from batcher.run import Progress
    base = dict(batch="knight-and-mare", counts={"completed": 30, "submitted": 4, "pending": 24, "failed": 1,
                                                  "unknown": 1}, spent=640.0, reserved=80.0, budget=1000.0,
                elapsed=30.0, completed_this_run=30, total=60, covered=None)
    base.update(kw)
    return Progress(**base)


@pytest.mark.parametrize("width", [40, 80, 160])
def test_the_progress_line_fits_the_terminal_and_shows_a_bar(width):
    from batcher.views import progress_line
    line = progress_line(_progress(), width)
    assert len(line) <= width - 1 and "\n" not in line
    assert line.startswith("[#") and "30/60" in line
    if width >= 80:
        assert "640/1,000 cr" in line and "ETA" in line
    if width >= 160:
        assert "4 rendering" in line and "/min" in line


def test_the_live_display_redraws_in_place_at_the_terminal_width():
    import io

    from batcher.views import ProgressPrinter
    stream = io.StringIO()
    printer = ProgressPrinter(stream, live=True, width=80)
    for done in (10, 20, 30):
        printer(_progress(counts={"completed": done, "pending": 60 - done}, completed_this_run=done))
    printer.end()
    text = stream.getvalue()
    assert "\n" not in text and text.count("\r\x1b[2K") == 4
    assert all(len(chunk) <= 79 for chunk in text.split("\r\x1b[2K"))


def test_eta_counts_only_the_jobs_the_budget_covers():
    from batcher.views import progress_line
    line = progress_line(_progress(counts={"completed": 40, "submitted": 2, "pending": 18}, completed_this_run=40,
                                   elapsed=40.0, covered=50), 160)
    # 10 jobs left that the budget covers, at one a second: 10 s, not the 20 s of the whole plan
    assert "ETA 10s (budget stops at ~50 of 60)" in line


def test_run_says_before_spending_how_far_the_budget_goes_and_summarises_on_stdout(tmp_path):
    (tmp_path / "m.yaml").write_text(small_manifest(n_rows=6))  # 6 jobs of 20 credits
    done = cli(["run", "m.yaml", "--simulate", "--sim-render-seconds", "0.02", "--budget", "70"], tmp_path)
    assert done.returncode == 3
    assert "budget 70 covers about 3 of 6 jobs (estimate 120)" in done.stderr
    assert "batch 'small': 3 completed, 3 pending" in done.stdout and "budget reached" in done.stdout
    as_json = cli(["run", "m.yaml", "--simulate", "--sim-render-seconds", "0.02", "--budget", "70", "--json"],
                  tmp_path)
    import json
    data = json.loads(as_json.stdout)
    assert data["exit_code"] == 3 and data["counts"]["completed"] == 3 and data["simulated"] is True


def test_the_summary_groups_failures_by_reason_and_prints_the_retry_command(tmp_path):
    (tmp_path / "m.yaml").write_text(small_manifest(n_rows=8))
    done = cli(["run", "m.yaml", "--simulate", "--sim-render-seconds", "0.02", "--sim-fail-rate", "1",
                "--max-attempts", "1"], tmp_path)
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert "failed (8), by reason:" in lines
    assert any(line.startswith("  8 x Generation failed: upstream model error (e.g. ") for line in lines)
    assert "batcher retry --failed m.yaml --simulate" in done.stdout


def test_plan_lists_every_job_and_estimates_the_wall_time(tmp_path):
    import json
    done = cli(["plan", str(MANIFESTS / "demo.yaml"), "--jobs", "-c", "4"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "wall time at --concurrency 4: about 4m30s" in done.stdout  # 12 jobs: 3 waves of 90 s
    assert "'The mare trots across a meadow'" in done.stdout  # the prompt after templating
    data = json.loads(cli(["plan", str(MANIFESTS / "demo.yaml"), "--jobs", "--json", "-c", "12"], tmp_path).stdout)
    assert len(data["job_list"]) == data["jobs"] == 12
    assert data["wall_time"]["seconds"] == 90
    job = data["job_list"][3]
    assert {"key", "label", "take", "prompt", "parameters", "estimate"} <= set(job)
    assert "{" not in job["prompt"]


def test_status_rows_shows_each_rows_label_and_prompt(tmp_path):
    done = cli(["run", str(MANIFESTS / "demo.yaml"), "--simulate", "--sim-render-seconds", "0.02"], tmp_path)
    assert done.returncode == 0, done.stderr
    rows = cli(["status", str(MANIFESTS / "demo.yaml"), "--ledger", "batcher-sim.db", "--rows"], tmp_path).stdout
    assert 'closeup "Close-up of the knight and the mare": 1 completed' in rows
    assert 'row0001 "The knight rides through falling snow": 3 completed' in rows
