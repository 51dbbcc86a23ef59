"""Local reference images in manifests: files, folders and globs resolved beside the manifest,
keyed by their content, counted by `plan`, checked by `validate --online`, refused by `run`
and uploaded by runs (to the simulator's own store here; to S3 in test_reference_store)."""
from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner

from batcher import api
from batcher.cli import cli
from batcher.errors import LocalReferencesNeedStore, ManifestError
from batcher.ledger import Ledger
from batcher.manifest import load_manifest
from batcher.plan import check, expand
from batcher.references import LOCAL_PREFIX
from batcher.run import RunOptions
from batcher.simulator import SimConfig, Simulator, png_image

URL = "https://example.com/hero.png"


def image(path: Path, side: int = 512, padding: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_image(side, side, padding))
    return path


@pytest.fixture
def chars(tmp_path):
    """chars/knight/{front,side}.PNG-ish images, a mare picture and a note that is no image."""
    image(tmp_path / "chars" / "knight" / "b-side.png", 512)
    image(tmp_path / "chars" / "knight" / "a-front.PNG", 600)
    (tmp_path / "chars" / "knight" / "notes.txt").write_text("not an image")
    image(tmp_path / "mare.png", 700)
    return tmp_path


def refs_of(path: Path) -> list[list[str]]:
    return [job.params["references"] for job in expand(load_manifest(path))]


def address(path: Path) -> str:
    import hashlib
    return LOCAL_PREFIX + hashlib.sha256(path.read_bytes()).hexdigest()


def messages(path: Path) -> list[str]:
    with pytest.raises(ManifestError) as caught:
        check(load_manifest(path))
    return [str(d).replace(str(path.parent) + "/", "") for d in caught.value.diagnostics]


# --- forms ----------------------------------------------------------------------------------

def test_a_folder_is_its_images_sorted_by_name_case_insensitively(chars, write):
    path = write("m.yaml", "version: 1\nrows:\n  - prompt: a\n    references: chars/knight\n")
    knight = chars / "chars" / "knight"
    assert refs_of(path) == [[address(knight / "a-front.PNG"), address(knight / "b-side.png")]]


def test_a_file_a_glob_a_url_and_a_set_name_mix_in_one_row(chars, write):
    path = write("m.yaml", f"""
        version: 1
        reference_sets:
          hero: [{URL}, ./mare.png]
        rows:
          - prompt: a
            references: [hero, "chars/knight/*.png", mare.png, "https://example.com/x.png"]
        """)
    knight = chars / "chars" / "knight"
    assert refs_of(path) == [[URL, address(chars / "mare.png"), address(knight / "b-side.png"),
                              "https://example.com/x.png"]]


def test_absolute_paths_are_accepted(chars, write):
    path = write("m.yaml", f"version: 1\nrows:\n  - prompt: a\n    references: [{chars / 'mare.png'}]\n")
    assert refs_of(path) == [[address(chars / "mare.png")]]


def test_csv_and_jsonl_cells_name_local_images(chars, write):
    write("rows.csv", "prompt,references\nfirst,mare.png|chars/knight\n")
    write("rows.jsonl", '{"prompt": "second", "references": ["chars/knight/b-side.png", "hero"]}\n')
    path = write("m.yaml", f"""
        version: 1
        reference_sets:
          hero: [{URL}]
        rows:
          - from: rows.csv
          - from: rows.jsonl
        """)
    knight = chars / "chars" / "knight"
    assert refs_of(path) == [
        [address(chars / "mare.png"), address(knight / "a-front.PNG"), address(knight / "b-side.png")],
        [address(knight / "b-side.png"), URL]]


# --- keys follow the content ------------------------------------------------------------------

def keys(path: Path) -> list[str]:
    return [job.key for job in expand(load_manifest(path))]


def test_renaming_or_moving_a_file_keeps_every_key(chars, write):
    text = "version: 1\nrows:\n  - prompt: a\n    references: {ref}\n  - prompt: b\n    references: chars/knight\n"
    path = write("m.yaml", text.format(ref="mare.png"))
    before = keys(path)
    (chars / "elsewhere").mkdir()
    (chars / "mare.png").rename(chars / "elsewhere" / "horse.png")
    path = write("m.yaml", text.format(ref="elsewhere/horse.png"))
    assert keys(path) == before


