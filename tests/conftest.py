from __future__ import annotations

import contextlib
import hashlib
import os
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MANIFESTS = REPO / "manifests"


@pytest.fixture
def write(tmp_path: Path):
    """Write a dedented text file under tmp_path and return its path."""
    def _write(name: str, content: str) -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(content).lstrip("\n"), encoding="utf-8")
        return path
    return _write


MINIMAL = """
version: 1
reference_sets:
  hero: [https://example.com/hero.png]
rows:
  - prompt: "a hero walks"
    references: hero
"""


def small_manifest(n_rows: int = 6, repeat: int = 1, resolution: str = "720p", duration: int = 5) -> str:
    rows = "".join(f"  - prompt: 'shot number {i}'\n    references: hero\n    repeat: {repeat}\n"
                   for i in range(n_rows))
    return (f"version: 1\nbatch: small\ndefaults:\n  duration: {duration}\n  resolution: {resolution}\n"
            f"reference_sets:\n  hero: [https://example.com/hero.png]\nrows:\n" + rows)


@pytest.fixture
def simrun(tmp_path: Path):
    """Run a manifest in-process against a simulator; returns (report, simulator, ledger path)."""
    import anyio

    from batcher import api
    from batcher.policy import RetryPolicy
    from batcher.run import RunOptions
    from batcher.simulator import SimConfig, Simulator

    def _run(manifest: Path, config: SimConfig | None = None, simulator: Simulator | None = None,
             ledger: Path | None = None, **options):
        sim = simulator or Simulator(config or SimConfig(render_seconds=0.05, render_jitter=0.2))
        fast = RetryPolicy(base=0.01, cap=0.05, max_attempts=6)
        options.setdefault("retry", fast)
        options.setdefault("submit_retry", fast)
        options.setdefault("out_dir", tmp_path / "out")
        opts = RunOptions.of(expected_render=sim.config.render_seconds, seed=1, **options)
        led = ledger or tmp_path / "ledger.db"
        report = anyio.run(lambda: api.run_async(manifest, ledger=led, options=opts, to=api.target(simulate=sim)))
        return report, sim, led
    return _run


# Why a test that needs a service skips without it: the reason pytest prints (`-rs` in pyproject).
SETUP_HINT = "`bash .ci/run` sets everything up"
PG_SKIP = ("no PostgreSQL: BATCHER_TEST_PG is not set, and pgserver is not installed to start one "
           f"(pip install -e '.[test,test-postgres]'); {SETUP_HINT}")


def own_postgres() -> str | None:
    """A PostgreSQL server of this test session's own, from pgserver (the `test-postgres` extra):
    a fresh data folder, stopped and deleted when the session ends; its URL, or None without it."""
    import warnings
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR is not set
            import pgserver
    except ImportError:
        return None
    import tempfile
    data = Path(tempfile.mkdtemp(prefix="batcher-test-pg-"))
    _OWN_SERVERS.append(pgserver.get_server(data, cleanup_mode="delete"))  # kept: it lives while its handle does
    return f"postgresql+psycopg://postgres@/postgres?host={data}"


_OWN_SERVERS: list[object] = []
# BATCHER_TEST_PG (what `.ci/run` sets), else a server started here when pgserver is installed.
PG_URL = os.environ.get("BATCHER_TEST_PG") or (None if os.environ.get("CI") else own_postgres())


def pg_schema_url(name: str) -> str:
    """A fresh schema in the test database, reached through search_path: one per test."""
    import sqlalchemy
    engine = sqlalchemy.create_engine(PG_URL)
    with engine.begin() as conn:
        conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        conn.exec_driver_sql(f'CREATE SCHEMA "{name}"')
    engine.dispose()
    sep = "&" if "?" in PG_URL else "?"
    return f"{PG_URL}{sep}options=-csearch_path%3D{name}"


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_url(request, tmp_path: Path) -> str:
    """The same suite against both backends: an SQLite file, and a PostgreSQL schema."""
    if request.param == "sqlite":
        return str(tmp_path / "ledger.db")
    if not PG_URL:
        if os.environ.get("CI"):
            pytest.fail("BATCHER_TEST_PG is not set: .ci/run starts PostgreSQL and sets it")
        pytest.skip(PG_SKIP)
    import re
    name = "t_" + re.sub(r"[^a-z0-9]", "_", request.node.name.lower())[:50] + f"_{os.getpid()}"
    return pg_schema_url(name)


# --- an S3-compatible server on loopback (moto in server mode) ----------------------------------

S3_URL = os.environ.get("BATCHER_TEST_S3")


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3-compatible server on 127.0.0.1: the one `.ci/run` starts (BATCHER_TEST_S3), or
    moto's server started here for the session."""
    if S3_URL:
        yield S3_URL
        return
    try:
        import moto.server  # noqa: F401 - from the test extras
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("no S3 server: .ci/run starts moto and sets BATCHER_TEST_S3")
        pytest.skip(f"no S3 server: BATCHER_TEST_S3 is not set and moto is not installed "
                    f"(pip install -e '.[test]'); {SETUP_HINT}")
    with moto_on_loopback() as url:
        yield url


