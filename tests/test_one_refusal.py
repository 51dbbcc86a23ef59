"""One refusal for both kinds of bad reference: a refused local image (found offline, when the
manifest is checked) and a refused reference URL (fetched as preflight fetches it), before
anything is staged, by `run` and by `validate --online` alike."""
from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from batcher import api
from batcher.cli import cli
from batcher.errors import ManifestError
from batcher.ledger import Ledger
from batcher.simulator import png_image

SIM = "https://pixeldojo.ai/_sim/refs"
MISSING = f"{SIM}/missing.png"


def manifest(write, tmp_path: Path, local: str = "./wide.png", url: str = MISSING) -> Path:
    """Three rows: a 404 URL (its row at line 6, where a job's origin points), a 200x150
    local PNG (its reference at line 9), a good URL."""
    (tmp_path / "wide.png").write_bytes(png_image(200, 150))
    (tmp_path / "notes.png").write_text("a text file with a .png name\n")
    return write("m.yaml", f"""
        version: 1
        batch: both
        defaults:
          duration: 5
        rows:
          - prompt: 'a missing image'
            references: [{url}]
          - prompt: 'a small image'
            references: [{local}]
          - prompt: 'a good image'
            references: [{SIM}/good.png]
        """)


def refusal_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ": reference " in line]


def assert_both(lines: list[str], path: Path, local: str = "./wide.png") -> None:
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"{path}:6: reference {MISSING}: ") and "HTTP 404" in lines[0], lines
    assert lines[1].startswith(f"{path}:9: reference {local}") and MISSING not in lines[1], lines


def test_run_refuses_a_404_url_and_a_small_local_image_at_once_and_stages_nothing(tmp_path, write):
    path = manifest(write, tmp_path)
    ledger = tmp_path / "l.db"
    result = CliRunner().invoke(cli, ["run", str(path), "--simulate", "--ledger", str(ledger),
                                      "--out", str(tmp_path / "out"), "--sim-render-seconds", "0.02"])
    assert result.exit_code == 2, result.output
    assert_both(refusal_lines(result.stderr), path)
    assert "150" in refusal_lines(result.stderr)[1]  # the local image's refusal is as before: its pixels
    assert staged(ledger) == 0


def staged(ledger: Path) -> int:
    if not ledger.exists():
        return 0
    with Ledger(ledger) as led:
        return sum(led.counts("both").values())


def test_a_set_of_local_images_and_a_folder_named_bare_count_as_local_problems_too(tmp_path, write):
    (tmp_path / "chars").mkdir()
    (tmp_path / "chars" / "knight.png").write_bytes(png_image(200, 150))
    (tmp_path / "wide.png").write_bytes(png_image(200, 150))
    for name, lines in (("set.yaml", "reference_sets:\n  hero: [./wide.png]\n"), ("folder.yaml", "")):
        used = "hero" if lines else "chars"
        path = write(name, f"version: 1\nbatch: both\n{lines}defaults:\n  duration: 5\nrows:\n"
                           f"  - prompt: 'a'\n    references: [{MISSING}]\n"
                           f"  - prompt: 'b'\n    references: [{used}]\n")
        result = CliRunner().invoke(cli, ["validate", str(path), "--online", "--simulate"])
        assert result.exit_code == 2, result.output
        found = refusal_lines(result.stderr)
        assert len(found) == 2 and any(f"reference {MISSING}: answered HTTP 404" in line for line in found), found
        assert any("200x150" in line for line in found), found


def test_validate_online_refuses_a_404_url_and_a_text_file_named_png_at_once(tmp_path, write):
    path = manifest(write, tmp_path, local="./notes.png")
    result = CliRunner().invoke(cli, ["validate", str(path), "--online", "--simulate"])
    assert result.exit_code == 2, result.output
    assert_both(refusal_lines(result.stderr), path, local="./notes.png")


def test_offline_validate_fetches_nothing_and_refuses_the_local_image_alone(tmp_path, write):
    path = manifest(write, tmp_path)
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    lines = refusal_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"{path}:9: reference ./wide.png"), lines


def test_a_local_problem_with_only_good_urls_is_refused_with_the_same_lines_as_before(tmp_path, write):
    path = manifest(write, tmp_path, url=f"{SIM}/other.png")
    offline = CliRunner().invoke(cli, ["validate", str(path)])
    online = CliRunner().invoke(cli, ["validate", str(path), "--online", "--simulate"])
    assert online.exit_code == offline.exit_code == 2
    assert refusal_lines(online.stderr) == refusal_lines(offline.stderr) != []


def test_the_library_raises_one_manifest_error_with_both(tmp_path, write):
    path = manifest(write, tmp_path)
    with pytest.raises(ManifestError) as caught:
        api.check_references(path, simulate=True)
    assert_both([str(d) for d in caught.value.diagnostics], path)
