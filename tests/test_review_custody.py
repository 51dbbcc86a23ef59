"""What a hostile review of the custody and dataset changes found, each pinned: a download that is
no video is cut at once (not stored to its cap), nested or endless MP4 headers cannot crash or
swell a run, a clip in a shared bucket never replaces another batch's, a failed download leaves no
upload open, exports sign and fetch only their own jobs' clips, and bad input is one line."""

from __future__ import annotations

import struct

import anyio
import httpx
import pytest
from click.testing import CliRunner

from batcher.cli import cli
from batcher.client import PixelDojoClient
from batcher.errors import MalformedAnswer, OutputGone, OutputStoreError, UsageError
from batcher.outputs.bucket import BucketOutputs, ClipStores, names_clip
from batcher.outputs.wholeness import WholeVideo
from batcher.simulator import clip_for
from batcher.views.exports import with_urls
from batcher.views.record import parse_splits

from .conftest import bucket_credentials, new_bucket

boto3 = pytest.importorskip("boto3")


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", 8 + len(payload)) + kind + payload


class Counting:
    """A sink that counts what reaches it."""

    def __init__(self) -> None:
        self.written, self.aborted, self.finished = 0, False, False

    async def write(self, chunk: bytes) -> None:
        self.written += len(chunk)

    async def finish(self) -> None:
        self.finished = True

    async def abort(self) -> None:
        self.aborted = True


def _download(content, sink, max_bytes=1 << 20, status=200):
    async def go():
        transport = httpx.MockTransport(lambda request: httpx.Response(status, content=content))
        async with PixelDojoClient("k" * 20, "https://pixeldojo.ai", transport=transport) as client:
            return await client.download("https://temp.pixeldojo.ai/v.mp4", sink, max_bytes=max_bytes)
    return anyio.run(go)


def test_a_body_that_stops_being_an_mp4_is_cut_at_once_not_stored_to_its_cap():
    async def body():
        yield _box(b"ftyp", b"isom" + bytes(12)) + b"\0\0\0\0" + b"junk"
        for _ in range(200):
            yield bytes(64 * 1024)
    sink = Counting()
    with pytest.raises(MalformedAnswer, match="not a whole MP4 file"):
        _download(body(), sink, max_bytes=1 << 30)
    assert sink.written < 64 * 1024 and sink.aborted and not sink.finished


def test_deeply_nested_boxes_give_a_verdict_not_a_recursion_error():
    trak = _box(b"tkhd", bytes(84))
    for _ in range(2000):
        trak = _box(b"trak", trak)
    data = _box(b"ftyp", b"isom" + bytes(12)) + _box(b"moov", trak) + _box(b"mdat", b"x")
    check = WholeVideo()
    check.feed(data)
    assert check.verdict() == "has no video track with a duration and frame size in its header"


def test_a_moov_running_to_the_end_of_the_file_is_not_kept_in_memory():
    check = WholeVideo()
    check.feed(_box(b"ftyp", b"isom" + bytes(12)) + b"\0\0\0\0moov")
    for _ in range(80):
        check.feed(bytes(64 * 1024))
    verdict = check.verdict()
    assert isinstance(verdict, str) and "a box running to its end at byte 24" in verdict
    assert check._moov is None  # nothing of the 5 MB kept


def test_huge_split_shares_are_one_line_not_an_overflow():
    with pytest.raises(UsageError, match="a share is above 1"):
        parse_splits("a=9e999999999,b=9e999999999")


def test_reject_from_a_missing_or_binary_file_is_one_line(tmp_path):
    missing = CliRunner().invoke(cli, ["reject", "--from", str(tmp_path / "nope.txt"), "--ledger",
                                       str(tmp_path / "l.db")])
    assert missing.exit_code == 2 and "Traceback" not in missing.output and "--from" in missing.output
    binary = tmp_path / "keys.txt"
    binary.write_bytes(b"\xff\xfe\x00k")
    garbled = CliRunner().invoke(cli, ["reject", "--from", str(binary), "--ledger", str(tmp_path / "l.db")])
    assert garbled.exit_code == 2 and "not UTF-8 text" in garbled.output


