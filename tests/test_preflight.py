"""Preflight: every reference URL checked before anything is spent (batcher/preflight.py)."""
from __future__ import annotations

import base64
import os
import shutil
import struct
from pathlib import Path

import anyio
import httpx
import pytest
from click.testing import CliRunner

from batcher import api
from batcher.cli import cli
from batcher.client import Outcome, PixelDojoClient, ReferenceFetch, judge
from batcher.errors import PreflightFailed
from batcher.references import MAX_BYTES, image_kind, image_size
from batcher.simulator import FetchedReference, SimConfig, Simulator, SimulatorTransport, png_image

SIM = "https://pixeldojo.ai/_sim/refs"
BAD = ["missing.png", "page.png", "small.png", "big.png", "text.png"]


def manifest_with(write, refs: list[str], name: str = "m.yaml") -> Path:
    """One row per reference URL (so each has its own line), plus a good one."""
    rows = "".join(f"  - prompt: 'shot {i}'\n    references: [{url}]\n" for i, url in enumerate(refs))
    return write(name, "version: 1\nbatch: refs\ndefaults:\n  duration: 5\n  resolution: 720p\nrows:\n" + rows)


def line_of(path: Path, url: str) -> int:
    """The line of the row that uses `url` (its first line, where a job's origin points)."""
    return next(i for i, text in enumerate(path.read_text().splitlines(), 1) if url in text) - 1


def fresh_sim() -> Simulator:
    return Simulator(SimConfig(render_seconds=0.02, render_jitter=0.1))


# --- the run refuses every bad reference at once ---------------------------------------------

def test_preflight_refuses_a_404_an_html_page_a_small_a_big_and_a_fake_png_in_one_run_with_no_post(simrun, write):
    urls = [f"{SIM}/{name}" for name in BAD] + [f"{SIM}/good.png"]
    path = manifest_with(write, urls)
    sim = fresh_sim()
    with pytest.raises(PreflightFailed) as caught:
        simrun(path, simulator=sim)
    lines = caught.value.lines
    assert len(lines) == len(BAD)
    for name, reason in zip(BAD, ["HTTP 404", "not a JPEG, PNG or WEBP", "200x200", "12.0 MB", "not a JPEG"],
                            strict=True):
        url = f"{SIM}/{name}"
        line = next(line for line in lines if url + ":" in line)
        assert line.startswith(f"{path}:{line_of(path, url)}: reference {url}: ") and reason in line, line
    assert sim.record()["run_bodies"] == 0


def test_preflight_errors_exit_2_via_the_cli_with_one_file_line_per_bad_reference(tmp_path, write):
    urls = [f"{SIM}/{name}" for name in BAD] + [f"{SIM}/good.png"]
    path = manifest_with(write, urls)
    result = CliRunner().invoke(cli, ["run", str(path), "--simulate", "--ledger", str(tmp_path / "l.db"),
                                      "--out", str(tmp_path / "out"), "--sim-render-seconds", "0.02"])
    assert result.exit_code == 2, result.output
    refused = [line for line in result.stderr.splitlines() if ": reference " in line]
    assert len(refused) == len(BAD)
    for name in BAD:
        url = f"{SIM}/{name}"
        assert any(line.startswith(f"{path}:{line_of(path, url)}: reference {url}: ") for line in refused), refused
    from batcher.ledger import Ledger
    with Ledger(tmp_path / "l.db") as ledger:
        assert ledger.counts("refs")["pending"] == len(urls)  # nothing was submitted


# --- warnings, caching, opting out -----------------------------------------------------------

def test_an_unreachable_reference_is_a_warning_and_the_run_completes(simrun, write):
    path = manifest_with(write, ["https://images.nowhere.net/hero.png", f"{SIM}/good.png"])
    warnings: list[str] = []
    seen: list[str] = []

    def the_apis_network(url: str) -> FetchedReference:  # reaches the host this machine cannot
        seen.append(url)
        return FetchedReference(200, "image/png", png_image(512, 512))
    sim = Simulator(SimConfig(render_seconds=0.02, render_jitter=0.1), fetch_reference=the_apis_network)
    report, _, _ = simrun(path, simulator=sim, on_warning=warnings.append)
    assert report.counts["completed"] == 2 and seen == ["https://images.nowhere.net/hero.png"]
    assert len(warnings) == 1 and "images.nowhere.net/hero.png: could not be reached" in warnings[0]
    assert warnings[0].startswith(f"{path}:{line_of(path, 'images.nowhere.net')}: reference ")


