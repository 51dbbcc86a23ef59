"""The command line: help everywhere, exit codes, one-line errors."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from batcher import __version__
from batcher.cli import cli

from .conftest import MANIFESTS


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def all_commands():
    return sorted(cli.commands)


@pytest.mark.parametrize("name", all_commands())
def test_every_command_has_help_with_a_summary(name):
    result = invoke(name, "--help")
    assert result.exit_code == 0
    summary = cli.commands[name].get_short_help_str(limit=200)
    assert summary and summary in " ".join(result.output.split())


def test_version():
    assert __version__ in invoke("--version").output


def test_python_dash_m_works():
    out = subprocess.run([sys.executable, "-m", "batcher", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and __version__ in out.stdout


def test_validate_ok_and_errors(write):
    result = invoke("validate", str(MANIFESTS / "demo.yaml"))
    assert result.exit_code == 0 and "12 job(s)" in result.output
    bad = write("bad.yaml", "version: 1\nrows:\n  - prompt: a\n    references: https://x.com/a.png\n    duration: 99\n")
    result = CliRunner().invoke(cli, ["validate", str(bad)])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"{bad}:5: duration must be at most 15, got 99"


def test_plan_json_and_text(tmp_path):
    result = invoke("plan", str(MANIFESTS / "demo.yaml"), "--json", "--ledger", str(tmp_path / "none.db"))
    data = json.loads(result.output)
    assert data["jobs"] == 12 and data["credits"] == 284
    assert not (tmp_path / "none.db").exists(), "plan must write nothing"
    text = invoke("plan", str(MANIFESTS / "demo.yaml"), "--ledger", str(tmp_path / "none.db")).output
    assert "12 job(s)" in text and "284 credits" in text and "unpublished" in text


def test_plan_counts_ledger_jobs(tmp_path):
    from batcher.ledger import Ledger
    from batcher.manifest import load_manifest
    from batcher.plan import expand
    m = load_manifest(MANIFESTS / "demo.yaml")
    with Ledger(tmp_path / "l.db") as ledger:
        ledger.write(ledger.add_jobs(m.batch, m.model.api_id, "demo.yaml", expand(m)[:4]))
    data = json.loads(invoke("plan", str(MANIFESTS / "demo.yaml"), "--json", "--ledger", str(tmp_path / "l.db")).output)
    assert data["ledger"]["in_ledger"] == 4 and data["ledger"]["completed"] == 0


def test_plan_counts_completed_ledger_jobs_alike_with_and_without_the_job_list(tmp_path):
    """Against a ledger, `plan` counts from the compiled rows' keys, `plan --jobs` from whole jobs:
    the same figures, duplicates merged once, keys the ledger holds for other rows not counted."""
    from sqlalchemy import text

    from batcher.ledger import Ledger
    from batcher.manifest import load_manifest
    from batcher.plan import expand
    m = load_manifest(MANIFESTS / "demo.yaml")
    jobs = expand(m)
    with Ledger(tmp_path / "l.db") as ledger:
        ledger.write(ledger.add_jobs(m.batch, m.model.api_id, "demo.yaml", jobs[:7]))
        with ledger.engine.begin() as conn:
            conn.execute(text("UPDATE job SET state = 'completed' WHERE key IN (:a, :b, :c)"),
                         {"a": jobs[0].key, "b": jobs[3].key, "c": jobs[6].key})
            conn.execute(text("UPDATE job SET key = 'not-in-the-manifest' WHERE key = :k"), {"k": jobs[5].key})
    found = [json.loads(invoke("plan", str(MANIFESTS / "demo.yaml"), "--json", *extra, "--ledger",
                               str(tmp_path / "l.db")).output)["ledger"] for extra in ((), ("--jobs",))]
    assert found[0] == found[1]
    assert (found[0]["in_ledger"], found[0]["completed"]) == (6, 3)


def test_bad_rate_option_is_a_usage_error():
    result = CliRunner().invoke(cli, ["plan", str(MANIFESTS / "demo.yaml"), "--rate", "1080p"])
    assert result.exit_code == 2 and "RESOLUTION=CREDITS_PER_SECOND" in result.output


def test_missing_manifest_is_one_line(tmp_path):
    result = CliRunner().invoke(cli, ["validate", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0 and "no such file" in result.stderr


def test_simulated_runs_keep_their_own_ledger_and_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BATCHER_LEDGER", raising=False)
    result = CliRunner().invoke(cli, ["run", str(MANIFESTS / "demo.yaml"), "--simulate", "--sim-render-seconds",
                                      "0.05"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "batcher-sim.db").exists() and not (tmp_path / "batcher.db").exists()
    clips = list((tmp_path / "outputs" / "simulated" / "knight-and-mare").glob("*.mp4"))
    assert len(clips) == 12


def test_every_option_of_every_command_is_documented_in_the_readme():
    import click

    from batcher.cli import cli
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    missing = []
    for name, command in cli.commands.items():
        assert f"batcher {name}" in readme, name
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help, f"{name} {param.opts} has no help text"
                if not any(f"`{opt}`" in readme for opt in param.opts):
                    missing.append(f"{name} {param.opts[0]}")
    assert not missing, missing


def test_the_readme_command_reference_is_what_the_commands_make_now():
    """The README's "Every option of every command" is made from the click commands: a changed
    option, help text or default fails here until the README is made again."""
    from batcher.cli import reference
    readme = Path(__file__).resolve().parent.parent / "README.md"
    text = readme.read_text(encoding="utf-8")
    assert reference.rewritten(text, reference.render()) == text, \
        "README.md's command reference is out of date: run `python -m batcher.cli.reference README.md`"


def test_the_reference_command_rewrites_only_between_its_markers(tmp_path):
    from batcher.cli import reference
    doc = tmp_path / "doc.md"
    doc.write_text("# Before\n\n<!-- reference: begin -->\nstale `--gone` |\n<!-- reference: end -->\n\nAfter.\n")
    command = [sys.executable, "-m", "batcher.cli.reference"]
    done = subprocess.run([*command, str(doc)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert doc.read_text() == (f"# Before\n\n{reference.BEGIN}\n\n{reference.render()}\n"
                               "<!-- reference: end -->\n\nAfter.\n")
    again = subprocess.run([*command, str(doc)], capture_output=True, text=True)
    assert again.returncode == 0 and "already current" in again.stdout
    plain = tmp_path / "plain.md"
    plain.write_text("no markers\n")
    refused = subprocess.run([*command, str(plain)], capture_output=True, text=True)
    assert refused.returncode == 2 and "reference: begin" in refused.stderr
    assert plain.read_text() == "no markers\n"


def test_every_subpackage_is_part_of_the_installed_package():
    """`pip install .` (the README's first command) must ship the ledger, run and cli packages."""
    import tomllib
    from setuptools import find_packages
    root = Path(__file__).resolve().parent.parent
    config = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    shipped = set(find_packages(str(root), include=config["include"]))
    on_disk = {"batcher"} | {f"batcher.{p.name}" for p in (root / "batcher").iterdir() if (p / "__init__.py").exists()}
    assert on_disk <= shipped
