"""Commands that need no ledger start without the database packages: `--version`, `--help`,
`validate` and `plan` without a ledger import neither SQLAlchemy nor SQLModel (their import is
most of a command's start-up time). Measured by `batcher bench`, checked here by what is imported."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .conftest import MANIFESTS

PROBE = """
import gc, sys
sys.argv = ["batcher", *{args!r}]
try:
    from batcher.cli import main
    main()
except SystemExit:
    pass
print({report})
"""


def probed(args: list[str], cwd, report: str, timeout: float = 60, env: dict[str, str] | None = None) -> str:
    """What `report` (Python expressions) says after the command ran as its own process."""
    done = subprocess.run([sys.executable, "-c", PROBE.format(args=args, report=report)], capture_output=True,
                          text=True, cwd=cwd, timeout=timeout, env=env)
    return done.stdout.strip().splitlines()[-1]


def loaded(args: list[str], cwd) -> str:
    return probed(args, cwd, '"LOADED", "sqlalchemy" in sys.modules, "sqlmodel" in sys.modules')


@pytest.mark.parametrize("args", [
    ["--version"], ["--help"], ["run", "--help"], ["validate", str(MANIFESTS / "demo.yaml")],
    ["plan", str(MANIFESTS / "demo.yaml")], ["plan", str(MANIFESTS / "demo.yaml"), "--json", "--jobs"],
])
def test_commands_without_a_ledger_never_import_the_database_packages(args, tmp_path):
    assert loaded(args, tmp_path) == "LOADED False False"


def test_plan_with_a_ledger_does_open_it(tmp_path):
    from click.testing import CliRunner

    from batcher.cli import cli
    result = CliRunner().invoke(cli, ["run", str(MANIFESTS / "demo.yaml"), "--simulate", "--sim-render-seconds", "0",
                                      "--budget", "0", "--ledger", str(tmp_path / "batcher.db"),
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 3, result.output
    assert loaded(["plan", str(MANIFESTS / "demo.yaml")], tmp_path) == "LOADED True True"  # batcher.db is there


def test_a_run_against_the_api_never_imports_the_simulator(tmp_path):
    from .conftest import small_manifest
    manifest = tmp_path / "m.yaml"
    manifest.write_text(small_manifest(3))
    # port 9 (discard) on loopback: nothing answers; the run takes it for the real API and stops
    # at its budget of 0 before sending anything
    args = ["run", str(manifest), "--budget", "0", "--api-base", "http://127.0.0.1:9",
            "--ledger", str(tmp_path / "l.db"), "--out", str(tmp_path / "out")]
    report = '"SIMULATOR", any(m.startswith("batcher.simulator") for m in sys.modules)'
    env = {**os.environ, "PIXELDOJO_API_KEY": "k"}
    assert probed(args, tmp_path, report, env=env) == "SIMULATOR False"
    import sqlite3
    with sqlite3.connect(tmp_path / "l.db") as db:  # the run went as far as staging its jobs
        assert db.execute("SELECT COUNT(*) FROM job").fetchone()[0] == 3
    db.close()


def test_run_and_status_in_their_own_process_freeze_what_their_imports_made(tmp_path):
    from click.testing import CliRunner

    from batcher.cli import cli, modules_loading
    args = ["run", str(MANIFESTS / "demo.yaml"), "--simulate", "--sim-render-seconds", "0", "--budget", "0",
            "--ledger", str(tmp_path / "batcher.db"), "--out", str(tmp_path / "out")]
    report = '"FROZEN", gc.get_freeze_count() > 0, "COLLECTING", gc.isenabled()'
    assert probed(args, tmp_path, report, timeout=120) == "FROZEN True COLLECTING True"
    assert probed(["status", "--ledger", str(tmp_path / "batcher.db")], tmp_path, report) == \
        "FROZEN True COLLECTING True"
    import gc
    before = gc.get_freeze_count()
    with modules_loading():  # commands invoked in turn (CliRunner, tests): nothing is frozen or paused
        assert gc.isenabled()
    assert CliRunner().invoke(cli, args).exit_code == 3
    assert gc.get_freeze_count() == before