def test_editing_one_file_changes_only_the_keys_of_the_jobs_that_use_it(chars, write):
    path = write("m.yaml", f"""
        version: 1
        rows:
          - prompt: a
            references: mare.png
            seeds: [1, 2]
          - prompt: b
            references: chars/knight
          - prompt: c
            references: {URL}
        """)
    before = keys(path)
    image(chars / "mare.png", 701)
    after = keys(path)
    assert after[0] != before[0] and after[1] != before[1] and after[2:] == before[2:]


def test_url_only_manifests_never_touch_local_files(write):
    path = write("m.yaml", f"version: 1\nrows:\n  - prompt: a\n    references: {URL}\n")
    m = load_manifest(path)
    assert check(m).to_json().get("local_images") is None and m.local_files == {}


# --- problems, all at once, at their FILE:LINE ------------------------------------------------

def test_missing_path_empty_folder_unmatched_glob_and_non_images_are_reported_together(chars, write):
    (chars / "empty").mkdir()
    write("rows.csv", "prompt,references\nfrom csv,chars/knight/notes.txt\n")
    path = write("m.yaml", """
        version: 1
        reference_sets:
          broken: [nowhere/x.png]
        rows:
          - prompt: a
            references:
              - missing.png
              - empty
              - "chars/*.webp"
          - prompt: b
            references: broken
          - from: rows.csv
        """)
    got = messages(path)
    assert got == [
        "m.yaml:3: reference set 'broken': reference 'nowhere/x.png': no such file or folder (nowhere/x.png)",
        "m.yaml:7: reference 'missing.png': no such file or folder (missing.png)",
        "m.yaml:8: reference folder 'empty' holds no .jpg, .jpeg, .png, .webp image",
        "m.yaml:9: reference 'chars/*.webp' matches no file",
        "rows.csv:2: reference 'chars/knight/notes.txt': notes.txt is not an accepted image type "
        "(the file name must end in .jpg, .jpeg, .png, .webp)",
    ]


def test_a_folder_named_as_a_file_is_not_a_regular_file(chars, write):
    (chars / "odd.png").mkdir()
    image(chars / "odd.png" / "inner.png")
    path = write("m.yaml", "version: 1\nrows:\n  - prompt: a\n    references: [mare.png, odd.png/inner.png]\n")
    assert len(refs_of(path)[0]) == 2  # a folder called odd.png is still a folder


# --- plan, run, validate ---------------------------------------------------------------------

def local_manifest(write) -> Path:
    return write("m.yaml", f"""
        version: 1
        rows:
          - prompt: a
            references: [{URL}, chars/knight]
          - prompt: b
            references: [mare.png, chars/knight/a-front.PNG]
        """)


def test_plan_counts_distinct_local_images_and_their_bytes_and_sends_nothing(chars, write):
    path = local_manifest(write)
    total = sum(p.stat().st_size for p in (chars / "mare.png", *(chars / "chars" / "knight").glob("*.*"))
                if p.suffix.lower() == ".png")
    result = CliRunner().invoke(cli, ["plan", str(path), "--json", "--ledger", str(chars / "none.db")])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["local_images"] == {"count": 3, "bytes": total, "store": None, "stored": 0,
                                                         "bytes_to_upload": total}
    text = CliRunner().invoke(cli, ["plan", str(path), "--ledger", str(chars / "none.db")])
    assert f"local images: 3, {total / 1e6:.1f} MB to upload; a run needs a reference store" in text.output
    assert not (chars / "none.db").exists()


def test_a_real_run_without_a_store_refuses_with_one_line_and_exit_2_before_anything(chars, write, monkeypatch):
    path = local_manifest(write)
    ledger = chars / "l.db"
    monkeypatch.setenv("PIXELDOJO_API_KEY", "k")
    result = CliRunner().invoke(cli, ["run", str(path), "--api-base", "http://127.0.0.1:9", "--ledger", str(ledger),
                                      "--out", str(chars / "out")])
    assert result.exit_code == 2, result.output
    [line] = result.stderr.splitlines()
    assert line == (f"batcher: {path}:4: reference chars/knight/a-front.PNG is a local file (3 local images in all): "
                    "the API takes only URLs, so a run needs a reference store to upload it to: --reference-store "
                    "s3://BUCKET/PREFIX or reference_store: in the manifest (plan and validate need none)")
    assert not ledger.exists() and not (chars / "out").exists()


