"""`batcher bench shared` on a tiny size: one runner on SQLite and on PostgreSQL, two at once on
PostgreSQL, each as its own process against `batcher simulator`. Keys and completeness only: the
figures are printed, never asserted."""
from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from batcher.bench import HOW
from batcher.cli import cli

from .conftest import PG_URL

JOBS, RUNNERS = 40, 2


@pytest.fixture
def pg_url() -> str:
    if not PG_URL:
        if os.environ.get("CI"):
            pytest.fail("BATCHER_TEST_PG is not set: .ci/run starts PostgreSQL and sets it")
        pytest.skip("BATCHER_TEST_PG is not set (no PostgreSQL to test against)")
    return PG_URL


def bench_schemas(url: str) -> set[str]:
    import sqlalchemy
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as conn:
            return {n for (n,) in conn.execute(sqlalchemy.text(
                "SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE :p"),
                {"p": "bench_shared_%"})}
    finally:
        engine.dispose()


def test_shared_section_on_a_tiny_batch(pg_url):
    before = bench_schemas(pg_url)
    result = CliRunner().invoke(cli, ["bench", "shared", "--pg-url", pg_url, "--shared-jobs", str(JOBS),
                                      "--shared-runners", str(RUNNERS), "--concurrency", "5", "--json"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(line.startswith("shared ") for line in lines)
    start = lines.index("{")
    figures = json.loads("\n".join(lines[start:]))["shared"]
    assert {"definition", "jobs", "runners", "concurrency", "sqlite_one", "postgres_one",
            "postgres_many"} <= set(figures)
    for name, runners in (("sqlite_one", 1), ("postgres_one", 1), ("postgres_many", RUNNERS)):
        m = figures[name]
        assert {"ledger", "stage_seconds", "wall", "work_wall", "jobs_per_second", "claims", "claims_per_second",
                "claims_per_job", "share_min", "share_max", "max_over_mean", "per_runner"} <= set(m), name
        assert m["ledger"] == ("sqlite" if name == "sqlite_one" else "postgresql")
        assert m["completed"] == JOBS and m["counts"] == {"completed": JOBS}, (name, m["counts"])
        assert m["submitted_to_api"] == JOBS  # each job sent once
        assert m["claims"] >= JOBS  # every job was claimed by a runner at least once
        assert len(m["per_runner"]) == runners
        assert sum(r["completed"] for r in m["per_runner"]) == JOBS
        for r in m["per_runner"]:
            assert {"wall", "exit_code", "completed", "share", "submitted_this_run", "downloaded_this_run"} <= set(r)
            assert r["completed"] == r["downloaded_this_run"]  # the ledger and the runner agree
    assert bench_schemas(pg_url) == before  # every schema it made is dropped


def test_without_postgresql_it_says_how_to_run_it(monkeypatch):
    monkeypatch.delenv("BATCHER_BENCH_PG", raising=False)
    result = CliRunner().invoke(cli, ["bench", "shared", "--json"])
    assert result.exit_code == 0, result.output
    assert HOW in result.output.splitlines()
    assert "--pg-url" in HOW and "BATCHER_BENCH_PG" in HOW
