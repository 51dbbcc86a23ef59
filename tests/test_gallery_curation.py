"""The gallery's curation (issue 26, item 5): a reader ticks clips and copies the `reject` or
`reroll` command for them, in a real headless Chromium, with no server; the command copied runs."""
from __future__ import annotations

import shlex
import shutil

import pytest
from click.testing import CliRunner

from batcher.cli import cli
from batcher.ledger import Ledger
from batcher.views import build_report

from .conftest import small_manifest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_ticked_clips_give_a_command_to_copy_that_runs(simrun, write, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    _, _, ledger_path = simrun(write("m.yaml", small_manifest(4)))
    with Ledger(ledger_path) as ledger:
        keys = [j.key for j in ledger.iter_batch("small")]
        ledger.write(ledger.reject([next(ledger.iter_batch("small"))], "test"))
        build_report(ledger, "small", tmp_path / "report.html")
    errors: list[str] = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"])
        context = browser.new_context()
        page = context.new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto((tmp_path / "report.html").as_uri())
        assert page.locator("article.card").count() == 4  # the rejected clip too, marked
        assert page.locator("article.card.rejected .rejected-tag").count() == 1
        page.click("#copy-reroll")
        assert page.input_value("#command") == "tick clips first"
        page.check(f'.pick[value="{keys[1]}"]')
        page.check(f'.pick[value="{keys[3]}"]')
        assert page.text_content("#picked") == "2"
        page.click("#copy-reject")
        command = page.input_value("#command")
        selected = page.evaluate("() => window.getSelection().toString() || "
                                 "document.activeElement.value.substring(document.activeElement.selectionStart, "
                                 "document.activeElement.selectionEnd)")
        page.click("#copy-reroll")
        reroll = page.input_value("#command")
        browser.close()
    assert not errors, errors
    assert command == f"batcher reject {keys[1]} {keys[3]} --batch small --ledger {shlex.quote(str(ledger_path))}"
    assert selected == command  # selected for the copy, also where the clipboard is not granted
    assert reroll.startswith(f"batcher reroll {keys[1]} {keys[3]} --batch small")
    result = CliRunner().invoke(cli, shlex.split(command)[1:])
    assert result.exit_code == 0 and "rejected 2 clip(s)" in result.output, result.output
    with Ledger(ledger_path) as ledger:
        assert [j.rejected_at is not None for j in ledger.iter_batch("small")] == [True, True, False, True]
