"""Each run option declared once (batcher.run.options.RunSettings): the click options of `run` and
`retry` and RunOptions' defaults are made from it; and the steps before a run (batcher.launch),
shared by the command line and api.run_async."""
from __future__ import annotations

import subprocess
import sys
from dataclasses import fields
from decimal import Decimal
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from batcher import api
from batcher.cli import cli
from batcher.errors import UsageError
from batcher.run import RunOptions
from batcher.run.options import MB, RunSettings, flag_of

from .conftest import small_manifest

RETRY_ONLY = ["unknown", "failed", "expired"]  # retry's own: they make RunSettings.requeue


def options_of(command: str) -> dict[str, click.Option]:
    found = cli.commands[command].params
    return {p.name: p for p in found if isinstance(p, click.Option) and p.name is not None}


@pytest.mark.parametrize("command", ["run", "retry"])
def test_every_declared_option_is_a_click_option_with_its_flag_help_and_default(command):
    given = options_of(command)
    for f in fields(RunSettings):
        flag = flag_of(f)
        if flag is None or flag.only not in (None, command):
            continue
        option = given[f.name]
        assert {*option.opts, *option.secondary_opts} == set(flag.names), f.name
        assert option.help == flag.help, f.name
        assert option.default == f.default, f.name
        assert option.envvar == flag.envvar and option.metavar == flag.metavar, f.name
        assert bool(option.show_default) == flag.show_default, f.name


@pytest.mark.parametrize("command", ["run", "retry"])
def test_every_click_option_of_run_and_retry_is_a_declared_field(command):
    declared = {f.name for f in fields(RunSettings) if (flag := flag_of(f)) is None or flag.only in (None, command)}
    given = set(options_of(command)) - set(RETRY_ONLY)
    assert given == declared - {"requeue"}
    assert "resubmit_unknown" in options_of("run") and "resubmit_unknown" not in options_of("retry")


def test_the_options_keep_their_declared_order():
    """`--help` and the README list them as RunSettings declares them (the shared ones in place)."""
    order = [f.name for f in fields(RunSettings) if f.name != "requeue"]
    assert list(options_of("run")) == order
    assert list(options_of("retry")) == [*RETRY_ONLY, *(n for n in order if n != "resubmit_unknown")]


def test_the_library_defaults_are_the_declared_ones():
    out = Path("o")
    assert RunSettings().run_options(out_dir=out, expected_render=None) == RunOptions.of(out_dir=out)
    declared = {f.name: f.default for f in fields(RunSettings)}
    o = RunOptions.of()
    assert o.limits.concurrency == declared["concurrency"] and o.polling.request_deadline == declared[
        "request_deadline"] and o.saving.max_download_bytes == declared["max_download_mb"] * MB


def test_settings_reach_the_run_options_they_name():
    settings = RunSettings(concurrency=7, budget=Decimal("12.5"), max_download_mb=3, no_preflight=True,
                           resubmit_unknown=True, lease_seconds=5.0, job_timeout=9.0, rpm=100.0)
    o = settings.run_options(out_dir=Path("x"), expected_render=0.3, seed=4)
    assert (o.limits.concurrency, o.limits.budget, o.limits.lease_seconds, o.limits.rpm) == (7, Decimal("12.5"), 5.0,
                                                                                              100.0)
    assert (o.saving.max_download_bytes, o.saving.out_dir, o.preflight, o.resubmit_unknown) == (3 * MB, Path("x"),
                                                                                                False, True)
    assert (o.polling.expected_render, o.polling.job_timeout, o.seed) == (0.3, 9.0, 4)


def test_a_budget_that_is_no_amount_is_one_line_and_exit_2(tmp_path):
    for value in ("nan", "inf", "-1"):
        result = CliRunner().invoke(cli, ["run", "m.yaml", "--simulate", "--budget", value])
        assert result.exit_code == 2, result.output
        assert result.output.startswith(f"batcher: --budget '{value}': ") and result.output.count("\n") == 1


def test_prepare_describes_checks_and_chooses_the_store(write, tmp_path):
    m = api.load(write("m.yaml", small_manifest(3)))
    to = api.target(simulate=True)
    ready = api.prepare(m, tmp_path / "l.db", to, RunOptions.of(out_dir=tmp_path / "o"))
    assert ready.checked is not None and ready.checked.jobs == 3 and ready.simulated
    assert ready.options.reference_store is not None  # the simulator's own
    unchecked = api.prepare(m, tmp_path / "l.db", to, RunOptions.of(out_dir=tmp_path / "o"), check_plan=False)
    assert unchecked.checked is None
    with pytest.raises(UsageError, match="nosuchmodel"):
        api.prepare(m, tmp_path / "l.db", to, RunOptions.of(out_dir=tmp_path / "o"), {"nosuchmodel": 3.0})


def test_stage_ready_adds_the_jobs_then_requeues_what_retry_names(write, tmp_path):
    m = api.load(write("m.yaml", small_manifest(3)))
    options = RunOptions.of(out_dir=tmp_path / "o", ledger_patience=2.0)
    with api.run_ledger(tmp_path / "l.db", options) as ledger:
        assert api.stage_ready(ledger, api.prepare(m, ledger, api.target(simulate=True), options)) == ((3, 0, 0), 0)
        again = api.stage_ready(ledger, api.prepare(m, ledger, api.target(simulate=True), options), ("failed",))
        assert again == ((0, 3, 0), 0)  # nothing failed: nothing requeued
        assert api.status(ledger, m.batch)["counts"]["pending"] == 3


def test_start_run_takes_the_command_lines_settings(write, tmp_path):
    m = api.load(write("m.yaml", small_manifest(2)))
    settings = RunSettings(ledger_path=str(tmp_path / "l.db"), simulate=True, sim_render_seconds=0.2,
                           concurrency=3, max_download_mb=5)
    ready = api.start_run(m, settings, {}, None, handle_signals=True)
    assert ready.simulated and ready.to.simulator is not None
    assert ready.options.polling.expected_render == 0.2  # the simulator's own render time
    assert ready.options.limits.concurrency == 3 and ready.options.saving.max_download_bytes == 5 * MB
    assert ready.options.handle_signals and ready.options.webhooks is None
    with pytest.raises(UsageError, match="--webhook-url needs --webhook-listen"):
        api.start_run(m, RunSettings(ledger_path=str(tmp_path / "l.db"), simulate=True,
                                     webhook_url="https://x.example"), {}, None)


def test_the_declarations_keep_the_command_line_light():
    """Every command reads the run options' declarations as it starts: they load no HTTP client."""
    probe = "import sys; import batcher.cli; print('httpx' in sys.modules, 'sqlalchemy' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False False", done.stderr
    from batcher.client import DEFAULT_MAX_RETRY_AFTER  # a client's own default, outside a run
    assert RunSettings().max_retry_after == DEFAULT_MAX_RETRY_AFTER == RunOptions.of().polling.max_retry_after


def test_only_declared_options_reach_the_run_options_by_name():
    """--reference-store is a bucket's address: the store itself is chosen before the run."""
    o = RunSettings(reference_store="s3://bucket/p").run_options(out_dir=Path("x"), expected_render=None)
    assert o.reference_store is None
