"""The Python API, dataset export and per-row status: one code path with the CLI."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from click.testing import CliRunner

from batcher import api
from batcher.cli import cli

from .conftest import MANIFESTS, small_manifest


def test_blocking_run_plan_status_and_exports(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    manifest = api.load(MANIFESTS / "demo.yaml")
    assert api.plan(manifest).jobs == 12
    report = api.run(manifest, ledger=tmp_path / "l.db", simulate=True, concurrency=6)
    assert report.exit_code == 0 and report.counts["completed"] == 12
    info = api.status(tmp_path / "l.db", manifest.batch)
    assert info["counts"]["completed"] == 12 and info["videos"] == 12
    records = api.export_records(tmp_path / "l.db", manifest.batch)
    assert len(records) == 12 and all(r["sha256"] and r["file"] for r in records)
    assert api.report(tmp_path / "l.db", manifest.batch, tmp_path / "r.html") == 12


def test_videofolder_export_and_update(simrun, write, tmp_path):
    manifest = write("m.yaml", small_manifest(4))
    from batcher.simulator import SimConfig
    report, sim, ledger = simrun(manifest, config=SimConfig(render_seconds=0.02, fail_rate=0.3, seed=2),
                                 max_attempts=1)
    done = report.counts["completed"]
    assert 1 <= done < 4
    out = tmp_path / "ds"
    r = api.export_dataset(ledger, "small", out, include_failed=True)
    assert r.videos == done and r.linked == done
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == done
    for row in rows:
        path = out / row["file_name"]
        assert path.exists() and row["prompt"].startswith("shot number") and row["model"] == "happyhorse-1.0-r2v"
        assert row["remote_job_id"] and row["credit_cost"] == 20 and re.search(r"m\.yaml:\d+$", row["origin"])
        assert os.stat(path).st_nlink >= 2  # a hard link, not a copy
    failed = [json.loads(line) for line in (out / "not_completed.jsonl").read_text().splitlines()]
    assert len(failed) == 4 - done and all(f["error"] for f in failed)
    # retry the failures, export again: updated, no duplicates
    sim.config.fail_rate = 0.0
    from batcher.ledger import Ledger
    from batcher.states import JobState
    with Ledger(ledger) as led:
        led.write(led.requeue("small", [JobState.FAILED], "test"))
    simrun(manifest, simulator=sim, ledger=ledger)
    r2 = api.export_dataset(ledger, "small", out)
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert r2.videos == 4 and r2.unchanged == done and len(rows) == 4
    assert len({r["file_name"] for r in rows}) == 4


def test_videofolder_skips_tampered_files(simrun, write, tmp_path):
    _report, _, ledger = simrun(write("m.yaml", small_manifest(2)))
    files = sorted((tmp_path / "out").glob("*.mp4"))
    files[0].write_bytes(files[0].read_bytes() + b"tampered")
    r = api.export_dataset(ledger, "small", tmp_path / "ds")
    assert r.videos == 1 and len(r.unverified) == 1


def test_the_api_exports_a_linked_dataset_and_presigns_as_the_command_does(simrun, write, tmp_path):
    import pytest

    from batcher.errors import UsageError
    _report, _, ledger = simrun(write("m.yaml", small_manifest(3)))
    clips = sorted(str(p) for p in (tmp_path / "out").glob("*.mp4"))
    r = api.export_dataset(ledger, "small", tmp_path / "ds", link=True, presign="1h")
    rows = [json.loads(line) for line in (tmp_path / "ds" / "metadata.jsonl").read_text().splitlines()]
    assert r.listed == r.videos == 3 and not list((tmp_path / "ds").rglob("*.mp4"))  # named, not written
    assert sorted(str(Path(row["file"]).resolve()) for row in rows) == [str(Path(c).resolve()) for c in clips]
    assert all(row.get("url") is None for row in rows)  # (local clips: no store to sign a URL for)
    with pytest.raises(UsageError, match="link"):
        api.export_dataset(ledger, "small", tmp_path / "ds2", presign="1h")
    with pytest.raises(UsageError, match="between 1 minute and 7 days"):
        api.report(ledger, "small", tmp_path / "r.html", presign="30d")
    assert api.report(ledger, "small", tmp_path / "r.html", presign="2h") == 3


def test_status_rows_and_job_history_cli(simrun, write, tmp_path):
    manifest = write("m.yaml", small_manifest(3, repeat=2))
    _report, _, ledger = simrun(manifest)
    runner = CliRunner()
    out = runner.invoke(cli, ["status", str(manifest), "--ledger", str(ledger), "--rows", "--json"])
    rows = json.loads(out.output)
    assert [r["counts"] for r in rows] == [{"completed": 2}] * 3
    assert rows[0]["origin"].endswith("m.yaml:9")
    from batcher.ledger import Ledger
    with Ledger(ledger) as led:
        key = next(led.iter_batch("small")).key
    out = runner.invoke(cli, ["status", "--ledger", str(ledger), "--job", key[:8]])
    assert out.exit_code == 0
    kinds = [line.split()[1] for line in out.output.splitlines()[2:]]
    assert kinds == ["submit-intent", "accepted", "rendered", "downloaded"]
    data = json.loads(runner.invoke(cli, ["status", str(manifest), "--ledger", str(ledger), "--json"]).output)
    assert data["counts"]["completed"] == 6 and data["credits_spent"] == 120


def test_budget_zero_stages_and_exits_3(tmp_path):
    manifest = tmp_path / "m.yaml"
    manifest.write_text(small_manifest(5))
    out = CliRunner().invoke(cli, ["run", str(manifest), "--simulate", "--budget", "0", "--ledger",
                                   str(tmp_path / "l.db"), "--out", str(tmp_path / "o")])
    assert out.exit_code == 3
    data = json.loads(CliRunner().invoke(cli, ["status", "--ledger", str(tmp_path / "l.db"), "--json"]).output)
    assert data["counts"]["pending"] == 5 and data["credits_spent"] == 0
    assert Path(tmp_path / "o").exists()
