"""Local reference images uploaded to a real S3-compatible server on loopback (moto in server
mode): once each, by content; presigned URLs made at submission that fetch exactly the file;
reruns that upload nothing; credentials in no file; a served simulator fetching the URLs."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx
import pytest
from click.testing import CliRunner

from batcher import api
from batcher.cli import cli
from batcher.errors import PreflightFailed, ReferenceStoreError, UsageError
from batcher.ledger import Ledger
from batcher.references import S3Store, StoreSettings
from batcher.run import RunOptions
from batcher.simulator import SimConfig, Simulator, png_image

from .conftest import run_against, serving

boto3 = pytest.importorskip("boto3")

ACCESS_KEY = "AKIATESTBATCHER12345"
SECRET_KEY = "s3cr3t/batcher+TEST+do-not-leak-0123456789"
API_KEY = "pd_test_key_for_the_reference_store_0001"


@pytest.fixture
def aws(s3_endpoint, monkeypatch):
    """Credentials and endpoint in the environment, as a user sets them; a fresh bucket."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    bucket = f"refs-{hashlib.sha256(str(id(monkeypatch)).encode()).hexdigest()[:10]}"
    s3.create_bucket(Bucket=bucket)
    return s3, bucket


def objects(s3, bucket: str) -> dict[str, tuple[int, object]]:
    listed = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
    return {o["Key"]: (o["Size"], o["LastModified"]) for o in listed}


def image(path: Path, side: int = 512) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_image(side, side, 0))
    return path


@pytest.fixture
def chars(tmp_path):
    image(tmp_path / "chars" / "knight" / "a-front.png", 600)
    image(tmp_path / "chars" / "knight" / "b-side.png", 512)
    image(tmp_path / "chars" / "mare" / "mare.png", 700)
    return tmp_path


def manifest(tmp_path: Path, bucket: str, prompts: tuple[str, ...] = ("a knight rides", "a knight rests")) -> Path:
    rows = "\n".join(f"  - prompt: {p}\n    references: chars/knight" for p in prompts)
    path = tmp_path / "m.yaml"
    path.write_text(f"version: 1\nbatch: stored\nreference_store: s3://{bucket}/characters\n"
                    f"defaults:\n  duration: 3\nrows:\n{rows}\n  - prompt: a mare\n"
                    f"    references: [chars/mare, chars/knight/a-front.png]\n")
    return path


@pytest.fixture
def served():
    """The simulator served over HTTP on loopback: it fetches each job's reference URLs."""
    sim = Simulator(SimConfig(api_key=API_KEY, render_seconds=0.02))
    with serving(sim) as base:
        yield sim, base


def run(path: Path, tmp_path: Path, base: str, **options):
    return run_against(path, tmp_path, base, API_KEY, **options)


def test_local_images_are_uploaded_once_and_a_rerun_uploads_nothing(aws, chars, served):
    s3, bucket = aws
    sim, base = served
    path = manifest(chars, bucket)
    report = run(path, chars, base)
    assert report.counts["completed"] == 3, report.messages
    stored = objects(s3, bucket)
    # three distinct images, each once, under its content's name
    assert sorted(stored) == sorted(f"characters/{hashlib.sha256(p.read_bytes()).hexdigest()}.png" for p in
                                    (chars / "chars/knight/a-front.png", chars / "chars/knight/b-side.png",
                                     chars / "chars/mare/mare.png"))
    assert report.uploads == "3 local reference image(s): 3 uploaded (0.0 MB), 0 already in the store"
    assert sim.record()["reference_fetches"] >= 3  # the simulator fetched the presigned URLs itself
    # a rerun, and a new batch with the same images: nothing uploaded again, objects untouched
    path.write_text(path.read_text().replace("a knight rests", "a knight sleeps").replace("a mare", "a mare runs"))
    again = run(path, chars, base)
    assert again.uploads == "3 local reference image(s): 0 uploaded (0.0 MB), 3 already in the store"
    assert objects(s3, bucket) == stored
    with Ledger(chars / "l.db") as led:
        rows = led.stored_images(S3Store(StoreSettings.of(f"s3://{bucket}/characters")).identity,
                                 [f"local:sha256:{k.split('/')[-1][:-4]}" for k in stored])
    assert len(rows) == 3 and all(r.uploaded for r in rows.values())


