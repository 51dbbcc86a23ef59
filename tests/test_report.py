"""The HTML gallery, opened in a real headless Chromium (Playwright driving Debian's chromium)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import anyio
import pytest

from batcher import api
from batcher.ledger import Ledger
from batcher.pool import RunOptions
from batcher.report import build_report
from batcher.simulator import SimConfig, Simulator

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

MANIFEST = """
version: 1
batch: gallery
reference_sets:
  hero: [https://example.com/hero.png]
rows:
  - prompt: "A knight <script>alert('owned')</script> & friends"
    references: hero
  - prompt: "A calm sea at dawn"
    references: hero
    seeds: [1, 2, 3]
  - prompt: "A storm"
    references: hero
    seeds: [4, 5]
"""


@pytest.fixture
def gallery(tmp_path, write):
    manifest = write("gallery.yaml", MANIFEST)
    sim = Simulator(SimConfig(render_seconds=0.02, fail_rate=0.35, seed=4))
    anyio.run(lambda: api.run_async(manifest, ledger=tmp_path / "l.db", to=api.target(simulate=sim),
                                    options=RunOptions(out_dir=tmp_path / "out", expected_render=0.02,
                                                       max_attempts=1)))
    with Ledger(tmp_path / "l.db") as led:
        n = build_report(led, "gallery", tmp_path / "report.html")
        counts = led.counts("gallery")
    return tmp_path / "report.html", n, counts


def test_report_is_self_contained_and_escaped(gallery):
    path, n, counts = gallery
    page = path.read_text()
    assert n == 6 and page.count('class="card"') == 6
    assert "<script>alert(" not in page and "&lt;script&gt;alert(" in page
    assert "http://" not in page.replace("https://example.com", "")  # no CDN, fonts or scripts
    assert '<script src' not in page and '<link' not in page
    assert counts["failed"] >= 1 and page.count('data-state="failed"') == counts["failed"]


@pytest.mark.skipif(not CHROMIUM and not os.environ.get("CI"), reason="chromium is not installed")
def test_report_in_a_real_browser(gallery, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    path, n, counts = gallery
    errors: list[str] = []
    dialogs: list[str] = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-quic"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(path.as_uri())
        assert page.locator("article.card").count() == n
        durations = page.evaluate("""() => Promise.all([...document.querySelectorAll('video')].map(v =>
            new Promise(resolve => {
              if (v.readyState >= 1) return resolve(v.duration);
              v.addEventListener('loadedmetadata', () => resolve(v.duration));
              v.addEventListener('error', () => resolve(-1));
              v.load();
            })))""")
        assert len(durations) == counts["completed"] >= 1
        assert all(1.5 < d < 2.5 for d in durations), durations
        assert "<script>alert('owned')</script>" in page.inner_text("main")
        page.select_option("#f-state", "failed")
        visible = page.locator("article.card:not(.hidden)")
        assert visible.count() == counts["failed"]
        assert page.inner_text("#shown") == str(counts["failed"])
        page.select_option("#f-state", "")
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        assert not errors, errors
        assert page.locator(".refs img[src]").count() == 0  # nothing fetched until asked
        page.check("#f-thumbs")
        assert page.locator(".refs img[src]").count() == n  # one reference image per card here
        browser.close()
    assert not dialogs
    assert (tmp_path / "report.png").stat().st_size > 10_000
    shots = os.environ.get("BATCHER_SCREENSHOTS")
    if shots:
        shutil.copy(tmp_path / "report.png", Path(shots) / "report.png")
