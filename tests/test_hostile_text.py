"""Secrets and hostile text (issue 23, items 10, 11, 12): a CSV export never hands a spreadsheet a
formula; a reference store that echoes its credentials gets them into no message, event, log or
file; the key, escaped or encoded any way an answer may hide it, is redacted on the whole path
from an answer to the ledger file, the exports and the status."""
from __future__ import annotations

import csv
import html
import json
import logging
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote

import anyio
import pytest
from click.testing import CliRunner

from batcher import api
from batcher.cli import cli
from batcher.client import PixelDojoClient
from batcher.ledger import Ledger
from batcher.policy import RetryPolicy
from batcher.run import RunOptions
from batcher.simulator import SimConfig, Simulator, png_image

from .conftest import small_manifest
from .hostile import HostileApi, Mode, escaped_key

BASE = "https://pixeldojo.ai"
FAST = RetryPolicy(base=0.01, cap=0.05, max_attempts=6)


def decodes_to(secret: str, text: str) -> bool:
    """Whether `text` holds `secret` once decoded as a reader would: JSON escapes (behind any
    number of backslashes), `\\/`, percent-escapes (several times), HTML character references,
    any case. Written apart from batcher's own decoder, so a test does not trust what it tests."""
    for _ in range(6):
        text = re.sub(r"\\+u([0-9a-fA-F]{4})", lambda m: chr(int(m[1], 16)), text)
        text = html.unescape(re.sub(r"\\+/", "/", unquote(text)))
    return secret.lower() in text.lower()


def assert_hidden(secret: str, blob: str | bytes, where: str) -> None:
    text = blob.decode("utf-8", "replace") if isinstance(blob, bytes) else blob
    assert secret not in text, f"the secret is in {where}"
    assert not decodes_to(secret, text), f"the secret is in {where}, encoded"


def files_under(root: Path) -> Iterator[Path]:
    return (p for p in root.rglob("*") if p.is_file())


def run_hostile(tmp_path: Path, manifest: Path, sim: Simulator, *modes: Mode, **settings: object):
    transport = HostileApi(sim, *modes, **settings)
    to = api.Target(sim.config.api_key, BASE, transport, sim)
    opts = RunOptions.of(out_dir=tmp_path / "out", expected_render=0.02, retry=FAST, submit_retry=FAST, seed=1)
    report = anyio.run(lambda: api.run_async(manifest, ledger=tmp_path / "l.db", options=opts, to=to))
    return report, transport