def test_a_presigned_url_fetches_exactly_the_files_bytes_and_lives_as_long_as_told(aws, chars):
    s3, bucket = aws
    data = (chars / "chars/knight/a-front.png").read_bytes()
    store = S3Store(StoreSettings.of(f"s3://{bucket}/p", url_lifetime="90m"))
    name = f"{hashlib.sha256(data).hexdigest()}.png"
    anyio.run(lambda: store.upload(name, data, "PNG", name[:-4]))
    url = store.url_for(name)
    query = parse_qs(urlsplit(url).query)
    assert query["X-Amz-Expires"] == ["5400"]
    assert httpx.get(url).content == data
    assert anyio.run(lambda: store.holds(name, len(data), name[:-4])) is True
    assert anyio.run(lambda: store.holds(name, len(data) + 1, name[:-4])) is False  # another size under the name
    assert anyio.run(lambda: store.holds(name, len(data), "0" * 64)) is False  # recorded as other content
    assert s3.head_object(Bucket=bucket, Key=f"p/{name}")["Metadata"] == {"sha256": name[:-4]}
    default = S3Store(StoreSettings.of(f"s3://{bucket}/p"))
    assert parse_qs(urlsplit(default.url_for(name)).query)["X-Amz-Expires"] == ["21600"]  # 6 hours


