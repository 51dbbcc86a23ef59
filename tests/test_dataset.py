"""The dataset export, loaded by the real Hugging Face `datasets` library (a test extra)."""
from __future__ import annotations

import hashlib
import os

import pytest

from batcher import api
from batcher.ledger import Ledger

from .conftest import small_manifest


def test_videofolder_export_loads_with_the_datasets_library(simrun, write, tmp_path, monkeypatch):
    if not os.environ.get("CI"):
        pytest.importorskip("datasets")
    import datasets
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    report, _, ledger_path = simrun(write("m.yaml", small_manifest(5)))
    assert report.counts["completed"] == 5
    api.export_dataset(ledger_path, "small", tmp_path / "ds")
    ds = datasets.load_dataset("videofolder", data_dir=str(tmp_path / "ds"), split="train",
                               cache_dir=str(tmp_path / "hf-cache"))
    # decoding a clip needs torchcodec (see the README); the rows, paths and provenance do not
    ds = ds.cast_column("video", datasets.Video(decode=False))
    with Ledger(ledger_path) as ledger:
        jobs = {j.key: j for j in ledger.iter_batch("small")}
    assert ds.num_rows == len(jobs) == 5
    for row in ds:
        job = jobs[row["id"]]
        path = row["video"]["path"]
        assert os.path.basename(path) == os.path.basename(job.file_path)
        with open(path, "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == job.sha256 == row["sha256"]
        assert row["prompt"] == job.parameters()["prompt"] and row["remote_job_id"] == job.remote_job_id


def test_exported_clips_decode_where_torchcodec_is_installed(simrun, write, tmp_path, monkeypatch):
    """Decoding needs torchcodec, PyTorch and FFmpeg's libraries (README: "Decoding the clips");
    not part of the test extras, so this runs only where they are installed."""
    datasets = pytest.importorskip("datasets")
    try:
        import torchcodec  # noqa: F401 - only to learn whether it is installed
    except (ImportError, OSError):
        pytest.skip("torchcodec is not installed, or cannot load on this machine")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    simrun(write("m.yaml", small_manifest(2)))
    api.export_dataset(tmp_path / "ledger.db", "small", tmp_path / "ds")
    ds = datasets.load_dataset("videofolder", data_dir=str(tmp_path / "ds"), split="train",
                               cache_dir=str(tmp_path / "hf-cache"))
    video = ds[0]["video"]
    assert video.metadata.width == 160 and video.metadata.height == 90
    assert abs(video.metadata.duration_seconds - 2.0) < 0.1
