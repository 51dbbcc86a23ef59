"""What a hostile review of the reference store found, each pinned: presigned URLs the API hands
back are not taken for our key, signatures in any encoding are redacted, the profile's region
signs URLs, simulated runs never touch the user's bucket, settings that lie give one line,
records written by several runners at once, local images per host, files that are not files."""
from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx
import pytest
from click.testing import CliRunner

from batcher import api
from batcher.cli import cli
from batcher.client import PixelDojoClient
from batcher.errors import ManifestError, UsageError
from batcher.ledger import Ledger, StoredImage
from batcher.references import S3Store, StoreSettings, parse_lifetime
from batcher.run.uploads import read_image
from batcher.simulator import png_image

boto3 = pytest.importorskip("boto3")

ACCESS_KEY = "AKIAHOSTILEREVIEW0001"
SECRET_KEY = "hostile/Secret+Key+0123456789abcdefghijkl"
API_KEY = "pd_hostile_review_key_0001"
SIGNED = "https://out.example.net/v.mp4?X-Amz-Credential=AKIAOTHERSIGNER%2F20261125%2Fus-east-1%2Fs3&" \
         "X-Amz-Signature=" + "ab" * 32


class StatusAnswer(httpx.AsyncBaseTransport):
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"jobId": "job_1", "status": "completed", "output": {"video": SIGNED}})


def test_a_presigned_output_url_from_the_api_is_not_taken_for_our_key_when_a_store_is_set():
    async def go():
        async with PixelDojoClient(API_KEY, "https://pixeldojo.ai", transport=StatusAnswer(),
                                   also_redact=(ACCESS_KEY, SECRET_KEY)) as client:
            return await client.status("job_1")
    assert anyio.run(go).video_url == SIGNED


@pytest.mark.parametrize("text", [
    f"fetch of https://s3/b/x.png?X-Amz-Signature={'c' * 64}&x=1 failed",
    f"fetch of https%3A%2F%2Fs3%2Fb%2Fx.png%3FX-Amz-Signature%3D{'c' * 64} failed",
    "token X-Amz-Security-Token=FwoGZXIvYXdzEJr%2Frefreshed-token-99 here",
    f"X-Amz-Credential={ACCESS_KEY}%2F20261125 and {SECRET_KEY}",
])
def test_signatures_tokens_and_credentials_are_redacted_in_any_encoding(text):
    client = PixelDojoClient(API_KEY, "http://127.0.0.1:9", also_redact=(ACCESS_KEY, SECRET_KEY))
    shown = client.redact(text)
    anyio.run(client.aclose)
    for secret in ("c" * 64, "refreshed-token-99", ACCESS_KEY, SECRET_KEY):
        assert secret not in shown
    assert "[redacted]" in shown


def test_the_profiles_region_signs_presigned_urls(tmp_path, monkeypatch):
    config = tmp_path / "config"
    config.write_text("[default]\nregion = eu-west-1\n")
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    url = S3Store(StoreSettings.of("s3://bucket-x/p")).url_for("a.png")
    assert "/eu-west-1/s3/aws4_request" in parse_qs(urlsplit(url).query)["X-Amz-Credential"][0]