def cli_out(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code in (0, 1), result.output  # 1: the batch has failed jobs
    return result.output


# --- 12. the key, escaped --------------------------------------------------------------------------

KEYS = ["pd_k3y!8", "PD-0123456789abcdefghijk", "pd_live_" + "a1B2c3D4e5F6g7H8" * 3 + "/+=tail"]
HOW = ["json", "percent", "mixed"]


def hiding(key: str) -> list[str]:
    """Texts an answer may carry `key` in, each decodable to it."""
    every_u = escaped_key(key, "json")
    return [
        f'{{"k":"{every_u}"}}',
        f"token={escaped_key(key, 'percent')}&x=1",
        f"token={escaped_key(key, 'percent').lower()}",
        escaped_key(key, "mixed"),
        key.upper(),
        json.dumps(json.dumps({"k": key})),  # JSON in JSON
        json.dumps({"k": every_u}),  # \\u escapes behind an escaped backslash
        quote(quote(key, safe=""), safe=""),  # percent-encoded twice
        "".join(c if i % 3 else f"%{ord(c):02x}" for i, c in enumerate(key)),  # a subset encoded
        f"Bearer%20{every_u}",
        "".join(f"&#{ord(c)};" if i % 2 else f"&#x{ord(c):X};" for i, c in enumerate(key)),  # an error page's
    ]


@pytest.mark.parametrize("key", KEYS, ids=lambda k: f"{len(k)}-chars")
def test_the_client_redacts_the_key_in_every_encoding_and_refuses_ids_that_decode_to_it(key):
    client = PixelDojoClient(key, BASE)
    try:
        for text in hiding(key):
            shown = client.redact(f"job failed: {text} (see docs)")
            assert "[redacted]" in shown and shown.startswith("job failed: ") and shown.endswith(" (see docs)")
            assert_hidden(key, shown, f"the redaction of {text!r}")
            assert client._leaks(f"{BASE}/api/v1/jobs/j?x={text}"), text
        assert client.redact("nothing to hide here: \\u0041 %41") == "nothing to hide here: \\u0041 %41"
        assert not client._leaks(f"{BASE}/api/v1/jobs/job_1?sig=%2F%2B\\u0041")
    finally:
        anyio.run(client.aclose)


@pytest.mark.parametrize(("key", "how"), [(KEYS[0], "json"), (KEYS[0], "mixed"), (KEYS[1], "percent"),
                                          (KEYS[2], "mixed")], ids=lambda v: str(len(v)) if len(v) > 8 else v)
def test_an_escaped_key_in_failed_renders_and_errors_reaches_no_ledger_export_or_status(
        tmp_path, write, caplog, key, how):
    manifest = write("m.yaml", small_manifest(n_rows=3))
    sim = Simulator(SimConfig(api_key=key, render_seconds=0.02, fail_rate=1.0, error_rate=0.3,
                              fault_routes=("run",), seed=4))
    caplog.set_level(logging.INFO, logger="batcher")
    report, hostile = run_hostile(tmp_path, manifest, sim, Mode.ESCAPED_KEY_IN_ERRORS, escape=how)
    assert hostile.done[Mode.ESCAPED_KEY_IN_ERRORS] >= 3  # failed renders (and 503s) carried it
    ledger = tmp_path / "l.db"
    with Ledger(ledger) as led:
        jobs = list(led.iter_batch("small"))
        events = [e for j in jobs for e in led.events(j.id)]
    reasons = [j.error for j in jobs if j.error] + [e.detail for e in events if e.detail]
    assert any("[redacted]" in r for r in reasons), reasons  # the reasons were kept, the key taken out
    for r in reasons:
        assert_hidden(key, r, "a job's reason or event")
    for path in files_under(tmp_path):
        assert_hidden(key, path.read_bytes(), str(path))
    for fmt in ("jsonl", "csv"):
        assert_hidden(key, cli_out("export", "--ledger", str(ledger), "--format", fmt), f"the {fmt} export")
    assert_hidden(key, cli_out("status", "--ledger", str(ledger)), "status")
    assert_hidden(key, cli_out("status", "--ledger", str(ledger), "--json"), "status --json")
    assert_hidden(key, "\n".join(report.messages), "the run's messages")
    assert_hidden(key, caplog.text, "the log")


# --- 10. CSV injection -------------------------------------------------------------------------------

FORMULA_PROMPTS = ["=1+2 a knight", "+cmd a mare", "-2 a dog", "@SUM(A1) a fox", "\t=tab a cat", "\r=cr a cow"]


def test_csv_cells_that_would_start_a_formula_are_neutralised_and_jsonl_keeps_the_raw_text(tmp_path, write):
    rows = "".join(f"  - prompt: {json.dumps(p)}\n    references: hero\n" for p in FORMULA_PROMPTS)
    manifest = write("m.yaml", small_manifest(n_rows=0) + rows)
    sim = Simulator(SimConfig(render_seconds=0.02, fail_rate=1.0))
    _report, hostile = run_hostile(tmp_path, manifest, sim, Mode.FORMULA_ERRORS)
    assert hostile.done[Mode.FORMULA_ERRORS] >= len(FORMULA_PROMPTS)
    ledger = str(tmp_path / "l.db")
    records = [json.loads(line) for line in cli_out("export", "--ledger", ledger).splitlines()]
    assert sorted(r["prompt"] for r in records) == sorted(FORMULA_PROMPTS)  # JSONL: raw
    assert all(r["error"].startswith('=HYPERLINK("https://evil.example/x"') for r in records), records
    out = tmp_path / "e.csv"
    CliRunner().invoke(cli, ["export", "--ledger", ledger, "--format", "csv", "-o", str(out)])
    with open(out, encoding="utf-8", newline="") as f:  # a CR in a cell stays a CR
        table = list(csv.DictReader(f))
    assert len(table) == len(FORMULA_PROMPTS)
    assert sorted(r["prompt"] for r in table) == sorted("'" + p for p in FORMULA_PROMPTS)
    assert all(r["error"].startswith("'=HYPERLINK(") for r in table), [r["error"] for r in table]
    for row in table:
        for name, cell in row.items():
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), (name, cell)


