"""A batch that mixes models, read back: plan, status, exports and the gallery group or filter
by model, and the gallery shows the same prompt and seed side by side across models."""
from __future__ import annotations

import csv
import io
import json
import shutil
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from batcher.cli import cli
from batcher.cli.plans import wall_time_estimate
from batcher.ledger import Ledger
from batcher.manifest import load_manifest
from batcher.models import HAPPYHORSE_11_R2V
from batcher.plan import check
from batcher.views import build_report
from tests.conftest import small_manifest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
H10, H11, WAN = "happyhorse-1.0-r2v", "happyhorse-1.1-r2v", "wan-2.5-t2v"
MODELS = [H10, H11, WAN]

# The same prompt (the first row's only after templating) and seeds, with three models.
MIXED = """
version: 1
batch: compare
defaults: {duration: 5, aspect_ratio: "16:9"}
rows:
  - prompt: "A {who} rides through snow"
    vary: {who: [knight]}
    references: [https://example.com/knight.png]
    seeds: [1, 2]
  - prompt: "A knight rides through snow"
    model: happyhorse-1.1-r2v
    references: [https://example.com/knight.png]
    seeds: [1, 2]
  - prompt: "A knight rides through snow"
    model: wan-2.5-t2v
    guidance_scale: 6.5
    seeds: [1, 2]
"""

# Rendered at 5 s 720p: 1.0 at 4/s, 1.1 at 5/s, wan at 3/s (the simulator's prices).
SPENT = {H10: 40.0, H11: 50.0, WAN: 30.0}


@pytest.fixture
def mixed(simrun, write, tmp_path):
    """The mixed batch run on the simulator: (manifest, ledger, simulator)."""
    manifest = write("mix.yaml", MIXED)
    report, sim, ledger = simrun(manifest)
    assert report.exit_code == 0 and report.counts["completed"] == 6
    return manifest, ledger, sim


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.output


# --- plan ------------------------------------------------------------------------------------

def test_plan_of_a_mixed_batch_has_a_line_per_model_and_a_model_column(mixed):
    manifest, ledger, _ = mixed
    code, out = invoke("plan", manifest, "--ledger", ledger)
    assert code == 0, out
    lines = out.splitlines()
    # per model: jobs, credits (1.1's and wan's prices were learned from the API by the run), price
    assert [line.split() for line in lines if line.split()[:1] in ([H10], [H11], [WAN])] == [
        [H10, "2", "40", "known"], [H11, "2", "50", "known"], [WAN, "2", "30", "known"]]
    rows = [line.split() for line in lines if "mix.yaml:" in line]
    assert [(r[0].rsplit(":", 1)[1], r[2], r[3], r[4]) for r in rows] == [
        ("5", H10, "2", "40"), ("9", H11, "2", "50"), ("13", WAN, "2", "30")]
    wall = next(line for line in lines if line.startswith("wall time"))
    assert "90 s with happyhorse-1.0-r2v" in wall and "weighted by each model's jobs" in wall
    assert f"renders of {H10}" not in wall  # no one model's time claimed for all
    data = json.loads(invoke("plan", manifest, "--ledger", ledger, "--json")[1])
    assert {k: (v["jobs"], v["credits"], v["credits_include_guessed_rates"]) for k, v in data["models"].items()} == {
        H10: (2, 40.0, False), H11: (2, 50.0, False), WAN: (2, 30.0, False)}
    assert [r["model"] for r in data["rows"]] == MODELS
    assert data["wall_time"]["typical_render_seconds_by_model"] == {m: 90.0 for m in MODELS}


def test_plan_says_which_models_estimates_are_guesses(write, tmp_path):
    """Before any run, 1.1's price is unpublished: its estimate, and only its, is a guess."""
    manifest = write("two.yaml", MIXED.split("  - prompt: \"A knight rides through snow\"\n    model: wan")[0])
    code, out = invoke("plan", manifest, "--ledger", tmp_path / "none.db")
    assert code == 0, out
    assert "estimated 80 credits (partly a guess: see the models below" in out
    assert [line.split(None, 3) for line in out.splitlines() if line.split()[:1] in ([H10], [H11])] == [
        [H10, "2", "40", "known"], [H11, "2", "40", "a guess: 720p at 4 credits/s is unpublished"]]
    code, out = invoke("plan", manifest, "--ledger", tmp_path / "none.db", "--rate", f"{H11}=5")
    assert "guess" not in out and f"{H11}        2         50  known" in out
    assert not (tmp_path / "none.db").exists()  # plan writes nothing


