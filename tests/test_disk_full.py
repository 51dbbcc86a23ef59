"""A full disk stops the run with a clear message; the rerun after space is freed completes."""
from __future__ import annotations

import ctypes
import hashlib
import sqlite3
import subprocess
from pathlib import Path

import anyio
import pytest

from batcher import api
from batcher.errors import DiskFullError
from batcher.ledger import Ledger
from batcher.manifest import load_manifest
from batcher.policy import RetryPolicy
from batcher.run import RunOptions
from batcher.simulator import SimConfig, Simulator

from .conftest import small_manifest


@pytest.fixture
def tiny_disk(tmp_path):
    """A tmpfs of a given size under tmp_path (needs root, as on CI); resize() frees space."""
    mount = tmp_path / "disk"
    mount.mkdir()
    libc = ctypes.CDLL(None, use_errno=True)
    state = {"mounted": False}

    def make(size: str):
        if libc.mount(b"tmpfs", str(mount).encode(), b"tmpfs", 0, f"size={size}".encode()) != 0:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        state["mounted"] = True
        return mount

    def resize(size: str):
        subprocess.run(["mount", "-o", f"remount,size={size}", str(mount)], check=True)

    make.resize = resize
    yield make
    if state["mounted"]:
        libc.umount2(str(mount).encode(), 2)


def run(manifest, ledger, out, sim):
    fast = RetryPolicy(base=0.01, cap=0.05, max_attempts=4)
    return anyio.run(lambda: api.run_async(manifest, ledger=ledger, to=api.target(simulate=sim), options=RunOptions.of(
        out_dir=out, expected_render=0.02, retry=fast, submit_retry=fast, concurrency=2)))


def test_disk_full_while_downloading(tmp_path, write, tiny_disk):
    out = tiny_disk("24k")
    manifest = write("m.yaml", small_manifest(5))
    sim = Simulator(SimConfig(render_seconds=0.02))
    report = run(manifest, tmp_path / "l.db", out, sim)
    assert report.stop_reason == "disk" and report.exit_code == 2
    assert any("no space left" in m for m in report.messages)
    assert not [p for p in out.iterdir() if p.name.endswith(".part")]
    with Ledger(tmp_path / "l.db") as led:
        for job in led.iter_batch("small"):
            if job.state == "completed":  # whatever has its final name is whole and verified
                assert hashlib.sha256(Path(job.file_path).read_bytes()).hexdigest() == job.sha256
    tiny_disk.resize("1m")
    report = run(manifest, tmp_path / "l.db", out, sim)
    assert report.exit_code == 0 and report.counts["completed"] == 5
    assert len(sim.record()["jobs"]) == 5  # nothing submitted twice


def test_disk_full_while_writing_the_ledger(tmp_path, write, tiny_disk):
    disk = tiny_disk("160k")
    rows = "".join(f"  - {{prompt: 'a long prompt to fill pages {i} {'x' * 300}', references: hero}}\n"
                   for i in range(600))
    manifest = write("m.yaml",
                     "version: 1\nbatch: small\nreference_sets:\n  hero: [https://x.com/h.png]\nrows:\n" + rows)
    m = load_manifest(manifest)
    with pytest.raises(DiskFullError, match="no space left"), Ledger(disk / "l.db") as led:
        api.stage(led, m)
    tiny_disk.resize("8m")
    with Ledger(disk / "l.db") as led:
        assert api.stage(led, m)[0] == 600
    assert sqlite3.connect(disk / "l.db").execute("PRAGMA integrity_check").fetchone()[0] == "ok"
