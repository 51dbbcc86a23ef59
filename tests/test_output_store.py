"""The output store (`--out s3://BUCKET/PREFIX`, outputs.bucket.BucketOutputs) against a real
S3-compatible server on loopback: clips streamed in, found again quickly or fully, presigned,
fetched, and what a killed upload left cleaned."""

from __future__ import annotations

import hashlib
import time

import anyio
import httpx
import pytest

from batcher.client import PixelDojoClient
from batcher.errors import OutputStoreError, UsageError
from batcher.outputs.bucket import BucketOutputs, is_bucket_address
from batcher.simulator import clip_for

from .conftest import bucket_credentials, new_bucket

boto3 = pytest.importorskip("boto3")


@pytest.fixture
def store(s3_endpoint, monkeypatch):
    bucket_credentials(monkeypatch, "AKIAOUTPUTSTORETEST1", "output-store-test-secret-0123456789")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)  # as a user sets it for a run
    s3, name = new_bucket(s3_endpoint, "clips", monkeypatch)
    return s3, name, BucketOutputs(f"s3://{name}/batch-a", endpoint=s3_endpoint)


def _save(outputs: BucketOutputs, name: str, clip: bytes):
    async def go():
        transport = httpx.MockTransport(lambda request: httpx.Response(200, content=clip))
        async with PixelDojoClient("k" * 20, "https://pixeldojo.ai", transport=transport) as client:
            return await client.download("https://temp.pixeldojo.ai/v.mp4", await outputs.sink(name),
                                         max_bytes=1 << 30)
    return anyio.run(go)


def test_a_clip_saved_is_found_again_by_listing_and_by_head(store):
    s3, bucket, outputs = store
    clip = clip_for("job_1", 5, (1280, 720))
    got = _save(outputs, "row1_t1_abc.mp4", clip)
    location = outputs.location("row1_t1_abc.mp4")
    assert location == f"s3://{bucket}/batch-a/row1_t1_abc.mp4" and outputs.name_of(location) == "row1_t1_abc.mp4"
    assert anyio.run(lambda: outputs.holds("row1_t1_abc.mp4", got.size, got.sha256)) is True
    assert anyio.run(lambda: outputs.holds("row1_t1_abc.mp4", got.size, "0" * 64)) is False
    for full in (False, True):
        [found] = anyio.run(outputs.check, [(location, got.size, got.sha256)], full)
        assert found.ok, found
    # the same size, other bytes, put there by someone else: a listing cannot tell, a HEAD can
    s3.put_object(Bucket=bucket, Key="batch-a/row1_t1_abc.mp4", Body=bytes(len(clip)))
    [quick] = anyio.run(lambda: outputs.check([(location, got.size, got.sha256)], False))
    [full] = anyio.run(lambda: outputs.check([(location, got.size, got.sha256)], True))
    assert quick.ok and not full.ok and full.why == "does not match its recorded size and sha256"
    s3.delete_object(Bucket=bucket, Key="batch-a/row1_t1_abc.mp4")
    [gone] = anyio.run(lambda: outputs.check([(location, got.size, got.sha256)], False))
    assert not gone.ok and gone.why == "is gone"


def test_a_location_of_another_store_is_never_read_as_ours(store):
    _, bucket, outputs = store
    for foreign in (f"s3://{bucket}/other/x.mp4", f"s3://{bucket}/batch-a/.partial/x.mp4", "/home/u/x.mp4",
                    f"s3://{bucket}/batch-a/"):
        assert outputs.name_of(foreign) is None, foreign
        with pytest.raises(OutputStoreError):
            outputs.presign(foreign, 60)
    [checked] = anyio.run(lambda: outputs.check([("/home/u/x.mp4", 1, "a" * 64)], False))
    assert not checked.ok and checked.why == "is not in this output store"


def test_presigned_urls_play_and_fetch_copies_for_a_host_without_the_files(store, tmp_path):
    _, _, outputs = store
    clip = clip_for("job_2", 3, (720, 1280))
    _save(outputs, "r_t1_k.mp4", clip)
    location = outputs.location("r_t1_k.mp4")
    assert httpx.get(outputs.presign(location, 300)).content == clip
    anyio.run(lambda: outputs.fetch(location, tmp_path / "copy.mp4"))
    assert (tmp_path / "copy.mp4").read_bytes() == clip


