"""The one bucket client (storage.s3.Bucket) against a real S3-compatible server on loopback:
streamed uploads that are atomic and checked, listings, presigned URLs, downloads, clean-up of
uploads a killed process left, and failures that never carry a credential."""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from datetime import datetime, timezone

import anyio
import httpx
import pytest

from batcher.errors import OutputStoreError
from batcher.storage import Bucket, ObjectFacts
from batcher.storage.s3 import PART_SIZE

boto3 = pytest.importorskip("boto3")

ACCESS_KEY, SECRET_KEY = "AKIASTORAGETESTKEY01", "storage-test-secret-key-0123456789abcdef"


@pytest.fixture
def bucket(s3_endpoint, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    name = f"out-{hashlib.sha256(str(id(monkeypatch)).encode()).hexdigest()[:10]}"
    s3.create_bucket(Bucket=name)
    store = Bucket(name, "clips", f"{s3_endpoint} s3://{name}/clips", endpoint=s3_endpoint, what="output store",
                   error=OutputStoreError)
    return s3, name, store


async def _chunks(data: bytes, size: int = 64 * 1024, fail_after: int | None = None) -> AsyncIterator[bytes]:
    for at in range(0, len(data), size):
        if fail_after is not None and at >= fail_after:
            raise OSError("the connection to the API dropped")
        yield data[at:at + size]
        await anyio.sleep(0)


def _keys(s3, name: str) -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket=name).get("Contents", [])]