def bucket_credentials(monkeypatch, access: str, secret: str) -> None:
    """A bucket's credentials in the environment, as a user sets them for a run (no session
    token, profile or S3-only endpoint of the machine's own to stand in for them)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", access)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    for name in ("AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)


def new_bucket(s3_endpoint: str, prefix: str, monkeypatch) -> tuple[object, str]:
    """(an S3 client, the name of a bucket made for this test) on the S3 server under test."""
    import boto3
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    name = f"{prefix}-{hashlib.sha256(str(id(monkeypatch)).encode()).hexdigest()[:10]}"
    s3.create_bucket(Bucket=name)
    return s3, name


@contextlib.contextmanager
def moto_on_loopback() -> Iterator[str]:
    """moto's S3-compatible server in a thread of this process, on 127.0.0.1 and a free port, while
    the block runs; its URL."""
    from moto.server import ThreadedMotoServer
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


# --- the simulator served over HTTP on loopback ----------------------------------------------------

@contextlib.contextmanager
def serving(simulator) -> Iterator[str]:
    """Serve `simulator` over HTTP on 127.0.0.1 (a free port) while the block runs; its base URL."""
    import threading

    from batcher.simulator import make_server
    server = make_server(simulator)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def run_against(path: Path, tmp_path: Path, base: str, api_key: str, **options):
    """Run a manifest as a real run against the API at `base` (a served simulator), ledger and
    videos under `tmp_path`; its RunReport."""
    import anyio

    from batcher import api
    from batcher.run import RunOptions
    to = api.target(api_key=api_key, api_base=base)
    opts = RunOptions.of(out_dir=tmp_path / "out", expected_render=0.02, **options)
    return anyio.run(lambda: api.run_async(path, ledger=tmp_path / "l.db", options=opts, to=to))


def sqlite_plans(ledger, run, containing: str) -> list[str]:
    """SQLite's query plan of each statement with `containing` that `run()` sends through the
    ledger's engine, as one line each: what tells an index read in order from a sort of every row."""
    from sqlalchemy import event
    seen: list[tuple[str, object]] = []

    def record(conn, cursor, statement, parameters, *rest):
        if containing in statement:
            seen.append((statement, parameters))
    event.listen(ledger.engine, "before_cursor_execute", record)
    try:
        run()
    finally:
        event.remove(ledger.engine, "before_cursor_execute", record)
    raw = ledger.engine.raw_connection()
    try:
        return [" | ".join(str(r[-1]) for r in raw.execute("EXPLAIN QUERY PLAN " + statement, parameters))
                for statement, parameters in seen]
    finally:
        raw.close()


def manifest_rows(texts, vary: dict, extra: dict):
    """A hypothesis strategy of manifest rows: templated prompts over the vary names v and w (v's
    values texts, numbers or floats), references by set name or URL, and the common optional
    fields; `vary` and `extra` add what a test varies besides. Pass the rows through `valid_rows`."""
    from hypothesis import strategies as st
    return st.fixed_dictionaries({
        "prompt": st.sampled_from(["p {v}", "{v}-{w}", "p", "{{v}} {v}", "\u00e9 {w} \u2713"]),
        "references": st.sampled_from(["hero", ["hero", "https://x.com/b.png"], "https://x.com/b.png"]),
    }, optional={
        "vary": st.fixed_dictionaries({}, optional={
            # No booleans: true/false never fills a {variable} (it would render as True).
            "v": st.lists(texts | st.integers(-3, 3) | st.floats(-2, 2, allow_nan=False), min_size=1, max_size=3),
            "w": st.lists(texts, min_size=1, max_size=2),
            "duration": st.lists(st.sampled_from([3, 5, 5.0, 15]), min_size=1, max_size=2),
            "resolution": st.lists(st.sampled_from(["720p", "1080p"]), min_size=1, max_size=2),
            **vary,
        }),
        "seed": st.sampled_from([0, 7, "auto"]),
        "repeat": st.integers(1, 3),
        "negative_prompt": st.sampled_from(["n {v}", "plain", ""]),
        **extra,
    })


def valid_rows(rows: list[dict]) -> list[dict]:
    """`manifest_rows` made valid: every {variable} filled and every vary name used."""
    from batcher.manifest import variables_in
    for row in rows:
        used = variables_in(row["prompt"]) | variables_in(row.get("negative_prompt", ""))
        vary = row.setdefault("vary", {})
        for name in ("v", "w"):
            if name in used:
                vary.setdefault(name, ["z"])
            else:
                vary.pop(name, None)
        if not vary:
            del row["vary"]
    return rows