def test_what_a_killed_upload_left_goes_once_it_is_stale(store):
    s3, bucket, outputs = store
    s3.create_multipart_upload(Bucket=bucket, Key=f"batch-a/.partial/r_t1_k.mp4.{int(time.time())}.0001")
    assert anyio.run(lambda: outputs.clean(time.time())) == 0
    assert anyio.run(lambda: outputs.clean(time.time() + 7 * 3600)) == 1
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_an_output_store_address_is_checked_and_named_as_such():
    assert is_bucket_address("s3://b/p") and not is_bucket_address("outputs/b")
    with pytest.raises(UsageError, match="output store"):
        BucketOutputs("s3://Not_A_Bucket/p")


# --- a run whose clips go to the bucket ---------------------------------------------------------------

def _run(tmp_path, out: str, *extra: str):
    from click.testing import CliRunner

    from batcher.cli import cli

    from .conftest import small_manifest
    manifest = tmp_path / "m.yaml"
    if not manifest.exists():
        manifest.write_text(small_manifest(n_rows=3))
    return CliRunner().invoke(cli, ["run", str(manifest), "--simulate", "--sim-render-seconds", "0.02",
                                    "--ledger", str(tmp_path / "l.db"), "--out", out, *extra])


def _jobs(tmp_path):
    from batcher.ledger import Ledger
    with Ledger(tmp_path / "l.db") as ledger:
        return list(ledger.iter_batch("small"))


def test_a_run_with_out_s3_streams_every_clip_into_the_bucket_and_a_rerun_checks_them_quickly(store, tmp_path,
                                                                                            monkeypatch):
    s3, bucket, _ = store
    monkeypatch.chdir(tmp_path)
    done = _run(tmp_path, f"s3://{bucket}/runs/small")
    assert done.exit_code == 0, done.output
    jobs = _jobs(tmp_path)
    assert len(jobs) == 3 and all(j.state == "completed" for j in jobs)
    for job in jobs:
        assert job.file_path == f"s3://{bucket}/runs/small/{job.label}_t{job.take}_{job.key}.mp4"
        body = s3.get_object(Bucket=bucket, Key=job.file_path.split("/", 3)[3])
        data = body["Body"].read()
        assert hashlib.sha256(data).hexdigest() == job.sha256 and len(data) == job.size
        assert body["Metadata"]["sha256"] == job.sha256
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"])
    assert len(keys) == 3 and not any(".partial" in k for k in keys)
    assert not (tmp_path / "outputs").exists()  # no local copy
    # a rerun: nothing downloaded again (one listing found every clip)
    again = _run(tmp_path, f"s3://{bucket}/runs/small")
    assert again.exit_code == 0 and "0 videos downloaded" in again.output, again.output
    # an object gone: downloaded again; an object replaced by other bytes of its size: only --verify full sees it
    s3.delete_object(Bucket=bucket, Key=keys[0])
    victim = keys[1]
    size = s3.head_object(Bucket=bucket, Key=victim)["ContentLength"]
    s3.put_object(Bucket=bucket, Key=victim, Body=bytes(size))
    quick = _run(tmp_path, f"s3://{bucket}/runs/small")
    assert quick.exit_code == 0 and "1 videos downloaded" in quick.output, quick.output
    full = _run(tmp_path, f"s3://{bucket}/runs/small", "--verify", "full")
    assert full.exit_code == 0 and "1 videos downloaded" in full.output, full.output
    for job in _jobs(tmp_path):
        data = s3.get_object(Bucket=bucket, Key=job.file_path.split("/", 3)[3])["Body"].read()
        assert hashlib.sha256(data).hexdigest() == job.sha256


def test_a_missing_bucket_stops_the_run_before_anything_is_sent(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    done = _run(tmp_path, "s3://no-such-bucket-for-clips/p")
    assert done.exit_code == 2
    assert all(j.state == "pending" and j.attempts == 0 for j in _jobs(tmp_path))
    last = done.output.strip().splitlines()[-1]
    assert last.startswith("batcher: cannot reach the output store ") and last.endswith(": HTTP 404"), last
    assert "output-store-test-secret" not in done.output