def test_the_api_refuses_a_real_run_without_a_store_before_any_post(chars, write):
    path = local_manifest(write)
    with pytest.raises(LocalReferencesNeedStore):
        anyio.run(lambda: api.run_async(path, ledger=chars / "l.db", to=api.target(api_key="k",
                                                                                   api_base="http://127.0.0.1:9")))
    with Ledger(chars / "l.db") as led:
        assert led.batches() == []  # nothing staged


def test_a_simulated_run_uploads_local_images_to_the_simulator_once(chars, write):
    path = local_manifest(write)
    sim = Simulator(SimConfig(render_seconds=0.02))
    opts = RunOptions.of(out_dir=chars / "out", expected_render=0.02)
    report = anyio.run(lambda: api.run_async(path, ledger=chars / "l.db", to=api.target(simulate=sim), options=opts))
    assert report.counts["completed"] == report.total > 0, report.messages
    knight = chars / "chars" / "knight"
    for image_path in (knight / "a-front.PNG", knight / "b-side.png", chars / "mare.png"):
        assert sim.upload_size(address(image_path)[len(LOCAL_PREFIX):] + ".png") == image_path.stat().st_size
    assert report.uploads == "3 local reference image(s): 3 uploaded (0.0 MB), 0 already in the store"
    again = anyio.run(lambda: api.run_async(path, ledger=chars / "l.db", to=api.target(simulate=sim), options=opts))
    assert again.uploads is None  # every job is done: nothing to send, nothing to upload


def test_the_gallery_shows_local_references_from_their_files(chars, write):
    path = local_manifest(write)
    result = CliRunner().invoke(cli, ["run", str(path), "--simulate", "--sim-render-seconds", "0.02",
                                      "--expected-render", "0.02", "--ledger", str(chars / "l.db"),
                                      "--out", str(chars / "out"), "--report", str(chars / "site" / "r.html")])
    assert result.exit_code == 0, result.output
    assert "3 local reference image(s): 3 uploaded" in result.output
    html = (chars / "site" / "r.html").read_text()
    import re
    local = re.findall(r'<img class="local" alt="" src="([^"]+)">', html)
    assert sorted(set(local)) == ["../chars/knight/a-front.PNG", "../chars/knight/b-side.png", "../mare.png"]
    assert all((chars / "site" / src).resolve().is_file() for src in local)
    assert "_sim/uploads" not in html and "local:sha256" not in html  # no upload URL: the file itself


def test_validate_online_refuses_a_small_png_and_a_text_file_renamed_png(tmp_path, write):
    image(tmp_path / "refs" / "good.png", 512)
    image(tmp_path / "refs" / "small.png", 200)
    (tmp_path / "refs" / "text.png").write_text("just some words, no picture")
    path = write("m.yaml", "version: 1\nrows:\n  - prompt: a\n    references: refs\n")
    result = CliRunner().invoke(cli, ["validate", str(path), "--online", "--simulate"])
    assert result.exit_code == 2, result.output
    refused = [line for line in result.stderr.splitlines() if ": reference " in line]
    assert refused == [f"{path}:4: reference refs/small.png: PNG of 200x200, shortest side under the 400 pixels "
                       "the model needs",
                       f"{path}:4: reference refs/text.png: not a JPEG, PNG or WEBP image (starts with "
                       "'just some words,')"]


def test_validate_online_passes_good_local_images(chars, write):
    path = local_manifest(write)
    result = CliRunner().invoke(cli, ["validate", str(path), "--online", "--simulate"])
    assert result.exit_code == 0, result.output
    assert "3 local image(s) checked" in result.output


def test_the_gallery_shows_a_local_reference_from_its_file(chars):
    from batcher.views.report import _reference
    mare = chars / "mare.png"
    html = _reference(address(mare), chars / "out", {address(mare): mare})
    assert 'src="../mare.png"' in html and "data-src" not in html
    assert "(local)" in _reference(address(mare), chars, {})
