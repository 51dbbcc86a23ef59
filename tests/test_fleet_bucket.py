"""A fleet's clips in one bucket (issue 25, items 2 and 6), against the S3-compatible server:
runner processes on several "hosts" (working folders) share a ledger and an output store, and a
third host with no local files exports the dataset (downloaded, or linked and presigned) and
the gallery; a runner killed mid-upload leaves no object under the clip's name, and the next
run completes it exactly once."""

from __future__ import annotations

import hashlib
import html
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import anyio
import httpx
import pytest
from click.testing import CliRunner

from batcher.cli import cli
from batcher.errors import OutputStoreError
from batcher.ledger import Ledger
from batcher.outputs.bucket import BucketOutputs, ClipStores

from .conftest import PG_SKIP, PG_URL, bucket_credentials, pg_schema_url, small_manifest
from .test_e2e import start_simulator

boto3 = pytest.importorskip("boto3")

SECRET = "fleet-bucket-test-secret-0123456789"


@pytest.fixture
def bucket(s3_endpoint, monkeypatch, request):
    """A fresh bucket, with the credentials and endpoint every process here finds in its
    environment (as each host of a fleet would)."""
    bucket_credentials(monkeypatch, "AKIAFLEETBUCKETTEST1", SECRET)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    for name in ("BATCHER_FAILPOINT", "BATCHER_FAILPOINT_PAUSE", "BATCHER_LEDGER"):
        monkeypatch.delenv(name, raising=False)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    name = "fleet-" + hashlib.sha256(f"{request.node.nodeid}{os.getpid()}".encode()).hexdigest()[:12]
    s3.create_bucket(Bucket=name)
    return s3, name