def test_a_public_bucket_gets_plain_urls(aws, chars, served, s3_endpoint):
    s3, bucket = aws
    _sim, base = served
    path = manifest(chars, bucket, prompts=("a knight rides",))
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{bucket}/*"}]}))
    public = f"{s3_endpoint}/{bucket}/characters"
    store = S3Store(StoreSettings.of(f"s3://{bucket}/characters", public_url=public))
    report = run(path, chars, base, reference_store=store)
    assert report.counts["completed"] == 2, report.messages
    assert store.url_for("ab.png") == f"{public}/ab.png"


def test_the_key_and_storage_credentials_appear_in_no_file_and_no_output(aws, chars, served, monkeypatch):
    _s3, bucket = aws
    _sim, base = served
    path = manifest(chars, bucket)
    monkeypatch.setenv("PIXELDOJO_API_KEY", API_KEY)
    result = CliRunner().invoke(cli, ["run", str(path), "--ledger", str(chars / "l.db"), "--api-base", base,
                                      "--out", str(chars / "out"), "--expected-render", "0.05", "-v",
                                      "--log-json", str(chars / "log.jsonl"), "--report", str(chars / "r.html")])
    assert result.exit_code == 0, result.output
    for args in (["export", "--ledger", str(chars / "l.db"), "--format", "jsonl", "-o", str(chars / "e.jsonl")],
                 ["status", "--ledger", str(chars / "l.db")]):
        out = CliRunner().invoke(cli, args)
        assert out.exit_code == 0, out.output
        assert ACCESS_KEY not in out.output and SECRET_KEY not in out.output and API_KEY not in out.output
    secrets = [s.encode() for s in (ACCESS_KEY, SECRET_KEY, API_KEY)]
    files = [p for p in chars.rglob("*") if p.is_file()]
    assert any(p.name == "l.db" for p in files) and any(p.suffix == ".mp4" for p in files)
    for p in files:
        data = p.read_bytes()
        assert not any(s in data for s in secrets), p
    assert not any(s.decode() in result.output for s in secrets)


def test_an_api_that_repeats_a_presigned_url_gets_it_redacted():
    from batcher.client import PixelDojoClient
    client = PixelDojoClient(API_KEY, "http://127.0.0.1:9", also_redact=(ACCESS_KEY, SECRET_KEY))
    text = (f"cannot fetch http://s3/b/x.png?X-Amz-Credential={ACCESS_KEY}%2F20261125%2Fus-east-1%2Fs3"
            "&X-Amz-Signature=0123456789abcdef0123456789abcdef")
    shown = client.redact(text)
    assert ACCESS_KEY not in shown and "0123456789abcdef0123" not in shown and "[redacted]" in shown
    anyio.run(client.aclose)


def test_plan_says_how_many_are_uploaded_and_how_many_bytes_are_left(aws, chars, served):
    s3, bucket = aws
    _sim, base = served
    path = manifest(chars, bucket)
    total = sum(p.stat().st_size for p in (chars / "chars").rglob("*.png"))
    before = CliRunner().invoke(cli, ["plan", str(path), "--ledger", str(chars / "l.db"), "--json"])
    assert before.exit_code == 0, before.output
    assert json.loads(before.output)["local_images"]["stored"] == 0
    assert json.loads(before.output)["local_images"]["bytes_to_upload"] == total
    assert objects(s3, bucket) == {}  # plan uploads nothing
    run(path, chars, base)
    after = CliRunner().invoke(cli, ["plan", str(path), "--ledger", str(chars / "l.db")])
    assert after.exit_code == 0, after.output
    assert "local images: 3, 3 already uploaded to " in after.output and "0.0 MB left to upload" in after.output


def test_a_missing_bucket_is_one_line_exit_2_and_nothing_submitted(aws, chars, served, monkeypatch):
    _s3, _bucket = aws
    sim, base = served
    path = manifest(chars, "no-such-bucket-here")
    monkeypatch.setenv("PIXELDOJO_API_KEY", API_KEY)
    result = CliRunner().invoke(cli, ["run", str(path), "--ledger", str(chars / "l.db"), "--api-base", base,
                                      "--out", str(chars / "out")])
    assert result.exit_code == 2, result.output
    [line] = result.stderr.splitlines()[-1:]
    assert line.startswith("batcher: cannot upload ") and "no-such-bucket-here" in line and "NoSuchBucket" in line
    assert sim.record()["run_bodies"] == 0


def test_no_credentials_is_a_clear_error_before_anything(chars, monkeypatch, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(ReferenceStoreError, match="no credentials for the reference store aws s3://b-x/p"):
        S3Store(StoreSettings.of("s3://b-x/p"))


def test_a_changed_image_is_refused_before_anything_is_spent(aws, chars, served):
    s3, bucket = aws
    sim, base = served
    m = api.load(manifest(chars, bucket))
    with Ledger(chars / "l.db") as led:
        api.stage(led, m)
    image(chars / "chars/knight/b-side.png", 800)  # edited after the batch was planned
    to = api.target(api_key=API_KEY, api_base=base)
    opts = RunOptions.of(out_dir=chars / "out", expected_render=0.02)
    with pytest.raises(PreflightFailed) as caught:
        anyio.run(lambda: api.run_async(m, ledger=chars / "l.db", options=opts, to=to, stage_jobs=False))
    [line] = caught.value.lines
    assert line == (f"{chars / 'm.yaml'}:8: reference {chars / 'chars/knight/b-side.png'}: changed since the batch "
                    "was planned: run from its manifest again to plan the new content")
    assert sim.record()["run_bodies"] == 0 and objects(s3, bucket) == {}


@pytest.mark.parametrize("given, why", [
    ("s3://", "is not an s3://BUCKET/PREFIX address"), ("https://b/p", "is not an s3://BUCKET/PREFIX address"),
    ("s3://Bad_Bucket/p", "is not a valid bucket name"), ("s3://bucket/a/../b", "'..' part"),
])
def test_store_addresses_are_checked(given, why):
    with pytest.raises(UsageError, match=why.replace(".", r"\.").replace("(", r"\(")):
        StoreSettings.of(given)


def test_the_manifest_names_a_store_with_its_settings_and_its_errors_have_lines(write):
    from batcher.errors import ManifestError
    path = write("m.yaml", "version: 1\nreference_store:\n  url: s3://bucket/p\n  url_lifetime: 2h\n"
                           "  endpoint: http://127.0.0.1:9000\nrows:\n  - prompt: a\n")
    store = api.load(path).reference_store
    assert store == StoreSettings("s3://bucket/p", "http://127.0.0.1:9000", None, 7200.0)
    bad = write("n.yaml", "version: 1\nreference_store:\n  url: s3://bucket/p\n  url_lifetme: 2h\n"
                          "rows:\n  - prompt: a\n    references: [https://example.com/a.png]\n")
    with pytest.raises(ManifestError) as caught:
        api.plan(api.load(bad))
    assert [str(d) for d in caught.value.diagnostics] == [
        f"{bad}:4: unknown reference_store field 'url_lifetme' (did you mean 'url_lifetime'?)"]


def test_a_simulated_run_with_a_store_on_this_machine_renders_every_job(aws, chars, monkeypatch):
    """`run --simulate --reference-store s3://...` (issue 27, 1): the in-process simulator fetches the
    presigned URLs from the store on loopback, as the real API fetches them from your bucket."""
    from click.testing import CliRunner

    from batcher.cli import cli
    s3, bucket = aws
    monkeypatch.chdir(chars)
    path = manifest(chars, bucket)
    done = CliRunner().invoke(cli, ["run", str(path), "--simulate", "--sim-render-seconds", "0.02",
                                    "--reference-store", f"s3://{bucket}/characters",
                                    "--ledger", str(chars / "sim.db")])
    assert done.exit_code == 0, done.output
    assert "3 completed" in done.output and "paying again" not in done.output
    assert len(objects(s3, bucket)) == 3


def test_a_store_on_another_host_fails_a_simulated_job_without_saying_it_pays_again():
    from batcher.simulator.references import UploadStore, reference_problem
    url = "https://my-bucket.s3.amazonaws.com/a.png?X-Amz-Signature=s"
    problem, fetched = reference_problem(url, UploadStore(), None)
    assert problem == "cannot be reached (the in-process simulator reaches no host but this machine)"
    assert fetched is False