def test_unreachable_references_are_warned_about_in_a_capped_list_on_stderr(tmp_path, write):
    urls = [f"https://host{i}.nowhere.net/a.png" for i in range(6)] + ["https://example.com/a.png"]
    path = manifest_with(write, urls)
    result = CliRunner().invoke(cli, ["run", str(path), "--simulate", "--ledger", str(tmp_path / "l.db"),
                                      "--out", str(tmp_path / "out"), "--sim-render-seconds", "0.02"])
    # Warned, not refused: the jobs are submitted; the in-process simulator (offline, as this
    # machine) then refuses the six it cannot reach, and the placeholder one completes.
    assert result.exit_code == 1, result.output
    assert "6 failed (of 7)" in result.output and "cannot be reached" in result.output
    warned = [line for line in result.stderr.splitlines() if "may still" in line]
    assert len(warned) == 4 and "3 more reference(s) could not be reached" in warned[-1]
    assert "1 reference(s) on example hosts (example.com, *.test, localhost, ...) were not checked" in result.stderr


class Counting(httpx.AsyncBaseTransport):
    """The simulator, counting reference requests by the status they were answered with, and
    recording the headers each reference request carried."""

    def __init__(self, sim: Simulator):
        self.inner = SimulatorTransport(sim)
        self.statuses: list[int] = []
        self.headers: list[dict[str, str]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.url.path.startswith("/_sim/refs/"):
            self.statuses.append(response.status_code)
            self.headers.append({k.lower(): v for k, v in request.headers.items()})
        return response


def run_through(path: Path, transport: httpx.AsyncBaseTransport, sim: Simulator, ledger: Path, out: Path,
                base: str = "https://pixeldojo.ai", **options):
    from batcher.run import RunOptions
    opts = RunOptions.of(expected_render=0.02, seed=1, out_dir=out, **options)
    to = api.Target(sim.config.api_key, base, transport, sim)
    return anyio.run(lambda: api.run_async(path, ledger=ledger, options=opts, to=to))


def test_a_rerun_does_not_fetch_an_ok_reference_again(tmp_path, write):
    path = manifest_with(write, [f"{SIM}/good.png", f"{SIM}/noetag.png"])
    sim = fresh_sim()
    counting = Counting(sim)
    run_through(path, counting, sim, tmp_path / "l.db", tmp_path / "out")
    assert sorted(counting.statuses) == [206, 206]
    write("m.yaml", path.read_text().replace("'shot", "'another shot"))  # new pending jobs, same references
    counting.statuses.clear()
    report = run_through(path, counting, sim, tmp_path / "l.db", tmp_path / "out")
    # the two new jobs rendered; the edited prompt's first two are orphans now, counted apart
    assert report.counts["completed"] == 2 and len(sim.record()["jobs"]) == 4
    # good.png had an ETag: asked again conditionally, 304; noetag.png: trusted for 24 h, not asked
    assert counting.statuses == [304]


def test_no_preflight_skips_it(simrun, write):
    path = manifest_with(write, [f"{SIM}/small.png"])
    sim = fresh_sim()
    report, sim, ledger = simrun(path, simulator=sim, preflight=False)
    assert sim.record()["requests"].get("ref", 0) == 0  # nothing fetched before submitting
    # ... so the API found it: the submission refused, nothing charged, the reason kept
    assert report.counts["failed"] == 1 and sim.record()["charged"] == 0
    from batcher.ledger import Ledger
    with Ledger(ledger) as led:
        job = next(led.iter_batch("refs"))
        assert f"reference_urls[0]: {SIM}/small.png: 200x200, shortest side under 400 px" in job.error


def test_no_preflight_on_the_cli_warns_and_runs(tmp_path, write):
    path = manifest_with(write, [f"{SIM}/small.png"])
    result = CliRunner().invoke(cli, ["run", str(path), "--simulate", "--no-preflight", "--ledger",
                                      str(tmp_path / "l.db"), "--out", str(tmp_path / "out"),
                                      "--sim-render-seconds", "0.02"])
    assert result.exit_code == 1, result.output  # the job ran, and the API refused its reference
    assert "--no-preflight" in result.stderr and "shortest side under" in result.output


def test_validate_online_reports_the_same_errors(tmp_path, write):
    urls = [f"{SIM}/{name}" for name in BAD] + [f"{SIM}/good.png", "https://cdn.example.com/x.png"]
    path = manifest_with(write, urls)
    result = CliRunner().invoke(cli, ["validate", str(path), "--online", "--simulate"])
    assert result.exit_code == 2, result.output
    refused = [line for line in result.stderr.splitlines() if ": reference " in line and "warning" not in line]
    assert len(refused) == len(BAD)
    for name in BAD:
        url = f"{SIM}/{name}"
        assert any(line.startswith(f"{path}:{line_of(path, url)}: reference {url}: ") for line in refused)
    fine = manifest_with(write, [f"{SIM}/good.png"], "fine.yaml")
    result = CliRunner().invoke(cli, ["validate", str(fine), "--online", "--simulate"])
    assert result.exit_code == 0 and "1 reference URL(s) checked" in result.output


def test_the_key_is_never_sent_to_a_reference_url_on_another_origin(tmp_path, write):
    other = "https://refs.elsewhere.net/_sim/refs"
    path = manifest_with(write, [f"{other}/good.png", f"{SIM}/good.png"])
    sim = fresh_sim()
    counting = Counting(sim)
    report = run_through(path, counting, sim, tmp_path / "l.db", tmp_path / "out")
    assert report.counts["completed"] == 2
    assert len(counting.headers) == 2
    assert all("authorization" not in h for h in counting.headers)
    assert all(sim.config.api_key not in str(h) for h in counting.headers)


# --- the image header reader, on real images -------------------------------------------------

def test_png_header_gives_its_type_and_sides():
    data = png_image(640, 401)
    assert image_kind(data) == "PNG" and image_size("PNG", data) == (640, 401)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser_images() -> dict[str, bytes]:
    """JPEG and WEBP files (lossy, lossless, with alpha) encoded by a real browser's canvas."""
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        urls = page.evaluate("""() => {
            const c = document.createElement('canvas'); c.width = 640; c.height = 420;
            const g = c.getContext('2d'); g.fillStyle = '#c84'; g.fillRect(0, 0, 640, 420);
            g.fillStyle = '#248'; g.fillRect(30, 30, 200, 100);
            const t = document.createElement('canvas'); t.width = 500; t.height = 410;
            t.getContext('2d').fillRect(10, 10, 50, 50);  // mostly transparent: alpha
            return {jpeg: c.toDataURL('image/jpeg', 0.8), webp: c.toDataURL('image/webp', 0.8),
                    lossless: c.toDataURL('image/webp', 1.0), alpha: t.toDataURL('image/webp', 0.8)};
        }""")
        browser.close()
    return {name: base64.b64decode(url.split(",", 1)[1]) for name, url in urls.items()}


@pytest.mark.skipif(not CHROMIUM and not os.environ.get("CI"), reason="chromium is not installed")
def test_jpeg_and_webp_headers_from_a_real_encoder_give_their_sides(browser_images):
    jpeg = browser_images["jpeg"]
    assert image_kind(jpeg) == "JPEG" and image_size("JPEG", jpeg) == (640, 420)
    seen = set()
    for name, sides in (("webp", (640, 420)), ("lossless", (640, 420)), ("alpha", (500, 410))):
        data = browser_images[name]
        assert image_kind(data) == "WEBP", name
        assert image_size("WEBP", data) == sides, name
        seen.add(data[12:16])
        found = data.find(b"VP8 ")  # the lossy bitstream inside an extended file, as a simple one
        if data[12:16] == b"VP8X" and found > 0:
            size = struct.unpack("<I", data[found + 4:found + 8])[0]
            chunk = data[found:found + 8 + size]
            simple = b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk
            assert image_kind(simple) == "WEBP" and image_size("WEBP", simple) == sides, name
            seen.add(b"VP8 ")
    assert b"VP8 " in seen


def test_webp_lossless_and_extended_headers_are_read():
    # VP8L: signature 0x2f, then 14-bit width-1 and height-1
    bits = (800 - 1) | ((450 - 1) << 14)
    vp8l = b"RIFF" + struct.pack("<I", 30) + b"WEBPVP8L" + struct.pack("<I", 10) + b"\x2f" + struct.pack("<I", bits)
    assert image_size("WEBP", vp8l) == (800, 450)
    vp8x = (b"RIFF" + struct.pack("<I", 30) + b"WEBPVP8X" + struct.pack("<I", 10) + b"\x10\x00\x00\x00"
            + (1023).to_bytes(3, "little") + (399).to_bytes(3, "little"))
    assert image_size("WEBP", vp8x) == (1024, 400)


def test_a_jpeg_header_cut_short_is_not_guessed():
    assert image_size("JPEG", b"\xff\xd8\xff\xe0\x00\x10JFIF") is None


def test_an_answer_without_a_size_that_streams_past_10_mb_is_too_big():
    async def endless():
        yield png_image(512, 512)
        for _ in range(12):
            yield b"\0" * (1024 * 1024)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=endless())  # no Content-Length: chunked

    async def go() -> ReferenceFetch:
        async with PixelDojoClient("k", "https://api.test", transport=httpx.MockTransport(handler)) as client:
            return await client.fetch_reference("https://img.other/a.png", MAX_BYTES, {})
    answer = anyio.run(go)
    assert answer.size is not None and answer.size > MAX_BYTES
    verdict = judge(answer)
    assert verdict.outcome is Outcome.ERROR and "over the 10.0 MB" in (verdict.detail or "")


def test_redirects_are_followed_to_http_only_and_at_most_five():
    def handler(request: httpx.Request) -> httpx.Response:
        n = int(request.url.path.strip("/") or 0)
        if request.url.host == "loop.other":
            return httpx.Response(302, headers={"location": f"/{n + 1}"})
        return httpx.Response(302, headers={"location": "file:///etc/passwd"})

    async def go(url: str) -> str:
        async with PixelDojoClient("k", "https://api.test", transport=httpx.MockTransport(handler)) as client:
            try:
                await client.fetch_reference(url, MAX_BYTES, {})
            except Exception as e:
                return str(e)
        return ""
    assert "more than 5 redirects" in anyio.run(go, "https://loop.other/0")
    assert "not an http(s) URL" in anyio.run(go, "https://file.other/0")