# --- 11. a reference store that echoes its credentials ----------------------------------------------

ACCESS = "AKIASTANDIN0123456789"
SECRET = "standIn/Secret+Key0123456789abcdefghijk"
TOKEN = "FwoGZXIvYXdzEJrStandInSessionToken0123456789xyz"  # letters and digits: shaped like an error code


class EchoingStore(BaseHTTPRequestHandler):
    """An S3-compatible endpoint that refuses everything (403), its error's <Code> set by the
    server's `code` and its <Message> repeating every credential the client holds."""

    protocol_version = "HTTP/1.1"

    def _refuse(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        body = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{self.server.code}</Code>"  # type: ignore[attr-defined]
                f"<Message>denied for {ACCESS} / {SECRET} with token {TOKEN}</Message>"
                f"<RequestId>{quote(TOKEN)}</RequestId></Error>").encode()
        self.send_response(403)
        self.send_header("content-type", "application/xml")
        self.send_header("content-length", str(len(body)))
        self.send_header("x-amz-request-id", TOKEN)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_HEAD = do_GET = do_PUT = do_POST = _refuse

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(params=[TOKEN, TOKEN.lower(), ACCESS, quote(SECRET, safe="")], ids=["token", "token-lowercase",
                                                                                       "access-key", "secret"])
def echoing_store(request, monkeypatch) -> Iterator[str]:
    """The endpoint on loopback, the credentials in the environment as a user sets them."""
    pytest.importorskip("boto3")
    server = ThreadingHTTPServer(("127.0.0.1", 0), EchoingStore)
    server.code = request.param  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def assert_no_credential(blob: str | bytes, where: str) -> None:
    for secret in (ACCESS, SECRET, TOKEN):
        assert_hidden(secret, blob, where)


def with_local_image(tmp_path: Path, batch: str, name: str) -> Path:
    (tmp_path / "refs").mkdir(exist_ok=True)
    (tmp_path / "refs" / f"{name}.png").write_bytes(png_image(600, 600, len(name)))
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"version: 1\nbatch: {batch}\ndefaults:\n  duration: 5\nrows:\n"
                    f"  - prompt: a rider called {name}\n    references: [refs/{name}.png]\n", encoding="utf-8")
    return path


def test_a_store_echoing_its_credentials_at_the_start_shows_none_of_them(tmp_path, echoing_store):
    manifest = with_local_image(tmp_path, "stored", "knight")
    result = CliRunner().invoke(cli, ["run", str(manifest), "--simulate", "--reference-store", "s3://bucket-x/p",
                                      "--ledger", str(tmp_path / "l.db"), "--out", str(tmp_path / "out"), "-v",
                                      "--log-json", str(tmp_path / "log.jsonl")])
    assert result.exit_code == 2, result.output
    [line] = result.stderr.strip().splitlines()[-1:]
    assert line.startswith("batcher: cannot upload ") and "HTTP 403" in line, line
    assert_no_credential(result.output, "the run's output")
    files = list(files_under(tmp_path))
    assert any(p.name == "l.db" for p in files)
    for path in files:
        if path.suffix != ".png":
            assert_no_credential(path.read_bytes(), str(path))