def test_the_wall_time_of_a_mixed_plan_weighs_each_models_render_time(write):
    manifest = write("two.yaml", MIXED.split("  - prompt: \"A knight rides through snow\"\n    model: wan")[0])
    quick = replace(HAPPYHORSE_11_R2V, expected_render_seconds=30.0)
    m = load_manifest(manifest, models={H11: quick})
    summary = check(m)
    # two jobs at 90 s and two at 30 s: 60 s a job; one at a time, 4 x 60 s
    wall = wall_time_estimate(m, summary, 1)
    assert wall["typical_render_seconds"] == 60 and wall["seconds"] == 240
    assert wall["typical_render_seconds_by_model"] == {H10: 90.0, H11: 30.0}
    assert wall_time_estimate(m, summary, 4)["seconds"] == 60  # one wave of the weighted mean


def test_a_single_model_plan_has_no_model_column(write, tmp_path):
    manifest = write("m.yaml", small_manifest(2))
    code, out = invoke("plan", manifest, "--ledger", tmp_path / "none.db")
    assert code == 0
    assert f"(renders of {H10} typically take 90 s)" in out and out.count(H10) == 1
    assert next(line for line in out.splitlines() if line.startswith("  row")).split() == ["row", "label", "jobs",
                                                                                          "credits"]
    data = json.loads(invoke("plan", manifest, "--ledger", tmp_path / "none.db", "--json")[1])
    assert "models" not in data and "model" not in data["rows"][0]
    assert set(data["wall_time"]) == {"seconds", "concurrency", "typical_render_seconds"}


# --- status ----------------------------------------------------------------------------------

def test_status_counts_per_model_and_rows_name_their_model(mixed):
    manifest, ledger, _ = mixed
    code, out = invoke("status", manifest, "--ledger", ledger)
    assert code == 0, out
    for model, spent in SPENT.items():
        assert f"  {model}: 2 job(s): 2 completed; {spent:g} credits spent" in out
    data = json.loads(invoke("status", manifest, "--ledger", ledger, "--json")[1])
    assert {m: (v["jobs"], v["counts"], v["credits_spent"]) for m, v in data["by_model"].items()} == {
        m: (2, {"completed": 2}, spent) for m, spent in SPENT.items()}
    assert sum(v["credits_spent"] for v in data["by_model"].values()) == data["credits_spent"]
    everything = json.loads(invoke("status", "--ledger", ledger, "--json")[1])
    assert everything["batches"]["compare"]["by_model"] == data["by_model"]
    rows = invoke("status", manifest, "--ledger", ledger, "--rows")[1].splitlines()
    assert [line.split()[2] for line in rows] == MODELS
    rows_json = json.loads(invoke("status", manifest, "--ledger", ledger, "--rows", "--json")[1])
    assert [r["model"] for r in rows_json] == MODELS


def test_status_model_option_shows_one_models_jobs(mixed):
    manifest, ledger, _ = mixed
    code, out = invoke("status", manifest, "--ledger", ledger, "--model", WAN)
    assert code == 0, out
    assert out.startswith(f"batch 'compare', model {WAN}") and ": 2 job(s): 2 completed" in out
    assert "30 spent" in out and "30 committed by this model; the batch: 120 committed" in out
    assert H10 not in out
    data = json.loads(invoke("status", manifest, "--ledger", ledger, "--model", H11, "--json")[1])
    assert (data["model"], data["jobs"], data["credits_spent"], data["videos"]) == (H11, 2, 50.0, 2)
    rows = invoke("status", manifest, "--ledger", ledger, "--rows", "--model", H11)[1].splitlines()
    assert len(rows) == 1 and "mix.yaml:9" in rows[0]
    code, out = invoke("status", manifest, "--ledger", ledger, "--model", "wan-2.5")
    assert code == 2 and f"--model wan-2.5: no job of batch 'compare' renders with it (its models: {H10}, " in out


def test_a_single_model_batch_has_no_per_model_lines(simrun, write):
    manifest = write("m.yaml", small_manifest(2))
    _, _, ledger = simrun(manifest)
    out = invoke("status", manifest, "--ledger", ledger)[1]
    assert H10 not in out
    assert "by_model" not in json.loads(invoke("status", manifest, "--ledger", ledger, "--json")[1])
    rows = invoke("status", manifest, "--ledger", ledger, "--rows")[1]
    assert H10 not in rows


