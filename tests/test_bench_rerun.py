"""`batcher bench rerun` on a small batch: its completed jobs are recorded as a verified download
records them, and both start-ups (quick check, --verify full) are measured, whole process."""
from __future__ import annotations

import os
import sqlite3

import pytest

from batcher.bench.stage import RERUN_TARGET, completed_batch, rerun_section
from batcher.ledger import Ledger
from batcher.run.startup import _local_problems


def test_the_rerun_section_times_a_rerun_with_the_quick_and_the_full_check():
    figures, lines = rerun_section(200, runs=1)
    assert figures["jobs"] == 200 and figures["runs"] == 1 and figures["target"] == RERUN_TARGET
    q, f = figures["quick_seconds"], figures["full_seconds"]
    assert q > 0 and f > 0 and figures["quick_each"] == [q] and figures["full_each"] == [f]
    assert figures["quick_files_per_second"] == 200 / q and figures["full_files_per_second"] == 200 / f
    [line] = lines
    assert "on 200 completed jobs" in line and f"quick check {q:.2f}s" in line and f"--verify full {f:.2f}s" in line
    assert "is for 60,000 jobs" in line  # no verdict on a batch this small


def test_the_completed_batch_holds_files_as_a_verified_download_records_them(tmp_path):
    manifest, ledger, out = completed_batch(30, tmp_path)
    assert manifest.exists() and len(os.listdir(out)) == 30
    with Ledger(ledger) as led:
        completed = led.completed_files("rerun")
    assert len(completed) == 30 and all(n is not None and h and m for _, _, n, h, m in completed)
    assert _local_problems(completed, False, False) == [] and _local_problems(completed, True, False) == []
    # one file rewritten with other bytes of the same size: both checks catch it
    job_id, path, size, _, _ = completed[7]
    with open(path, "rb+") as clip:
        clip.write(b"X")
    os.utime(path, ns=(1, 1))
    assert os.path.getsize(path) == size
    for full in (False, True):
        assert _local_problems(completed, full, False) == [(job_id, path, "does not match its recorded size and "
                                                                          "sha256")]
    with sqlite3.connect(ledger) as db:
        assert db.execute("SELECT COUNT(*) FROM job WHERE state != 'completed'").fetchone()[0] == 0
    db.close()


def test_the_rerun_section_times_a_bucket_too_and_removes_it(s3_endpoint):
    boto3 = pytest.importorskip("boto3")
    figures, lines = rerun_section(20, runs=1, s3_url=s3_endpoint, objects=40)
    b = figures["bucket"]
    assert b["jobs"] == 40 and b["quick_seconds"] > 0 and b["full_seconds"] > 0
    assert len(lines) == 2 and "on 40 objects" in lines[1]
    assert f"quick check (one listing) {b['quick_seconds']:.2f}s" in lines[1]
    assert f"--verify full (a HEAD each) {b['full_seconds']:.2f}s" in lines[1]
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1", aws_access_key_id="k",
                      aws_secret_access_key="s")
    assert not [x for x in s3.list_buckets()["Buckets"] if x["Name"].startswith(f"batcher-bench-{os.getpid()}-")]
