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