def test_a_store_echoing_its_credentials_mid_run_gets_none_into_events_notes_or_logs(
        tmp_path, echoing_store, caplog):
    """A job that was held at the start (so its image was not made ready then) and is requeued
    mid-run (`batcher retry --unknown` beside the run) asks the store at its submission; the store
    fails, and the job's event and the run's note say so, redacted. (One worker and renders of
    0.3 s keep the run claiming for a second after its first POST: the requeued job, first in
    the manifest, is its next claim.)"""
    from sqlalchemy import text

    from batcher.references import S3Store, StoreSettings
    from batcher.states import JobState
    manifest = with_local_image(tmp_path, "shared", "mare")
    manifest.write_text(manifest.read_text() + "".join(
        f"  - prompt: shot {i}\n    references: [https://example.com/hero.png]\n" for i in range(4)))
    ledger = tmp_path / "l.db"
    with Ledger(ledger) as led:
        api.stage(led, api.load(manifest), simulated=True)
        led.write(lambda conn: conn.execute(text(
            "UPDATE job SET state = 'unknown' WHERE batch = 'shared' AND params LIKE '%mare%'")))
    sim = Simulator(SimConfig(render_seconds=0.3, render_jitter=0.0))
    caplog.set_level(logging.INFO, logger="batcher")
    opts = RunOptions.of(out_dir=tmp_path / "out", expected_render=0.3, retry=FAST, submit_retry=FAST, seed=1,
                         concurrency=1, reference_store=S3Store(StoreSettings.of("s3://bucket-x/p")))

    async def main():
        async def operator() -> None:
            with anyio.fail_after(30):
                while not sim.run_bodies:
                    await anyio.sleep(0.01)

            def retry_unknown() -> int:
                with Ledger(ledger) as led:
                    return led.write(led.requeue("shared", [JobState.UNKNOWN], "retry --unknown (test)"))
            assert await anyio.to_thread.run_sync(retry_unknown) == 1
        report = {}

        async def run() -> None:
            report["r"] = await api.run_async(manifest, ledger=ledger, options=opts, to=api.target(simulate=sim))
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await operator()
        return report["r"]

    report = anyio.run(main)
    with Ledger(ledger) as led:
        [job] = [j for j in led.iter_batch("shared") if "mare" in (j.parameters().get("prompt") or "")]
        events = led.events(job.id)
    refused = [e for e in events if e.kind == "not-sent"]
    assert refused and "HTTP 403" in (refused[0].detail or ""), [(e.kind, e.detail) for e in events]
    assert any("HTTP 403" in m for m in report.messages), report.messages
    for e in events:
        assert_no_credential(e.detail or "", f"event {e.kind}")
    assert_no_credential("\n".join(report.messages), "the run's notes")
    assert_no_credential(caplog.text, "the log")
    for path in files_under(tmp_path):
        if path.suffix not in (".png", ".mp4"):
            assert_no_credential(path.read_bytes(), str(path))


def test_a_given_boto3_client_is_redacted_of_its_own_credentials():
    """A store built on a client the caller made (not from the environment) still knows what to
    redact: the credentials that client signs with."""
    boto3 = pytest.importorskip("boto3")
    from botocore.stub import Stubber

    from batcher.errors import ReferenceStoreError
    from batcher.references import S3Store, StoreSettings
    client = boto3.client("s3", region_name="us-east-1", aws_access_key_id=ACCESS, aws_secret_access_key=SECRET,
                          aws_session_token=TOKEN)
    stubber = Stubber(client)
    stubber.add_client_error("head_object", service_error_code=TOKEN, http_status_code=500,
                             service_message=f"denied for {SECRET} with {TOKEN}")
    stubber.add_client_error("put_object", service_error_code=ACCESS.lower(), http_status_code=400,
                             service_message=f"denied for {ACCESS}")
    store = S3Store(StoreSettings.of("s3://bucket-x/p"), client=client)
    with stubber:
        for call in (lambda: store.holds("a.png", 3, "ab"), lambda: store.upload("a.png", b"abc", "PNG", "ab")):
            with pytest.raises(ReferenceStoreError) as caught:
                anyio.run(call)
            assert "[redacted]" in str(caught.value)
            assert_no_credential(str(caught.value), "the store's error")


def test_a_key_cut_where_an_answer_stops_being_read_is_never_half_shown():
    # 64 KB of whitespace, then the key across the cut: collapsing the whitespace used to pull the
    # key's first characters, never recognised as the key, into the text shown.
    import httpx

    from batcher.client import describe
    key = "sk-test-0123456789abcdef"
    for before in (65536 - 5, 65536 - 12):
        shown = describe(httpx.Response(500, content=(" " * before + key).encode()), lambda t: t.replace(key, "[k]"))
        assert "sk-te" not in shown and key[:5] not in shown, shown
    long = f"boom {key} ".encode() + b"x" * 70000
    shown = describe(httpx.Response(500, content=long), lambda t: t.replace(key, "[k]"))
    assert "boom [k]" in shown