def test_a_streamed_upload_of_several_parts_lands_whole_with_its_hash_and_size(bucket):
    s3, name, store = bucket
    data = bytes(range(256)) * ((2 * PART_SIZE + 12345) // 256)  # three parts
    size, sha = anyio.run(lambda: store.stream("batch/a.mp4", _chunks(data, 1 << 20), "video/mp4"))
    assert (size, sha) == (len(data), hashlib.sha256(data).hexdigest())
    got = s3.get_object(Bucket=name, Key="clips/batch/a.mp4")
    assert got["Body"].read() == data and got["ContentType"] == "video/mp4"
    assert got["Metadata"] == {"sha256": sha, "size": str(len(data))}
    assert _keys(s3, name) == ["clips/batch/a.mp4"]  # the temporary object is gone
    assert anyio.run(lambda: store.head("batch/a.mp4")) == ObjectFacts(len(data), sha)
    assert anyio.run(lambda: store.head("batch/missing.mp4")) is None
    assert store.uri("batch/a.mp4") == f"s3://{name}/clips/batch/a.mp4"


def test_a_failed_stream_leaves_nothing_under_the_name_and_no_open_upload(bucket):
    s3, name, store = bucket
    data = b"x" * (2 * PART_SIZE)  # fails after its first part was uploaded
    with pytest.raises(OSError):
        anyio.run(lambda: store.stream("b.mp4", _chunks(data, 1 << 20, fail_after=PART_SIZE + 1), "video/mp4"))
    assert _keys(s3, name) == []
    assert s3.list_multipart_uploads(Bucket=name).get("Uploads", []) == []


def test_what_a_killed_upload_left_is_cleaned_only_once_old_enough(bucket):
    s3, name, store = bucket
    # as a process killed mid-upload leaves them: an open multipart upload and a finished temporary
    # object, each named with the time it started (a server's own dates may be wrong: moto's are)
    started = int(time.time())
    s3.create_multipart_upload(Bucket=name, Key=f"clips/.partial/c.mp4.{started}.0001")
    s3.put_object(Bucket=name, Key=f"clips/.partial/d.mp4.{started}.0002", Body=b"half")
    s3.put_object(Bucket=name, Key="clips/keep.mp4", Body=b"done")
    assert anyio.run(lambda: store.listing()) == {"keep.mp4": ObjectFacts(4, None)}
    now = time.time()
    assert anyio.run(lambda: store.clean_partial(3600, now)) == 0  # young: may be a live upload
    assert anyio.run(lambda: store.clean_partial(3600, now + 7200)) == 2
    assert _keys(s3, name) == ["clips/keep.mp4"]
    assert s3.list_multipart_uploads(Bucket=name).get("Uploads", []) == []


def test_presigned_urls_and_downloads_give_the_very_bytes(bucket, tmp_path):
    _, _, store = bucket
    data = b"\0\0\0\x18ftypisom" + b"v" * 5000
    anyio.run(lambda: store.stream("e.mp4", _chunks(data), "video/mp4"))
    url = store.presign("e.mp4", 600)
    assert "X-Amz-Expires=600" in url and httpx.get(url).content == data
    anyio.run(lambda: store.download("e.mp4", tmp_path / "e.mp4"))
    assert (tmp_path / "e.mp4").read_bytes() == data


def test_a_failure_names_the_store_and_never_a_credential(s3_endpoint, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    store = Bucket("no-such-bucket-here", "p", "test s3://no-such-bucket-here/p", endpoint=s3_endpoint,
                   what="output store", error=OutputStoreError)
    with pytest.raises(OutputStoreError) as raised:
        anyio.run(lambda: store.stream("f.mp4", _chunks(b"abc"), "video/mp4"))
    message = str(raised.value)
    assert message.startswith("cannot upload f.mp4 to test s3://no-such-bucket-here/p: HTTP 404")
    assert ACCESS_KEY not in message and SECRET_KEY not in message


def test_a_temporary_object_not_named_as_ours_is_aged_by_the_store(bucket):
    s3, name, store = bucket
    s3.put_object(Bucket=name, Key="clips/.partial/g.mp4", Body=b"1")
    modified = s3.head_object(Bucket=name, Key="clips/.partial/g.mp4")["LastModified"]
    assert abs(modified.timestamp() - datetime.now(timezone.utc).timestamp()) < 300
    assert anyio.run(lambda: store.clean_partial(600, time.time())) == 0
    assert anyio.run(lambda: store.clean_partial(0, time.time() + 1)) == 1


def _download_into(store: Bucket, name: str, content: bytes):
    """The client streams `content` from a (fake, in-process) output URL straight into the bucket."""
    from batcher.client import PixelDojoClient

    async def go():
        transport = httpx.MockTransport(lambda request: httpx.Response(200, content=content))
        async with PixelDojoClient("secret-key-123", "https://pixeldojo.ai", transport=transport) as client:
            upload = await store.upload(name, "video/mp4")
            return await client.download("https://temp.pixeldojo.ai/x.mp4", upload, max_bytes=1 << 30)
    return anyio.run(go)


def test_a_video_streams_from_its_url_into_the_bucket_with_no_local_file(bucket, tmp_path, monkeypatch):
    from batcher.simulator import clip_for
    s3, name, store = bucket
    monkeypatch.chdir(tmp_path)
    clip = clip_for("job_1", 4, (1280, 720))
    got = _download_into(store, "b/one.mp4", clip)
    assert got.path is None and got.size == len(clip) and got.sha256 == hashlib.sha256(clip).hexdigest()
    assert got.video is not None and got.video.seconds == 4.0
    assert s3.get_object(Bucket=name, Key="clips/b/one.mp4")["Body"].read() == clip
    assert anyio.run(lambda: store.head("b/one.mp4")) == ObjectFacts(len(clip), got.sha256)
    assert list(tmp_path.iterdir()) == []  # nothing written locally


def test_a_video_that_is_not_whole_never_lands_in_the_bucket(bucket):
    from batcher.errors import MalformedAnswer
    from batcher.simulator import clip_for
    s3, name, store = bucket
    with pytest.raises(MalformedAnswer, match="not a whole MP4 file"):
        _download_into(store, "b/cut.mp4", clip_for("job_2")[:-300])
    assert _keys(s3, name) == []
    assert s3.list_multipart_uploads(Bucket=name).get("Uploads", []) == []