def test_per_model_figures_on_both_backends(ledger_url, simrun, write):
    """The per-model reads group by each job's model (its batch's when it has none) alike on SQLite
    and PostgreSQL."""
    from sqlalchemy import text

    from batcher.views import records
    _, _, ledger = simrun(write("mix.yaml", MIXED), ledger=ledger_url)
    with Ledger(ledger) as led:
        assert led.models_of("compare") == {m: 2 for m in MODELS} == led.models_of()
        assert led.counts_by_model("compare") == {m: ({"completed": 2}, spent) for m, spent in SPENT.items()}
        assert [(r[0].rsplit(":", 1)[1], r[3], r[4]) for r in led.counts_by_row_and_model("compare")] == [
            ("5", H10, {"completed": 2}), ("9", H11, {"completed": 2}), ("13", WAN, {"completed": 2})]
        assert [r[3] for r in led.counts_by_row_and_model("compare", WAN)] == [WAN]
        f = led.figures("compare", model=H11)
        assert (f.jobs, f.spend.spent, f.videos, f.committed) == (2, 50.0, 2, 50.0)
        assert led.figures("compare").committed == 120.0  # the batch's running total, unchanged
        assert [r["model"] for r in records(led, "compare", WAN)] == [WAN, WAN]
        led.write(lambda conn: conn.execute(text("UPDATE job SET model = NULL WHERE model = :m"), {"m": WAN}))
        assert led.models_of("compare") == {H10: 4, H11: 2}
        assert led.figures("compare", model=H10).jobs == 4 and led.counts("compare", model=WAN)["completed"] == 0


# --- exports ---------------------------------------------------------------------------------

def test_every_record_carries_its_jobs_model(mixed, tmp_path):
    manifest, ledger, sim = mixed
    charged = {j["job_id"]: j["model"] for j in sim.record()["jobs"]}  # what the API rendered each job with
    records = [json.loads(line) for line in invoke("export", manifest, "--ledger", ledger)[1].splitlines()]
    assert len(records) == 6 and [r["model"] for r in records] == [H10, H10, H11, H11, WAN, WAN]
    assert all(r["model"] == charged[r["remote_job_id"]] for r in records)
    table = list(csv.DictReader(io.StringIO(invoke("export", manifest, "--ledger", ledger, "--format", "csv")[1])))
    assert [r["model"] for r in table] == [r["model"] for r in records]
    only = [json.loads(line) for line in invoke("export", manifest, "--ledger", ledger, "--model", H11)[1].splitlines()]
    assert [(r["model"], r["seed"]) for r in only] == [(H11, 1), (H11, 2)]
    code, out = invoke("export", manifest, "--ledger", ledger, "--model", "nope")
    assert code == 2 and "--model nope" in out


def test_the_dataset_metadata_names_each_clips_model(mixed, tmp_path):
    manifest, ledger, _ = mixed
    code, _ = invoke("export", manifest, "--ledger", ledger, "--format", "videofolder", "--out", tmp_path / "ds")
    assert code == 0
    meta = [json.loads(line) for line in (tmp_path / "ds" / "metadata.jsonl").read_text().splitlines()]
    assert sorted(r["model"] for r in meta) == sorted(MODELS * 2)
    with Ledger(ledger) as led:
        by_file = {Path(j.file_path or "").name: j.model for j in led.iter_batch("compare")}
    assert all(by_file[r["file_name"]] == r["model"] for r in meta)
    code, _ = invoke("export", manifest, "--ledger", ledger, "--format", "videofolder", "--out", tmp_path / "wan",
                     "--model", WAN)
    wan = [json.loads(line) for line in (tmp_path / "wan" / "metadata.jsonl").read_text().splitlines()]
    assert code == 0 and [r["model"] for r in wan] == [WAN, WAN]
    assert len(list((tmp_path / "wan").glob("*.mp4"))) == 2


def test_a_job_an_older_ledger_wrote_without_a_model_has_its_batchs(mixed):
    manifest, ledger, _ = mixed
    with sqlite3.connect(ledger) as conn:
        conn.execute("UPDATE job SET model = NULL WHERE origin LIKE '%:13'")  # as before migration 9
    records = [json.loads(line) for line in invoke("export", manifest, "--ledger", ledger)[1].splitlines()]
    assert [r["model"] for r in records] == [H10, H10, H11, H11, H10, H10]
    data = json.loads(invoke("status", manifest, "--ledger", ledger, "--json")[1])
    assert {m: v["jobs"] for m, v in data["by_model"].items()} == {H10: 4, H11: 2}


