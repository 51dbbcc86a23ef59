"""What still surprised a newcomer in their second hour (issue 27): local images judged offline,
`vary:` suggestions, `plan` on a batch the ledger holds, the demo's files, `export`'s one output
option, and the suite's skips."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from batcher.cli import cli
from batcher.ledger import Ledger
from batcher.simulator import png_image

from .conftest import REPO, small_manifest

# --- 5: local images judged offline, before anything is staged --------------------------------

def bad_images_manifest(tmp_path: Path) -> Path:
    """A 200x150 PNG, a text file named .png, a good image, and a reference that is no http URL."""
    refs = tmp_path / "refs"
    refs.mkdir()
    (refs / "good.png").write_bytes(png_image(512, 512))
    (refs / "small.png").write_bytes(png_image(200, 150))
    (refs / "words.png").write_text("just some words, no picture")
    path = tmp_path / "m.yaml"
    path.write_text("version: 1\nbatch: refs\nrows:\n  - prompt: a\n    references: refs\n"
                    "  - prompt: b\n    references: [ftp://example.com/x.png]\n")
    return path


def test_offline_validate_refuses_a_small_png_and_text_named_png_with_the_url_problem_in_one_refusal(tmp_path):
    path = bad_images_manifest(tmp_path)
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert f"{path}:5: reference refs/small.png: PNG of 200x150, shortest side under the 400 pixels the model " \
           "needs" in lines
    assert f"{path}:5: reference refs/words.png: not a JPEG, PNG or WEBP image (starts with 'just some words,')" \
        in lines
    assert any(line.startswith(f"{path}:7:") and "ftp://example.com/x.png" in line for line in lines), lines
    assert not any("good.png" in line for line in lines)


def test_a_run_refuses_bad_local_images_before_anything_is_staged(tmp_path):
    path = bad_images_manifest(tmp_path)
    ledger = tmp_path / "l.db"
    Ledger(ledger).close()
    result = CliRunner().invoke(cli, ["run", str(path), "--simulate", "--ledger", str(ledger),
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "refs/small.png: PNG of 200x150" in result.stderr
    with Ledger(ledger) as led:
        assert led.batches() == []  # nothing staged
    assert not (tmp_path / "out").exists()


def test_an_image_over_the_size_limit_is_refused_by_its_size_before_it_is_hashed(tmp_path):
    from batcher.references import MAX_BYTES, resolve_local
    big = tmp_path / "big.jpg"
    big.write_bytes(png_image(512, 512) + b"\0" * MAX_BYTES)  # a PNG named .jpg: the bytes decide
    files, problems = resolve_local("big.jpg", tmp_path, "m.yaml:3")
    assert files == [] and problems == ["reference big.jpg: PNG of 10.0 MB, over the 10.0 MB the model accepts"]


def test_offline_validate_says_it_read_the_local_images():
    result = CliRunner().invoke(cli, ["validate", str(REPO / "manifests" / "demo.yaml")])
    assert result.exit_code == 0, result.output
    assert ", 2 local image(s) read (type, size, pixels)" in result.output


# --- 6: a misspelt vary: key suggests the closest name, API parameters first --------------------

def test_a_misspelt_vary_key_suggests_the_api_parameter_not_a_csv_column(tmp_path):
    (tmp_path / "shots.csv").write_text("action\nwalks\nruns\n")
    path = tmp_path / "m.yaml"
    path.write_text("version: 1\nrows:\n  - from: shots.csv\n    prompt: 'the knight {action}'\n"
                    "    references: https://example.com/a.png\n    vary:\n      aspect_ration: ['16:9', '1:1']\n")
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"{path}:7: vary 'aspect_ration' is not an API parameter (did you mean 'aspect_ratio'?) and the prompt "
        "has no {aspect_ration}"]


def test_the_nearest_name_is_by_edit_distance_and_api_parameters_win_ties():
    from batcher.manifest import nearest
    assert nearest("aspect_ration", ["seed", "aspect_ratio"], ["action"]) == "aspect_ratio"
    assert nearest("sead", ["seed"], ["sear"]) == "seed"  # one edit each: the API parameter
    assert nearest("plase", ["seed"], ["place"]) == "place"
    assert nearest("zzz", ["seed"], ["place"]) is None


# --- 7: plan on a batch the ledger holds leads with what is left ------------------------------

def test_plan_on_a_finished_batch_leads_with_what_is_left_to_run(tmp_path):
    (tmp_path / "m.yaml").write_text(small_manifest(n_rows=3))
    ledger = tmp_path / "l.db"
    done = CliRunner().invoke(cli, ["run", str(tmp_path / "m.yaml"), "--simulate", "--sim-render-seconds", "0.02",
                                    "--expected-render", "0.02", "--ledger", str(ledger), "--out", str(tmp_path / "o")])
    assert done.exit_code == 0, done.output
    result = CliRunner().invoke(cli, ["plan", str(tmp_path / "m.yaml"), "--ledger", str(ledger)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"3 of 3 job(s) completed in {ledger}; 0 to run: 0 credits, about 0s at --concurrency 4"
    assert lines[1] == "the whole batch:" and lines[2].startswith("batch 'small': 3 job(s)")
    data = json.loads(CliRunner().invoke(cli, ["plan", str(tmp_path / "m.yaml"), "--ledger", str(ledger),
                                               "--json"]).output)
    assert data["ledger"]["to_run"] == {"jobs": 0, "credits": 0, "seconds": 0.0}


def test_plan_counts_what_a_rerun_would_send_follow_and_leave_held(tmp_path):
    from sqlalchemy import text

    from batcher.manifest import load_manifest
    from batcher.plan import expand
    (tmp_path / "m.yaml").write_text(small_manifest(n_rows=6))
    m = load_manifest(tmp_path / "m.yaml")
    jobs = expand(m)
    with Ledger(tmp_path / "l.db") as ledger:
        ledger.write(ledger.add_jobs(m.batch, m.model.api_id, "m.yaml", jobs[:5]))  # the sixth is not staged yet
        with ledger.engine.begin() as conn:
            for job, state in zip(jobs, ["completed", "submitted", "failed", "unknown"], strict=False):
                conn.execute(text("UPDATE job SET state = :s WHERE key = :k"), {"s": state, "k": job.key})
    result = CliRunner().invoke(cli, ["plan", str(tmp_path / "m.yaml"), "--ledger", str(tmp_path / "l.db"),
                                      "-c", "2"])
    lines = result.output.splitlines()
    each = jobs[0].estimate
    assert lines[:4] == [
        f"1 of 6 job(s) completed in {tmp_path / 'l.db'}; 2 to run: {2 * each:g} credits, about 1m30s at "
        "--concurrency 2",
        "1 already sent (paid): a rerun follows them to their videos",
        "2 held (failed, unknown, expired or cancelled): `batcher retry` or `batcher resume` sends them again",
        "the whole batch:"]


def test_plan_without_the_batch_in_the_ledger_starts_with_the_batch(tmp_path):
    (tmp_path / "m.yaml").write_text(small_manifest(n_rows=2))
    Ledger(tmp_path / "l.db").close()
    result = CliRunner().invoke(cli, ["plan", str(tmp_path / "m.yaml"), "--ledger", str(tmp_path / "l.db")])
    assert result.output.startswith("batch 'small': 2 job(s)")


# --- 8: the demo leaves `git status` clean ---------------------------------------------------

def test_the_readme_demo_leaves_git_status_clean(tmp_path):
    import shutil
    import subprocess
    import sys
    work = tmp_path / "clone"
    shutil.copytree(REPO / "manifests", work / "manifests")
    shutil.copy(REPO / ".gitignore", work / ".gitignore")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "clone"]):
        subprocess.run([*git, *args], cwd=work, check=True, capture_output=True)
    env = {k: v for k, v in os.environ.items() if k not in ("BATCHER_LEDGER", "PIXELDOJO_API_KEY")}
    demo = subprocess.run([sys.executable, "-m", "batcher", "run", "manifests/demo.yaml", "--simulate",
                           "--sim-render-seconds", "0.05"], cwd=work, env=env, capture_output=True, text=True,
                          timeout=120)
    assert demo.returncode == 0, demo.stderr
    assert (work / "batcher-sim.db.simulator.jsonl.uploads").is_dir()  # what the demo writes is there...
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "--ignored=no"], cwd=work,
                            capture_output=True, text=True, check=True)
    assert status.stdout == ""  # ...and ignored


# --- 9: export has one option for where the export goes ---------------------------------------

@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path]:
    """A small batch rendered on the simulator: (manifest, ledger)."""
    folder = tmp_path_factory.mktemp("finished")
    (folder / "m.yaml").write_text(small_manifest(n_rows=2))
    done = CliRunner().invoke(cli, ["run", str(folder / "m.yaml"), "--simulate", "--sim-render-seconds", "0.02",
                                    "--expected-render", "0.02", "--ledger", str(folder / "l.db"),
                                    "--out", str(folder / "videos")])
    assert done.exit_code == 0, done.output
    return folder / "m.yaml", folder / "l.db"


def test_export_has_one_option_for_a_file_or_a_folder(finished, tmp_path):
    manifest, ledger = finished
    base = ["export", str(manifest), "--ledger", str(ledger)]
    help_text = CliRunner().invoke(cli, ["export", "--help"]).output
    assert "-o, --output PATH" in help_text and "--out " not in help_text and "--out," not in help_text
    done = CliRunner().invoke(cli, [*base, "--format", "csv", "-o", str(tmp_path / "e.csv")])
    assert done.exit_code == 0 and (tmp_path / "e.csv").read_text().count("\n") == 3
    done = CliRunner().invoke(cli, [*base, "--format", "videofolder", "--output", str(tmp_path / "ds")])
    assert done.exit_code == 0, done.output
    assert len(list((tmp_path / "ds").glob("*.mp4"))) == 2 and (tmp_path / "ds" / "metadata.jsonl").is_file()
    assert "deprecated" not in done.stderr


def test_export_refuses_a_folder_for_records_and_a_file_or_nothing_for_a_dataset(finished, tmp_path):
    manifest, ledger = finished
    base = ["export", str(manifest), "--ledger", str(ledger)]
    (tmp_path / "f.txt").write_text("")
    for args, why in ((["--format", "jsonl", "-o", str(tmp_path)], "is a folder: --format jsonl writes a file"),
                      (["--format", "videofolder", "-o", str(tmp_path / "f.txt")], "is a file"),
                      (["--format", "videofolder"], "--format videofolder needs -o/--output FOLDER")):
        done = CliRunner().invoke(cli, [*base, *args])
        assert done.exit_code == 2 and why in done.stderr, done.output


def test_the_old_out_option_still_works_and_says_once_that_it_is_deprecated(finished, tmp_path):
    manifest, ledger = finished
    done = CliRunner().invoke(cli, ["export", str(manifest), "--ledger", str(ledger), "--format", "videofolder",
                                    "--out", str(tmp_path / "ds")])
    assert done.exit_code == 0, done.output
    assert len(list((tmp_path / "ds").glob("*.mp4"))) == 2
    assert [line for line in done.stderr.splitlines() if "deprecated" in line] == [
        "batcher: export --out is deprecated: use -o/--output (the same meaning)"]
    both = CliRunner().invoke(cli, ["export", str(manifest), "--ledger", str(ledger), "--out", "a", "-o", "b"])
    assert both.exit_code == 2 and "give -o/--output only" in both.stderr


# --- 13: the suite says why it skips, and starts the servers it can ---------------------------

def test_the_suite_prints_the_reason_for_every_skip(tmp_path):
    import subprocess
    import sys
    (tmp_path / "test_one.py").write_text("import pytest\n\ndef test_a():\n    pytest.skip('no PostgreSQL here')\n")
    done = subprocess.run([sys.executable, "-m", "pytest", "-c", str(REPO / "pyproject.toml"), "-p", "no:cacheprovider",
                           "--rootdir", str(tmp_path), str(tmp_path / "test_one.py")], capture_output=True, text=True,
                          timeout=120)
    assert "1 skipped" in done.stdout, done.stdout
    [reason] = [line for line in done.stdout.splitlines() if line.startswith("SKIPPED [1] ")]
    assert reason.endswith("test_one.py:4: no PostgreSQL here")


def test_an_s3_server_is_started_on_loopback_when_none_is_given():
    boto3 = pytest.importorskip("boto3")
    from .conftest import moto_on_loopback
    with moto_on_loopback() as url:
        assert url.startswith("http://127.0.0.1:")
        s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="k",
                          aws_secret_access_key="s")
        s3.create_bucket(Bucket="started-here")
        s3.put_object(Bucket="started-here", Key="a", Body=b"x")
        assert s3.get_object(Bucket="started-here", Key="a")["Body"].read() == b"x"


def test_a_skip_for_want_of_postgresql_names_what_sets_it_up():
    from .conftest import PG_SKIP
    assert "BATCHER_TEST_PG" in PG_SKIP and "test-postgres" in PG_SKIP and "bash .ci/run" in PG_SKIP


def test_the_session_starts_its_own_postgresql_when_pgserver_is_installed():
    pytest.importorskip("pgserver", reason="pgserver is not installed (the opt-in test-postgres extra)")
    import sqlalchemy

    from .conftest import own_postgres
    url = own_postgres()
    assert url is not None and url.startswith("postgresql+psycopg://")
    engine = sqlalchemy.create_engine(url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT 1 + 1").scalar() == 2
    engine.dispose()
    with Ledger(url) as ledger:
        assert ledger.batches() == []


# --- 3. --simulate on every command that reads a ledger; 14. examples in --help ------------------------

def test_every_command_that_reads_a_ledger_takes_simulate_and_reads_the_simulated_ledger(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.yaml").write_text(small_manifest(n_rows=2))
    runner = CliRunner()
    done = runner.invoke(cli, ["run", "m.yaml", "--simulate", "--sim-render-seconds", "0.02"])
    assert done.exit_code == 0, done.output
    assert (tmp_path / "batcher-sim.db").exists() and not (tmp_path / "batcher.db").exists()
    # without --simulate: the real ledger, which does not exist, and a hint naming --simulate
    plain = runner.invoke(cli, ["status"])
    assert plain.exit_code == 2 and "add --simulate" in plain.output
    for words, shows in ((["status"], "2 completed"),
                         (["plan", "m.yaml"], "2 of 2 job(s) completed in batcher-sim.db"),
                         (["export", "--format", "jsonl"], '"simulated": true'), (["watch", "--once"], "2/2"),
                         (["report", "-o", "g.html"], "wrote g.html"), (["pause", "m.yaml"], "paused"),
                         (["resume", "m.yaml"], "resum"), (["models", "--simulate"], "happyhorse-1.0-r2v")):
        got = runner.invoke(cli, [*words, "--simulate"] if "--simulate" not in words else words)
        assert got.exit_code == 0, (words, got.output)
        assert shows in got.output, (words, got.output)
    assert not (tmp_path / "batcher.db").exists()  # nothing read or made the real ledger
    # --ledger on the command line still wins over --simulate
    other = runner.invoke(cli, ["status", "--simulate", "--ledger", "elsewhere.db"])
    assert other.exit_code == 2 and "no ledger at elsewhere.db" in other.output


def test_help_shows_examples_and_where_simulated_runs_keep_their_ledger():
    runner = CliRunner()
    top = runner.invoke(cli, ["--help"]).output
    assert "Examples:" in top and "batcher run manifests/demo.yaml --simulate" in top and "batcher-sim.db" in top
    for command in ("status", "run", "retry", "export", "report", "plan", "watch", "pause"):
        shown = runner.invoke(cli, [command, "--help"]).output
        words = re.sub(r"-\s+", "-", " ".join(shown.split()))  # help text may wrap at the hyphen
        assert "--simulate" in shown and "batcher-sim.db" in words, command
