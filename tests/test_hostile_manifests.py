"""Hostile manifests: each is refused quickly, in little memory, as FILE:LINE diagnostics."""
from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from batcher.cli import cli
from batcher.errors import ManifestError
from batcher.manifest import MAX_YAML_VALUES, is_safe_batch_name, load_manifest
from batcher.plan import MAX_JOBS, check, expand, iter_jobs
from batcher.plan import jobs as plan_module  # where jobs are built and keyed

ROW = "  - prompt: 'a {x}'\n    references: https://x.com/a.png\n"


def diagnostics(path: Path, **kwargs) -> list[tuple[str, int, str]]:
    with pytest.raises(ManifestError) as info:
        check(load_manifest(path), **kwargs)
    return [(d.file, d.line, d.message) for d in info.value.diagnostics]


def alias_bomb(levels: int = 9) -> str:
    """The issue's file: nine levels of nine aliases, used in vary (about 600 bytes)."""
    lines = ["version: 1", "rows:", "  - prompt: 'a {x}'", "    references: https://x.com/a.png", "    vary:",
             "      b0: &a0 [" + ", ".join(["lol"] * 9) + "]"]
    lines += [f"      b{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    lines.append(f"      x: *a{levels - 1}")
    return "\n".join(lines) + "\n"


# --- 10: aliases that expand past a limit; template values that are not scalars -----------------

def test_alias_bomb_is_refused_at_the_alias_line(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb())
    assert path.stat().st_size < 700
    [(file, line, message)] = diagnostics(path)
    # b6 holds nine aliases of 597,871 values each: the second crosses 1,000,000.
    assert (file, line) == (str(path), 12)
    assert f"past {MAX_YAML_VALUES:,} values" in message


def test_alias_bomb_outside_rows_is_refused_too(tmp_path):
    # Old code never walked this value (an unknown field): the limit is on the whole document.
    lines = ["version: 1", "unused:", "  b0: &a0 [" + ", ".join(["lol"] * 9) + "]"]
    lines += [f"  b{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\nrows:\n" + ROW + "    vary: {x: [1]}\n")
    found = diagnostics(path)
    assert len(found) == 1 and found[0][1] == 9 and "past 1,000,000 values" in found[0][2]


def test_merge_key_bomb_is_refused(tmp_path):
    lines = ["version: 1", "m0: &m0 {" + ", ".join(f"k{i}: v" for i in range(9)) + "}"]
    lines += [f"m{i}: &m{i} {{<<: [" + ", ".join([f"*m{i - 1}"] * 9) + f"], x{i}: 1}}" for i in range(1, 9)]
    path = tmp_path / "merge.yaml"
    path.write_text("\n".join(lines) + "\nrows:\n" + ROW)
    found = diagnostics(path)
    assert len(found) == 1 and found[0][1] == 7 and "past 1,000,000 values" in found[0][2]


def test_alias_to_an_enclosing_value_is_an_error(tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text("version: 1\nrows: &r\n  - prompt: a\n    references: *r\n")
    assert diagnostics(path) == [(str(path), 4, "this alias names a value that contains it")]


def test_small_aliases_still_work(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("version: 1\nreference_sets:\n  hero: &h [https://x.com/a.png]\nrows:\n"
                    "  - prompt: 'a {x}'\n    references: *h\n    vary: {x: &v [beach, meadow]}\n"
                    "  - prompt: 'b {x}'\n    references: *h\n    vary: {x: *v}\n")
    assert check(load_manifest(path)).jobs == 4


def test_vary_values_for_template_variables_must_be_scalars(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("version: 1\nrows:\n" + ROW + "    vary:\n      x:\n        - fine\n        - [a, b]\n"
                    "        - {k: v}\n")
    [(_, line, message)] = diagnostics(path)
    assert line == 8 and message == "vary 'x': a value for {x} must be text or a number, not a list ['a', 'b'] " \
                                    "(1 more in this list)"


def test_jsonl_values_for_template_variables_must_be_scalars(tmp_path):
    (tmp_path / "rows.jsonl").write_text('{"prompt": "a {x}", "x": "fine"}\n{"prompt": "a {x}", "x": [1, 2]}\n')
    path = tmp_path / "m.yaml"
    path.write_text("version: 1\nrows:\n  - from: rows.jsonl\n    references: https://x.com/a.png\n")
    [(file, line, message)] = diagnostics(path)
    assert file.endswith("rows.jsonl") and line == 2 and "must be text or a number" in message


# --- 11: the job count is checked before any job is built -------------------------------------

def thousand_by_thousand_rows(n: int) -> str:
    values = "[" + ",".join(str(i) for i in range(1000)) + "]"
    row = ("  - prompt: 'shot {a} {b}'\n    references: https://x.com/a.png\n"
           "    vary:\n      a: VALUES\n      b: VALUES\n")
    return "version: 1\nrows:\n" + row.replace("VALUES", values) * n


def test_huge_expansion_is_refused_before_building_any_job(tmp_path, monkeypatch):
    # Ten rows of a million jobs each: the second row crosses the limit.
    path = tmp_path / "huge.yaml"
    path.write_text(thousand_by_thousand_rows(10))

    def no_jobs(*args, **kwargs):
        raise AssertionError("a job was built before the count was checked")
    monkeypatch.setattr(plan_module, "job_key", no_jobs)
    [(file, line, message)] = diagnostics(path)
    assert (file, line) == (str(path), 8)
    assert f"more than {MAX_JOBS:,} jobs" in message and "--max-jobs" in message
    assert MAX_JOBS == 1_000_000


def test_max_jobs_is_a_parameter_of_check_iter_jobs_and_expand(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("version: 1\nrows:\n" + ROW + "    vary: {x: [a, b, c]}\n" + ROW + "    vary: {x: [d, e, f]}\n")
    m = load_manifest(path)
    assert check(m, max_jobs=6).jobs == 6 and len(expand(m, max_jobs=6)) == 6
    for refuse in (lambda: check(m, max_jobs=5), lambda: expand(m, max_jobs=5),
                   lambda: list(iter_jobs(m, max_jobs=5))):
        with pytest.raises(ManifestError) as info:
            refuse()
        [d] = info.value.diagnostics
        assert d.line == 6 and "more than 5 jobs" in d.message


def test_a_manifest_under_1mb_of_big_vary_lists_is_refused(tmp_path):
    # Many rows, each with two vary lists of 300: under 1 MB, 120 million jobs. Measured by
    # hand with /usr/bin/time -v (see the report), not asserted here: about 2 s and 180 MB.
    values = "[" + ",".join(str(k) for k in range(300)) + "]"
    row = f"  - prompt: 'shot {{a}} {{b}}'\n    references: https://x.com/a.png\n    vary:\n      a: {values}\n" \
          f"      b: {values}\n"
    body = "version: 1\nrows:\n" + row * 430
    assert len(body) < 1_000_000
    path = tmp_path / "big.yaml"
    path.write_text(body)
    [(_, line, message)] = diagnostics(path)
    assert line == 3 + 5 * 11 and "--max-jobs" in message  # the 12th row passes 1,000,000


def test_cli_validate_and_plan_take_max_jobs(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("version: 1\nrows:\n" + ROW + "    vary: {x: [a, b, c]}\n")
    runner = CliRunner()
    for command in (["validate"], ["plan", "--ledger", str(tmp_path / "none.db")]):
        refused = runner.invoke(cli, [*command, "--max-jobs", "2", str(path)])
        assert refused.exit_code == 2 and "more than 2 jobs" in refused.output and "--max-jobs" in refused.output
        assert runner.invoke(cli, [*command, "--max-jobs", "3", str(path)]).exit_code == 0
    assert runner.invoke(cli, ["validate", "--max-jobs", "0", str(path)]).exit_code == 2
    assert "1,000,000" in runner.invoke(cli, ["validate", "--help"]).output


# --- 12: the batch name stays one folder inside --out ------------------------------------------

@pytest.mark.parametrize("name", ["../../../escaped-batch", "/tmp/escaped", "a/b", "a\\\\b", ".hidden", "..",
                                  "a..b", "trailing.", "nul", "COM1.txt", "x\\x01y", "x\\0y", "tab\\tname",
                                  "space name", "x" * 101, "-dash-first"])
def test_unsafe_batch_names_are_refused(tmp_path, name):
    path = tmp_path / "m.yaml"
    path.write_text(f'version: 1\nbatch: "{name}"\nrows:\n' + ROW.replace("{x}", "x"))
    m = load_manifest(path)
    assert is_safe_batch_name(m.batch)  # the stand-in never reaches a folder, but is safe anyway
    [(_, line, message)] = diagnostics(path)
    assert line == 2 and "cannot be a folder name" in message


def test_default_batch_from_an_unsafe_file_name_is_refused(tmp_path):
    for stem, suggestion in (("my batch (v2)", "my-batch-v2"), (".hidden", "hidden")):
        path = tmp_path / f"{stem}.yaml"
        path.write_text("version: 1\nrows:\n" + ROW.replace("{x}", "x"))
        [(_, line, message)] = diagnostics(path)
        assert line == 1 and f"add 'batch: {suggestion}'" in message
        assert is_safe_batch_name(load_manifest(path).batch)


def test_is_safe_batch_name():
    for good in ("knight-and-mare", "a", "A.b_c-1", "v1.2", "x" * 100, "nullable", "con-test"):
        assert is_safe_batch_name(good), good
    for bad in ("", "..", ".", "../x", "/x", "a/b", "a\\b", "a\x00b", "a\nb", "a..b", "x.", "x" * 101,
                "_x", "NUL", "nul.txt", "lpt1", None, 3, ["a"]):
        assert not is_safe_batch_name(bad), bad


# --- 13: only regular files are read; JSONL duplicate keys are refused ---------------------------

def run_with_timeout(fn, fifo: Path, seconds: float = 5.0):
    result: dict = {}

    def target():
        try:
            result["value"] = fn()
        except BaseException as e:
            result["error"] = e
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():  # old behaviour: blocked opening the FIFO; let it go before failing
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(5)
        pytest.fail("reading the manifest blocked on a FIFO")
    return result


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_from_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "rows.jsonl"
    os.mkfifo(fifo)
    path = tmp_path / "m.yaml"
    path.write_text("version: 1\nrows:\n  - from: rows.jsonl\n    references: https://x.com/a.png\n")
    result = run_with_timeout(lambda: check(load_manifest(path)), fifo)
    error = result.get("error")
    assert isinstance(error, ManifestError)
    [d] = error.diagnostics
    assert (d.file, d.line) == (str(path), 3) and "named pipe (FIFO), not a regular file" in d.message


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_manifest_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "m.yaml"
    os.mkfifo(fifo)
    error = run_with_timeout(lambda: load_manifest(fifo), fifo).get("error")
    assert isinstance(error, ManifestError) and "not a regular file" in str(error)


@pytest.mark.skipif(not Path("/dev/null").exists(), reason="no /dev/null here")
def test_devices_are_refused(tmp_path):
    (tmp_path / "rows.csv").symlink_to("/dev/null")
    path = tmp_path / "m.yaml"
    path.write_text("version: 1\nrows:\n  - from: rows.csv\n    references: https://x.com/a.png\n")
    [(_, line, message)] = diagnostics(path)
    assert line == 3 and "is a device, not a regular file" in message
    with pytest.raises(ManifestError) as info:
        load_manifest("/dev/null")
    assert str(info.value.diagnostics[0]) == "/dev/null:1: /dev/null is a device, not a regular file"


def test_jsonl_duplicate_keys_are_refused_like_yaml(tmp_path):
    (tmp_path / "rows.jsonl").write_text('{"prompt": "one"}\n{"prompt": "two", "seed": 1, "prompt": "three"}\n'
                                         '{"prompt": "four", "x": {"k": 1, "k": 2}}\n')
    path = tmp_path / "m.yaml"
    path.write_text("version: 1\nrows:\n  - from: rows.jsonl\n    references: https://x.com/a.png\n")
    found = diagnostics(path)
    assert [(Path(f).name, line, message) for f, line, message in found] == [
        ("rows.jsonl", 2, "duplicate key 'prompt' in this JSON object"),
        ("rows.jsonl", 3, "duplicate key 'k' in this JSON object")]
    yaml_dup = tmp_path / "dup.yaml"
    yaml_dup.write_text("version: 1\nrows:\n  - prompt: a\n    prompt: b\n    references: https://x.com/a.png\n")
    [(_, line, message)] = diagnostics(yaml_dup)
    assert line == 4 and "duplicate key 'prompt'" in message


def test_a_valid_row_is_counted_without_building_its_jobs(tmp_path, monkeypatch):
    # validate must answer for a million valid jobs in seconds: a row whose every job is valid is
    # counted from its compiled key text, no job, request dict or JSON encoding per job.
    path = tmp_path / "big.yaml"
    path.write_text(thousand_by_thousand_rows(1).replace(",".join(str(i) for i in range(1000)),
                                                         ",".join(str(i) for i in range(300))))
    expected = check(load_manifest(path))

    def no_jobs(*args, **kwargs):
        raise AssertionError("a job was built to validate a valid row")
    monkeypatch.setattr(plan_module, "job_key", no_jobs)
    monkeypatch.setattr(plan_module, "JobSpec", no_jobs)
    summary = check(load_manifest(path))
    assert summary.jobs == expected.jobs == 90_000 and summary.duplicates == 0


# --- 14: values the YAML loader cannot build are FILE:LINE diagnostics, never a traceback -----

@pytest.mark.parametrize(("value", "expected"), [
    ("2001-02-30", "2001-02-30 is not a date (day is out of range for month); write it in quotes if it is text"),
    ("1" * 5000, "this number has 5,000 digits; the most batcher reads is 1,000 (write it in quotes if it is text)"),
    ("0x" + "f" * 5000, "this number has 5,000 digits; the most batcher reads is 1,000 (write it in quotes if it "
                       "is text)"),
    ("-1_" + "2" * 2000, "this number has 2,001 digits; the most batcher reads is 1,000 (write it in quotes if it "
                        "is text)"),
])
def test_yaml_values_the_loader_cannot_build_are_diagnostics(tmp_path, value, expected):
    path = tmp_path / "m.yaml"
    path.write_text(f"version: 1\nrows:\n  - prompt: a\n    references: https://x.com/a.png\n    seed: {value}\n")
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    found = [(d.file, d.line, d.message) for d in info.value.diagnostics]
    assert found == [(str(path), 5, f"invalid YAML: {expected}")]
    refused = CliRunner().invoke(cli, ["validate", str(path)])
    assert refused.exit_code == 2, refused.output
    assert f"{path}:5: invalid YAML: " in refused.output and "Traceback" not in refused.output


def test_yaml_values_the_loader_cannot_build_inside_aliases_and_lists_are_diagnostics(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("version: 1\nrows:\n  - prompt: 'a {x}'\n    references: https://x.com/a.png\n"
                    "    vary:\n      x: &v\n        - ok\n        - 2023-13-01\n      y: *v\n")
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    [d] = info.value.diagnostics
    assert d.line == 8 and d.message.startswith("invalid YAML: 2023-13-01 is not a date (month must be in 1..12)")


def test_long_numbers_under_the_limit_still_load(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("version: 1\nrows:\n  - prompt: 'a {x}'\n    references: https://x.com/a.png\n"
                    f"    vary: {{x: [{'9' * 1000}, '{'9' * 4000}']}}\n")
    assert check(load_manifest(path)).jobs == 2


# --- 15: JSONL line numbers are file lines; null, booleans and NaN never fill a {variable} -----

@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\u0085"])
def test_jsonl_line_numbers_are_file_lines_whatever_the_strings_hold(tmp_path, separator):
    (tmp_path / "rows.jsonl").write_text(
        f'{{"prompt": "one{separator}two"}}\r\n{{"prompt": "three", "seed": 1}}\r\nnot json\n', encoding="utf-8")
    path = tmp_path / "m.yaml"
    path.write_text("version: 1\nrows:\n  - from: rows.jsonl\n    references: https://x.com/a.png\n")
    [(file, line, message)] = diagnostics(path)
    assert Path(file).name == "rows.jsonl" and line == 3 and message.startswith("invalid JSON")
    (tmp_path / "rows.jsonl").write_text(f'{{"prompt": "one{separator}two"}}\r\n{{"prompt": "three"}}\n',
                                         encoding="utf-8")
    jobs = expand(load_manifest(path))
    assert [job.origin.rsplit(":", 1)[1] for job in jobs] == ["1", "2"]
    assert jobs[0].params["prompt"] == f"one{separator}two"
