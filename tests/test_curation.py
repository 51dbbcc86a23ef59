"""Curation (issue 26, item 5): `reject` leaves clips out of exports, with an event; `reroll`
queues a new take that only a run under a budget sends."""
from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from batcher.cli import cli
from batcher.ledger import Ledger

from .conftest import small_manifest


def _cli(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _exported(ledger_path, *args):
    result = _cli("export", "--ledger", ledger_path, *args)
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]


def test_rejected_clips_leave_exports_with_an_event_and_stay_on_disk(simrun, write, tmp_path, ledger_url):
    _, _, ledger_path = simrun(write("m.yaml", small_manifest(4)), ledger=ledger_url)
    with Ledger(ledger_path) as ledger:
        jobs = list(ledger.iter_batch("small"))
    keys = [j.key for j in jobs]
    (tmp_path / "bad.txt").write_text(f"# clips to drop\n{keys[1]}\n\n{keys[2][:8]}  # blurry\n")
    result = _cli("reject", keys[0][:10], "--from", tmp_path / "bad.txt", "--ledger", ledger_path)
    assert result.exit_code == 0 and "rejected 3 clip(s)" in result.output, result.output
    again = _cli("reject", keys[0], "--ledger", ledger_path)
    assert "rejected 0 clip(s) (1 already were)" in again.output
    assert [r["id"] for r in _exported(ledger_path)] == [keys[3]]
    everything = _exported(ledger_path, "--include-rejected")
    assert [r["rejected"] for r in everything] == [True, True, True, False]
    _cli("export", "--ledger", ledger_path, "--format", "videofolder", "-o", tmp_path / "vf")
    assert len(list((tmp_path / "vf").glob("*.mp4"))) == 1
    with Ledger(ledger_path) as ledger:
        for job in jobs[:3]:
            assert [e.kind for e in ledger.events(job.id)].count("rejected") == 1
    assert all(Path(j.file_path).exists() for j in jobs)


def test_unknown_keys_are_refused_and_nothing_is_written(simrun, write):
    _, _, ledger_path = simrun(write("m.yaml", small_manifest(2)))
    with Ledger(ledger_path) as ledger:
        key = next(ledger.iter_batch("small")).key
    result = _cli("reject", key, "ffffffffffffffffffff", "--ledger", ledger_path)
    assert result.exit_code != 0 and "ffffffffffffffffffff: no job of the ledger has this key" in result.output
    assert len(_exported(ledger_path)) == 2
    assert _cli("reroll", "--ledger", ledger_path).exit_code == 2


def test_a_reroll_is_a_new_take_sent_only_by_a_run_under_a_budget(simrun, write, ledger_url):
    manifest = write("m.yaml", small_manifest(2))
    _, _, ledger_path = simrun(manifest, ledger=ledger_url)
    with Ledger(ledger_path) as ledger:
        source = next(ledger.iter_batch("small"))
        spent = ledger.figures("small").spend.spent
    result = _cli("reroll", source.key, "--ledger", ledger_path)
    assert result.exit_code == 0 and "take 2 of " + source.key in result.output and "estimate" in result.output
    second = _cli("reroll", source.key, "--new-seed", "--ledger", ledger_path)
    assert "take 3 of" in second.output, second.output
    with Ledger(ledger_path) as ledger:
        new = [j for j in ledger.iter_batch("small") if j.reroll_of == source.key]
        assert [(j.take, j.state) for j in new] == [(2, "pending"), (3, "pending")]
        assert len({source.key, *(j.key for j in new)}) == 3
        assert new[0].parameters() == source.parameters()
        assert new[1].parameters()["seed"] != source.parameters().get("seed")
        assert ledger.figures("small").spend.spent == spent  # queued, not paid
        assert [e.kind for e in ledger.events(source.id)].count("rerolled") == 2
    # The run stages the manifest again: the rerolls stay in the batch.
    report, _, _ = simrun(manifest, ledger=ledger_url)
    assert report.counts["completed"] == 4
    with Ledger(ledger_path) as ledger:
        done = {j.key: j for j in ledger.iter_batch("small")}
        assert all(done[j.key].state == "completed" and done[j.key].file_path for j in new)
        assert ledger.figures("small").spend.spent > spent
    records = {r["id"]: r for r in _exported(ledger_path)}
    assert records[new[0].key]["reroll_of"] == source.key and records[new[0].key]["take"] == 2