def test_a_simulated_run_never_uploads_to_the_bucket_the_manifest_names(tmp_path, s3_endpoint, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="users-real-bucket")
    (tmp_path / "chars").mkdir()
    (tmp_path / "chars" / "a.png").write_bytes(png_image(512, 512))
    manifest = tmp_path / "m.yaml"
    manifest.write_text(f"version: 1\nreference_store:\n  url: s3://users-real-bucket/p\n  endpoint: {s3_endpoint}\n"
                        "rows:\n  - prompt: a\n    references: chars\n")
    result = CliRunner().invoke(cli, ["run", str(manifest), "--simulate", "--sim-render-seconds", "0.02",
                                      "--expected-render", "0.02", "--ledger", str(tmp_path / "l.db"),
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "1 local reference image(s): 1 uploaded" in result.output
    assert s3.list_objects_v2(Bucket="users-real-bucket").get("KeyCount", 0) == 0


@pytest.mark.parametrize("field, why", [
    ("endpoint: 5", "reference_store endpoint must be text, not a number"),
    ("public_url: 5", "reference_store public_url must be text, not a number"),
    ("url_lifetime: " + "9" * 400, "reference URL lifetime must be between 1 minute and 7 days"),
    ("endpoint: http://h:99999", "is not an http(s) URL with a host"),
    ("endpoint: 'http://[::1'", "is not an http(s) URL with a host"),
    ("endpoint: http://user:pw@127.0.0.1:9000", "carries a user name or password"),
])
def test_store_settings_that_lie_are_one_line_with_their_line(write, field, why):
    path = write("m.yaml", f"version: 1\nreference_store:\n  url: s3://bucket/p\n  {field}\nrows:\n"
                           "  - prompt: a\n    references: [https://example.com/a.png]\n")
    with pytest.raises(ManifestError) as caught:
        api.plan(api.load(path))
    [line] = [str(d) for d in caught.value.diagnostics]
    assert line.startswith(f"{path}:") and why in line and "pw" not in line


def test_an_endpoint_from_the_environment_is_checked_too(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://u:secretpw@127.0.0.1:9000")
    with pytest.raises(UsageError, match="carries a user name or password") as caught:
        S3Store(StoreSettings.of("s3://bucket/p"))
    assert "secretpw" not in str(caught.value)
    assert parse_lifetime("90m") == 5400


def test_several_runners_recording_the_same_images_at_once_never_collide(ledger_url):
    with Ledger(ledger_url) as led:
        led.schema_version()
    errors: list[BaseException] = []

    def record(n: int) -> None:
        try:
            with Ledger(ledger_url) as led:
                for i in range(20):
                    address = f"local:sha256:{i:064x}"
                    led.write(led.remember_local_images([(address, f"/img/{i}.png", 10, f"m.yaml:{n}")], float(n)))
                    led.write(led.remember_stored([StoredImage("aws s3://b/p", address, f"{i:064x}.png", 10, n == 0,
                                                               float(n))]))
        except BaseException as e:
            errors.append(e)
    threads = [threading.Thread(target=record, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with Ledger(ledger_url) as led:
        stored = led.stored_images("aws s3://b/p", [f"local:sha256:{i:064x}" for i in range(20)])
    assert len(stored) == 20


def test_each_host_keeps_its_own_path_for_the_same_image(tmp_path, monkeypatch):
    import socket
    with Ledger(tmp_path / "l.db") as led:
        monkeypatch.setattr(socket, "gethostname", lambda: "host-a")
        led.write(led.remember_local_images([("local:sha256:" + "1" * 64, "/a/knight.png", 5, "m.yaml:3")], 1.0))
        monkeypatch.setattr(socket, "gethostname", lambda: "host-b")
        led.write(led.remember_local_images([("local:sha256:" + "1" * 64, "/b/knight.png", 5, "m.yaml:3")], 2.0))
        assert led.local_images()["local:sha256:" + "1" * 64].path == "/b/knight.png"
        monkeypatch.setattr(socket, "gethostname", lambda: "host-a")
        assert led.local_images()["local:sha256:" + "1" * 64].path == "/a/knight.png"
        monkeypatch.setattr(socket, "gethostname", lambda: "host-c")
        assert led.local_images() == {}
        assert led.local_images(any_host=True)["local:sha256:" + "1" * 64].path == "/b/knight.png"


def test_a_fifo_or_device_where_an_image_was_is_refused_at_once(tmp_path):
    fifo = tmp_path / "a.png"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):
        read_image(fifo)
    with pytest.raises(ValueError, match="not a regular file"):
        read_image(Path("/dev/zero"))
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG" + b"\0" * (11 * 1024 * 1024))
    assert len(read_image(big)) == 10 * 1024 * 1024 + 1  # never more than the model accepts, plus one


def test_uploaded_objects_hold_exactly_the_bytes_their_name_hashes(tmp_path, s3_endpoint, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="exact-bytes")
    (tmp_path / "c").mkdir()
    for side in (500, 600):
        (tmp_path / "c" / f"{side}.png").write_bytes(png_image(side, side))
    manifest = tmp_path / "m.yaml"
    manifest.write_text("version: 1\nreference_store: s3://exact-bytes/r\nrows:\n  - prompt: a\n    references: c\n")
    store = S3Store(StoreSettings.of("s3://exact-bytes/r"))
    opts = api.RunOptions.of(out_dir=tmp_path / "out", expected_render=0.02, reference_store=store, check_schema=False)
    from batcher.simulator import SimConfig, Simulator

    sim = Simulator(SimConfig(render_seconds=0.02))
    # In-process the simulator cannot fetch the bucket: the jobs fail there, but the uploads are made.
    anyio.run(lambda: api.run_async(manifest, ledger=tmp_path / "l.db", options=opts, to=api.target(simulate=sim)))
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="exact-bytes")["Contents"]]
    assert len(keys) == 2
    for key in keys:
        body = s3.get_object(Bucket="exact-bytes", Key=key)["Body"].read()
        assert hashlib.sha256(body).hexdigest() == key.split("/")[-1][:-4]
    assert json.dumps(keys)  # (named by content, under the prefix)
    assert all(k.startswith("r/") for k in keys)