def test_exports_sign_and_fetch_only_a_clip_named_for_its_own_job():
    key = "a" * 20
    assert names_clip(f"s3://b/p/row0001_t1_{key}.mp4", key)
    assert names_clip(f"s3://b/p/row0001_t1_{key}.2.mp4", key)
    for foreign in ("s3://secret-bucket/creds.txt", f"s3://b/p/row0001_t1_{'b' * 20}.mp4",
                    f"s3://b/../x/row0001_t1_{key}.mp4", f"s3://b/p/.partial/row0001_t1_{key}.mp4",
                    f"/home/u/row0001_t1_{key}.mp4"):
        assert not names_clip(foreign, key), foreign
    rows = [{"id": key, "file": "s3://secret-bucket/creds.txt"}, {"id": key, "file": f"s3://Bad_Name/p/x_{key}.mp4"}]
    assert [r["url"] for r in with_urls(iter(rows), 60)] == [None, None]
    with pytest.raises(OutputStoreError):
        ClipStores().of("s3://Bad_Name/p/x.mp4")


@pytest.fixture
def outputs(s3_endpoint, monkeypatch):
    bucket_credentials(monkeypatch, "AKIAREVIEWCUSTODY01", "review-custody-secret-0123456789")
    s3, name = new_bucket(s3_endpoint, "review", monkeypatch)
    return s3, name, BucketOutputs(f"s3://{name}/shared", endpoint=s3_endpoint)


def test_a_clip_never_replaces_another_batchs_object_of_the_same_name(outputs):
    s3, bucket, store = outputs
    theirs, ours = clip_for("job_theirs", 5, (1280, 720)), clip_for("job_ours", 5, (1280, 720))
    s3.put_object(Bucket=bucket, Key="shared/row0001_t1_k.mp4", Body=theirs)

    async def save(data, own=None):
        sink = await store.sink("row0001_t1_k.mp4", own=own)
        transport = httpx.MockTransport(lambda request: httpx.Response(200, content=data))
        async with PixelDojoClient("k" * 20, "https://pixeldojo.ai", transport=transport) as client:
            await client.download("https://temp.pixeldojo.ai/v.mp4", sink, max_bytes=1 << 30)
        return sink.name
    assert anyio.run(save, ours) == "row0001_t1_k.2.mp4"
    assert s3.get_object(Bucket=bucket, Key="shared/row0001_t1_k.mp4")["Body"].read() == theirs
    assert s3.get_object(Bucket=bucket, Key="shared/row0001_t1_k.2.mp4")["Body"].read() == ours
    assert anyio.run(save, ours) == "row0001_t1_k.2.mp4"  # the same bytes again: found, no third copy
    # the job's own earlier copy (recorded as its location) may be replaced
    assert anyio.run(save, ours, store.location("row0001_t1_k.mp4")) == "row0001_t1_k.mp4"
    assert s3.get_object(Bucket=bucket, Key="shared/row0001_t1_k.mp4")["Body"].read() == ours


def test_a_download_that_fails_before_its_body_leaves_no_upload_open(outputs):
    """As the run's `_into_store` does: the sink is aborted whatever the download raised."""
    s3, bucket, store = outputs

    async def go():
        sink = await store.sink("row0002_t1_k.mp4")
        transport = httpx.MockTransport(lambda request: httpx.Response(404, content=b"gone"))
        try:
            async with PixelDojoClient("k" * 20, "https://pixeldojo.ai", transport=transport) as client:
                await client.download("https://temp.pixeldojo.ai/v.mp4", sink, max_bytes=1 << 30)
        except BaseException:
            await sink.abort()
            raise
    with pytest.raises(OutputGone):
        anyio.run(go)
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