def _run(url: str, manifest: Path, ledger: str, out: str, cwd: Path, failpoint: str | None = None,
         concurrency: int = 2) -> subprocess.Popen:
    env = dict(os.environ, PIXELDOJO_API_KEY="sim-key", **({"BATCHER_FAILPOINT": failpoint} if failpoint else {}))
    return subprocess.Popen([sys.executable, "-m", "batcher", "run", str(manifest), "--api-base", url, "--ledger",
                             ledger, "--out", out, "--concurrency", str(concurrency), "--expected-render", "0.2"],
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    out, err = proc.communicate(timeout=180)
    return proc.returncode, out + err


def _host(tmp_path: Path, name: str) -> Path:
    (tmp_path / name).mkdir()
    return tmp_path / name


def _objects(s3, bucket: str) -> dict[str, bytes]:
    """Every finished object of the bucket (unfinished uploads under .partial/ left out): key -> bytes."""
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    return {k: s3.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys if "/.partial/" not in k}


@pytest.fixture
def served():
    proc, url = start_simulator("--render-seconds", "0.2", "--seed", "3")
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def test_two_runners_on_postgres_fill_one_bucket_and_a_third_host_exports_it(bucket, served, tmp_path):
    if not PG_URL:
        pytest.skip(PG_SKIP)
    s3, name = bucket
    ledger = pg_schema_url(f"t_fleet_bucket_{os.getpid()}")
    manifest = tmp_path / "m.yaml"
    manifest.write_text(small_manifest(n_rows=6))
    out = f"s3://{name}/fleet/small"
    runners = [_run(served, manifest, ledger, out, _host(tmp_path, f"host{i}")) for i in (1, 2)]
    for proc in runners:
        code, said = _finish(proc)
        assert code == 0, said
    with Ledger(ledger) as led:
        jobs = {j.key: j for j in led.iter_batch("small")}
    assert len(jobs) == 6 and all(j.state == "completed" for j in jobs.values())
    objects = _objects(s3, name)
    assert len(objects) == 6
    for job in jobs.values():
        assert job.file_path.startswith(f"{out}/")
        data = objects[job.file_path.split("/", 3)[3]]
        assert hashlib.sha256(data).hexdigest() == job.sha256 and len(data) == job.size
    assert not any((tmp_path / f"host{i}" / "outputs").exists() for i in (1, 2))  # nothing on the runners' disks

    # A third host: its own folder, nothing of the runners' on it; the ledger and the bucket only.
    third = _host(tmp_path, "host3")
    env = {k: v for k, v in os.environ.items() if k != "PIXELDOJO_API_KEY"}

    def batcher(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "batcher", *args, "--ledger", ledger], cwd=third, env=env,
                              capture_output=True, text=True, timeout=120)
    folder = batcher("export", "--format", "videofolder", "-o", "ds")
    assert folder.returncode == 0, folder.stderr
    assert "6 video(s)" in folder.stderr and "6 downloaded" in folder.stderr, folder.stderr
    rows = [json.loads(line) for line in (third / "ds" / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and len(list((third / "ds").glob("*.mp4"))) == 6
    for row in rows:
        data = (third / "ds" / row["file_name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == row["sha256"] == jobs[row["id"]].sha256
    again = batcher("export", "--format", "videofolder", "-o", "ds")  # a second export: nothing fetched again
    assert again.returncode == 0 and "6 already there" in again.stderr and "downloaded" not in again.stderr

    records = batcher("export", "--format", "jsonl", "--presign", "1h", "-o", "clips.jsonl")
    assert records.returncode == 0, records.stderr
    text = (third / "clips.jsonl").read_text()
    assert SECRET not in text
    for record in map(json.loads, text.splitlines()):
        assert record["file"] == jobs[record["id"]].file_path and record["url"].startswith("http")
        assert "AKIAFLEETBUCKETTEST1" in record["url"]  # a presigned URL names its access key id
        fetched = httpx.get(record["url"]).content
        assert hashlib.sha256(fetched).hexdigest() == record["sha256"]
    csv = batcher("export", "--format", "csv", "--presign", "90m", "-o", "clips.csv")
    assert csv.returncode == 0 and (third / "clips.csv").read_text().splitlines()[0].endswith(",url")


# --- one host's runs, read from another ------------------------------------------------------------

def _simulated_run(tmp_path: Path, out: str) -> str:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(small_manifest(n_rows=2))
    ledger = str(tmp_path / "l.db")
    done = CliRunner().invoke(cli, ["run", str(manifest), "--simulate", "--sim-render-seconds", "0.02",
                                    "--ledger", ledger, "--out", out])
    assert done.exit_code == 0, done.output
    return ledger


def test_a_linked_folder_names_the_clips_by_location_and_presigned_url_without_a_video_file(bucket, tmp_path):
    _, name = bucket
    ledger = _simulated_run(tmp_path, f"s3://{name}/linked")
    with Ledger(ledger) as led:
        jobs = {j.key: j for j in led.iter_batch("small")}
    done = CliRunner().invoke(cli, ["export", "--ledger", ledger, "--format", "videofolder", "--link",
                                    "--presign", "2h", "-o", str(tmp_path / "ds")])
    assert done.exit_code == 0, done.output
    assert "2 clip(s) listed by location" in done.output
    assert list((tmp_path / "ds").iterdir()) == [tmp_path / "ds" / "metadata.jsonl"]
    rows = [json.loads(line) for line in (tmp_path / "ds" / "metadata.jsonl").read_text().splitlines()]
    assert {r["file"] for r in rows} == {j.file_path for j in jobs.values()}
    for row in rows:
        assert hashlib.sha256(httpx.get(row["url"]).content).hexdigest() == jobs[row["id"]].sha256
    refused = CliRunner().invoke(cli, ["export", "--ledger", ledger, "--format", "videofolder", "--presign", "1h",
                                       "-o", str(tmp_path / "ds2")])
    assert refused.exit_code == 2 and "needs --link" in refused.output


def test_a_clip_whose_file_is_on_another_host_is_named_not_silently_skipped(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ledger = _simulated_run(tmp_path, str(tmp_path / "clips"))
    gone = sorted((tmp_path / "clips").glob("*.mp4"))[0]
    gone.unlink()  # as if it were on the disk of the host that downloaded it
    done = CliRunner().invoke(cli, ["export", "--ledger", ledger, "--format", "videofolder", "-o",
                                    str(tmp_path / "ds")])
    assert done.exit_code == 0, done.output
    assert "1 video(s)" in done.output and "1 skipped" in done.output
    assert "missing: " in done.output and f"{gone}: not on this host" in done.output


def test_the_gallery_plays_clips_of_the_bucket_by_presigned_urls(bucket, tmp_path):
    _, name = bucket
    ledger = _simulated_run(tmp_path, f"s3://{name}/gallery")
    done = CliRunner().invoke(cli, ["report", "--ledger", ledger, "-o", str(tmp_path / "r.html")])
    assert done.exit_code == 0, done.output
    page = (tmp_path / "r.html").read_text()
    assert "2 clip(s) play from their output store by presigned URLs" in page and "(7 days;" in page
    assert SECRET not in page
    with Ledger(ledger) as led:
        hashes = {j.sha256 for j in led.iter_batch("small")}
    urls = re.findall(r'<video [^>]*src="([^"#]+)#t=0\.05"', page)
    assert len(urls) == 2
    assert {hashlib.sha256(httpx.get(html.unescape(u)).content).hexdigest() for u in urls} == hashes
    too_long = CliRunner().invoke(cli, ["report", "--ledger", ledger, "-o", str(tmp_path / "r2.html"),
                                        "--presign", "8d"])
    assert too_long.exit_code == 2 and "--presign must be between 1 minute and 7 days" in too_long.output


def test_temporary_credentials_are_never_written_into_a_presigned_url(bucket, monkeypatch):
    _, name = bucket
    monkeypatch.setenv("AWS_SESSION_TOKEN", "fleet-session-token-that-must-stay-private")
    location = f"s3://{name}/p/clip.mp4"
    with pytest.raises(OutputStoreError, match="session token"):
        ClipStores().presign(location, 3600)


# --- a runner killed in the middle of an upload ----------------------------------------------------

def _killed(served: str, ledger_url: str, tmp_path: Path, out: str, rows: int, failpoint: str,
            concurrency: int = 2) -> tuple[Path, str]:
    """A batch of `rows` jobs run into `out` until the runner is killed (-9) at `failpoint`:
    (its manifest, `out`)."""
    manifest = tmp_path / "m.yaml"
    manifest.write_text(small_manifest(n_rows=rows))
    code, said = _finish(_run(served, manifest, ledger_url, out, tmp_path, failpoint=failpoint,
                              concurrency=concurrency))
    assert code == -9, said
    return manifest, out


def test_a_runner_killed_mid_upload_leaves_no_object_and_the_rerun_stores_each_clip_once(bucket, served, tmp_path,
                                                                                       ledger_url):
    s3, name = bucket
    manifest, out = _killed(served, ledger_url, tmp_path, f"s3://{name}/killed", 3, "mid-upload:2")
    with Ledger(ledger_url) as led:
        states = Counter(j.state for j in led.iter_batch("small"))
    assert states["completed"] <= 1 and states["completed"] + states["rendered"] >= 2, states
    finished = _objects(s3, name)
    assert len(finished) == states["completed"]  # the clip being uploaded is nowhere under its name
    open_uploads = s3.list_multipart_uploads(Bucket=name).get("Uploads", [])
    assert open_uploads and all("/.partial/" in u["Key"] for u in open_uploads)

    code, said = _finish(_run(served, manifest, ledger_url, out, tmp_path))
    assert code == 0, said
    with Ledger(ledger_url) as led:
        jobs = list(led.iter_batch("small"))
        downloads = Counter(e.kind for j in jobs for e in led.events(j.id) if e.kind == "downloaded")
    assert all(j.state == "completed" for j in jobs) and downloads["downloaded"] == 3  # each clip stored once
    finished = _objects(s3, name)
    assert sorted(finished) == sorted(j.file_path.split("/", 3)[3] for j in jobs)
    for job in jobs:
        assert hashlib.sha256(finished[job.file_path.split("/", 3)[3]]).hexdigest() == job.sha256
    # what the killed process left is young: kept by this run, removed once it is old enough to be dead
    store = BucketOutputs(out)
    assert anyio.run(store.clean, time.time()) == 0
    assert anyio.run(store.clean, time.time() + 7 * 3600) >= 1
    assert s3.list_multipart_uploads(Bucket=name).get("Uploads", []) == []
    assert len(_objects(s3, name)) == 3


# --- `outputs:` in the manifest ---------------------------------------------------------------------

def test_the_manifest_names_the_output_store_and_a_simulated_run_writes_beside_it(bucket, tmp_path, monkeypatch):
    s3, name = bucket
    monkeypatch.chdir(tmp_path)
    manifest = tmp_path / "m.yaml"
    manifest.write_text(small_manifest(n_rows=2).replace("rows:\n", f"outputs: s3://{name}/dataset\nrows:\n", 1))
    done = CliRunner().invoke(cli, ["run", str(manifest), "--simulate", "--sim-render-seconds", "0.02",
                                    "--ledger", str(tmp_path / "l.db")])
    assert done.exit_code == 0, done.output
    keys = sorted(_objects(s3, name))
    assert len(keys) == 2 and all(k.startswith("dataset/simulated/") for k in keys), keys
    assert not (tmp_path / "outputs").exists()
    # --out overrides it
    elsewhere = CliRunner().invoke(cli, ["run", str(manifest), "--simulate", "--sim-render-seconds", "0.02",
                                         "--ledger", str(tmp_path / "l2.db"), "--out", str(tmp_path / "here")])
    assert elsewhere.exit_code == 0, elsewhere.output
    assert len(list((tmp_path / "here").glob("*.mp4"))) == 2 and len(_objects(s3, name)) == 2


def test_a_real_run_takes_the_manifests_outputs_and_out_overrides_it(bucket, tmp_path):
    from batcher.launch import output_place
    from batcher.manifest import load_manifest
    _, name = bucket
    manifest = tmp_path / "m.yaml"
    manifest.write_text(small_manifest(n_rows=1).replace("rows:\n", f"outputs: s3://{name}/dataset\nrows:\n", 1))
    m = load_manifest(manifest)
    assert m.outputs == f"s3://{name}/dataset"
    _, store = output_place(m, None, simulated=False)
    assert store is not None and store.location("a.mp4") == f"s3://{name}/dataset/a.mp4"
    folder, none = output_place(m, str(tmp_path / "clips"), simulated=False)
    assert none is None and folder == tmp_path / "clips"
    _, other = output_place(m, f"s3://{name}/other", simulated=False)
    assert other is not None and other.location("a.mp4") == f"s3://{name}/other/a.mp4"


OUTPUTS_THAT_ARE_NO_STORE = {
    "./clips": "outputs must be an s3://BUCKET/PREFIX address, not './clips' (a local folder is given with",
    "5": "outputs must be an s3://BUCKET/PREFIX address, not a number",
    "s3://Not_A_Bucket/p": "outputs bucket 'Not_A_Bucket' is not a valid bucket name",
    "s3://bucket/a/../b": "outputs prefix 'a/../b' has an empty, '.' or '..' part",
}


def test_an_outputs_field_that_is_no_store_is_refused_at_its_line_by_validate(tmp_path):
    """`batcher validate` names the line of each `outputs:` that is no s3:// address, and nothing else."""
    for n, (value, why) in enumerate(OUTPUTS_THAT_ARE_NO_STORE.items()):
        manifest = tmp_path / f"m{n}.yaml"
        manifest.write_text(small_manifest(n_rows=1).replace("rows:\n", f"outputs: {value}\nrows:\n", 1))
        done = CliRunner().invoke(cli, ["validate", str(manifest)])
        outputs_line = small_manifest(n_rows=1).splitlines().index("rows:") + 1
        [said] = done.output.strip().splitlines()
        assert done.exit_code == 2 and said.startswith(f"{manifest}:{outputs_line}: {why}"), done.output


def test_a_clip_uploaded_before_its_runner_was_killed_is_found_not_downloaded_again(bucket, served, tmp_path,
                                                                                  ledger_url):
    """Killed after the object is in place and before the ledger says so: the rerun finds the clip
    by the API job id it records (so a lapsed URL could not lose it) and stores nothing twice."""
    s3, name = bucket
    # one job at a time: two renders ending together could both be uploaded before the first
    # upload's failpoint runs (the kill would then leave two objects, not one)
    manifest, out = _killed(served, ledger_url, tmp_path, f"s3://{name}/adopt", 2, "after-upload:1", concurrency=1)
    assert len(_objects(s3, name)) == 1
    code, said = _finish(_run(served, manifest, ledger_url, out, tmp_path))
    assert code == 0, said
    with Ledger(ledger_url) as led:
        jobs = list(led.iter_batch("small"))
        details = [e.detail or "" for j in jobs for e in led.events(j.id) if e.kind == "downloaded"]
    assert all(j.state == "completed" for j in jobs) and len(details) == 2
    assert sum("found in the output store" in d for d in details) == 1
    finished = _objects(s3, name)
    assert len(finished) == 2 and not any(".2.mp4" in k for k in finished)
    for job in jobs:
        assert hashlib.sha256(finished[job.file_path.split("/", 3)[3]]).hexdigest() == job.sha256
