"""The HTML gallery, opened in a real headless Chromium (Playwright driving Debian's chromium)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from batcher import api
from batcher.ledger import Ledger
from batcher.run import RunOptions
from batcher.simulator import SimConfig, Simulator
from batcher.views import build_report

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
                                    options=RunOptions.of(out_dir=tmp_path / "out", expected_render=0.02,
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


def test_a_report_that_fails_half_way_leaves_the_last_one_whole_and_no_parts(gallery):
    """Cards are written to a file as they are made: a job that cannot be read half way through
    must leave the previous gallery as it was and none of the new one's files behind."""
    from sqlalchemy import text
    path, _, _ = gallery
    before = path.read_bytes()
    with Ledger(path.parent / "l.db") as led:
        with led.engine.begin() as conn:  # a row the ledger cannot read back: its parameters are not JSON
            conn.execute(text("UPDATE job SET params = '{not json' WHERE id = (SELECT MAX(id) FROM job)"))
        with pytest.raises(ValueError):
            build_report(led, "gallery", path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir() if p.name.startswith(".")) == []


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


def _png_pixels(png: bytes) -> tuple[int, int, list[tuple[int, int, int]]]:
    """Decode an 8-bit RGB/RGBA, non-interlaced PNG (what Chromium's screenshots are)."""
    import struct
    import zlib
    pos, chunks, width = 8, b"", 0
    while pos < len(png):
        length, kind = struct.unpack(">I4s", png[pos:pos + 8])
        data = png[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", data[:10])
            assert depth == 8 and colour in (2, 6)
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            chunks += data
        pos += 12 + length
    raw = zlib.decompress(chunks)
    stride = width * channels
    rows, prev = [], bytearray(stride)
    for y in range(height):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b, c = prev[i], prev[i - channels] if i >= channels else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(line)
        prev = line
    pixels = [(r[i], r[i + 1], r[i + 2]) for r in rows for i in range(0, stride, channels)]
    return width, height, pixels


CONTRAST = """() => {
  function rgba(s){const m=s.match(/[\\d.]+/g).map(Number);return [m[0],m[1],m[2],m.length>3?m[3]:1];}
  function lum(c){const f=v=>{v/=255;return v<=0.03928?v/12.92:Math.pow((v+0.055)/1.055,2.4);};
    return 0.2126*f(c[0])+0.7152*f(c[1])+0.0722*f(c[2]);}
  function bg(el){for(let e=el;e;e=e.parentElement){const c=rgba(getComputedStyle(e).backgroundColor);
    if(c[3]>0.5)return c;} return [255,255,255,1];}
  const bad=[];
  for(const el of document.querySelectorAll('body *')){
    if(!el.offsetParent&&getComputedStyle(el).position!=='fixed')continue;
    const text=[...el.childNodes].filter(n=>n.nodeType===3).map(n=>n.textContent).join('').trim();
    if(!text)continue;
    const st=getComputedStyle(el), fg=rgba(st.color), b=bg(el);
    const L1=lum(fg), L2=lum(b), ratio=(Math.max(L1,L2)+0.05)/(Math.min(L1,L2)+0.05);
    const size=parseFloat(st.fontSize), bold=parseInt(st.fontWeight)>=700;
    const need=(size>=24||(size>=18.66&&bold))?3:4.5;
    if(ratio<need)bad.push(text.slice(0,40)+' '+ratio.toFixed(2));
  }
  return bad;
}"""


@pytest.mark.skipif(not CHROMIUM and not os.environ.get("CI"), reason="chromium is not installed")
def test_gallery_reads_at_a_glance_and_meets_contrast(tmp_path, write):
    playwright = pytest.importorskip("playwright.sync_api")
    manifest = write("g.yaml", MANIFEST)
    done = subprocess.run([sys.executable, "-m", "batcher", "run", str(manifest), "--simulate",
                           "--sim-render-seconds", "0.02", "--report", "report.html"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    path = tmp_path / "report.html"
    page_text = path.read_text()
    # what the file really is (the simulator's clip says what was asked: 5 s of 720p 16:9)
    assert page_text.count('class="facts">file: 5 s, 1280x720') == 6
    assert "not what was asked" not in page_text
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-quic"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(path.as_uri())
        assert "SIMULATED" in page.inner_text("header")
        assert page.evaluate(CONTRAST) == []
        # rows are named by label and prompt, not FILE:LINE
        options = page.locator("#f-row option").all_inner_texts()
        assert "row0002: A calm sea at dawn (3)" in options and not any("g.yaml:" in o for o in options)
        # every clip shows a frame, not a black tile
        page.evaluate("""() => Promise.all([...document.querySelectorAll('video')].map(v =>
            new Promise(r => v.readyState >= 2 ? r() : v.addEventListener('loadeddata', () => r()))))""")
        page.wait_for_timeout(200)
        for video in page.locator("video").all():
            _, _, pixels = _png_pixels(video.screenshot())
            bright = sum(1 for r, g, b in pixels if r + g + b > 150)
            assert bright > len(pixels) / 2, "a clip shows as a dark tile"
        # reference images that cannot load give a clean placeholder, not a broken image
        page.check("#f-thumbs")
        page.wait_for_function("document.querySelectorAll('.refs .missing').length === 6", timeout=20_000)
        assert page.locator(".refs img.failed").count() == 6
        assert all(not img.is_visible() for img in page.locator(".refs img").all())
        assert page.evaluate(CONTRAST) == []
        page.screenshot(path=str(tmp_path / "glance.png"), full_page=True)
        browser.close()