# --- the gallery -----------------------------------------------------------------------------

def test_the_gallery_names_each_cards_model_and_frames_the_compare_view(mixed, tmp_path):
    manifest, ledger, _ = mixed
    with Ledger(ledger) as led:
        assert build_report(led, "compare", tmp_path / "r.html") == 6
    page = (tmp_path / "r.html").read_text()
    for model in MODELS:
        assert page.count(f'data-model="{model}" data-group=') == 2
        assert page.count(f'<span class="model">{model}</span>') == 2
        assert f'<option value="{model}">{model} (2)</option>' in page
    assert page.count('<div class="group"') == 2 and page.count('class="col"') == 6
    assert 'id="f-compare"' in page
    code, _ = invoke("report", manifest, "--ledger", ledger, "--model", WAN, "-o", tmp_path / "wan.html")
    wan = (tmp_path / "wan.html").read_text()
    assert code == 0 and wan.count('class="card"') == 2 and H10 not in wan.split("<main")[1]
    assert 'id="f-compare"' not in wan  # one model: nothing to compare


@pytest.mark.skipif(not CHROMIUM and not __import__("os").environ.get("CI"), reason="chromium is not installed")
def test_compare_view_and_model_filter_in_a_real_browser(mixed, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    from tests.test_report import CONTRAST
    _, ledger, _ = mixed
    path = tmp_path / "r.html"
    with Ledger(ledger) as led:
        build_report(led, "compare", path)
    errors: list[str] = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-quic"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(path.as_uri())
        assert not page.locator("#compare").is_visible()
        page.check("#f-compare")
        assert not page.locator("#cards").is_visible() and page.locator("#cards article").count() == 0
        groups = page.evaluate("""() => [...document.querySelectorAll('#compare .group:not(.hidden)')].map(g => ({
            title: g.querySelector('h2').innerText,
            cols: [...g.querySelectorAll('.col')].map(c => ({model: c.dataset.model,
              videos: c.querySelectorAll('video').length,
              cards: [...c.querySelectorAll('.card')].map(k => [k.dataset.model,
                        k.querySelector('.prompt').innerText, k.querySelector('.model').innerText])}))}))""")
        assert len(groups) == 2  # one per (prompt, seed)
        for group, seed in zip(groups, ("seed 1", "seed 2"), strict=True):
            assert group["title"].startswith("A knight rides through snow") and seed in group["title"]
            assert [c["model"] for c in group["cols"]] == MODELS
            assert all(c["videos"] == 1 for c in group["cols"])  # one video per model
            assert all(c["cards"] == [[c["model"], "A knight rides through snow", c["model"]]] for c in group["cols"])
        # side by side: the columns of a group share one row on the screen
        tops = page.evaluate("""() => [...document.querySelector('#compare .group').querySelectorAll('.col')]
            .map(c => Math.round(c.getBoundingClientRect().top))""")
        assert len(set(tops)) == 1, tops
        durations = page.evaluate("""() => Promise.all([...document.querySelectorAll('#compare video')].map(v =>
            new Promise(resolve => {
              if (v.readyState >= 1) return resolve(v.duration);
              v.addEventListener('loadedmetadata', () => resolve(v.duration));
              v.addEventListener('error', () => resolve(-1));
            })))""")
        assert len(durations) == 6 and all(1.5 < d < 2.5 for d in durations), durations
        assert page.evaluate(CONTRAST) == []
        page.screenshot(path=str(tmp_path / "compare.png"), full_page=True)
        # the model filter hides other models' cards (and, here, their columns)
        page.select_option("#f-model", WAN)
        visible = page.evaluate("() => [...document.querySelectorAll('.card:not(.hidden)')].map(c => c.dataset.model)")
        assert visible == [WAN, WAN] and page.inner_text("#shown") == "2"
        assert page.locator("#compare .col:not(.hidden)").count() == 2
        assert all(c.get_attribute("data-model") == WAN for c in page.locator("#compare .col:not(.hidden)").all())
        # back to the grid: the cards return in their order, still filtered
        page.uncheck("#f-compare")
        assert page.locator("#cards article").count() == 6 and not page.locator("#compare").is_visible()
        assert [c.get_attribute("data-model") for c in page.locator("#cards article:not(.hidden)").all()] == [WAN, WAN]
        page.select_option("#f-model", "")
        assert [c.get_attribute("data-model") for c in page.locator("#cards article").all()] == [
            H10, H10, H11, H11, WAN, WAN]
        browser.close()
    assert not errors, errors
