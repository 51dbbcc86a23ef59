"""Every input reader fuzzed for tracebacks (issue 23, item 13): whatever a YAML manifest, a CSV
or a JSONL rows file holds, checking it ends in a valid batch or in `FILE:LINE: message`
diagnostics that can be printed, never another exception. And a lone surrogate (`"\\ud800"`) in
a JSONL rows file is one such line, exit 2, from validate, plan and run alike."""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import batcher.manifest.yamlfile
from batcher.cli import cli
from batcher.errors import ManifestError
from batcher.manifest import Diagnostics, load_manifest
from batcher.plan import check

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
HEAD = "version: 1\nbatch: fuzz\ndefaults:\n  duration: 5\n  references: [https://example.com/a.png]\nrows:\n"
COLUMNS = ["prompt", "seed", "seeds", "duration", "resolution", "aspect_ratio", "references", "repeat", "name",
           "negative_prompt", "place", "vary", "from"]

# Any code point, the surrogates U+D800..U+DFFF included (hypothesis' text() leaves them out).
any_text = st.lists(st.one_of(st.integers(0, 0x10FFFF), st.integers(0xD800, 0xDFFF)), max_size=12).map(
    lambda points: "".join(map(chr, points)))
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2 ** 70), 2 ** 70), st.floats(), any_text,
                    st.sampled_from(["720p", "16:9", "{place}", "https://example.com/b.png", "5", "-1"]))
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(COLUMNS) | any_text, inner, max_size=4)),
    max_leaves=12)


def outcome(manifest: Path) -> list[str]:
    """The diagnostics checking `manifest` gives, as the CLI prints them ([] for a valid batch);
    any other exception fails the test."""
    try:
        check(load_manifest(manifest))
    except ManifestError as e:
        assert e.diagnostics
        lines = []
        for d in e.diagnostics:
            assert d.file and d.line >= 1 and d.message and "\n" not in d.message
            line = f"{d.file}:{d.line}: {d.message}"
            line.encode("utf-8")  # printable: no lone surrogate in any message
            lines.append(line)
        return lines
    return []


def with_rows(tmp_path: Path, name: str, data: bytes) -> Path:
    (tmp_path / name).write_bytes(data)
    manifest = tmp_path / "m.yaml"
    manifest.write_text(HEAD + f"  - from: {name}\n", encoding="utf-8")
    return manifest


@FUZZ
@given(lines=st.lists(json_values, min_size=1, max_size=4), ascii_only=st.booleans())
def test_jsonl_rows_of_any_json_never_crash(tmp_path, lines, ascii_only):
    text = "\n".join(json.dumps(v, ensure_ascii=True) for v in lines)
    if not ascii_only:  # raw characters where UTF-8 can hold them, escapes where it cannot
        text = "\n".join(json.dumps(v, ensure_ascii=False).encode("utf-8", "backslashreplace").decode("utf-8")
                         for v in lines)
    outcome(with_rows(tmp_path, "rows.jsonl", text.encode("utf-8")))


@FUZZ
@given(texts=st.lists(st.fixed_dictionaries({"prompt": any_text.map(lambda t: "a " + t)},
                                            optional={"negative_prompt": any_text, "name": any_text}),
                      min_size=1, max_size=3))
def test_jsonl_rows_valid_but_for_their_texts_never_crash(tmp_path, texts):
    """Rows that pass every other check, so their texts reach what hashes and stores them."""
    text = "\n".join(json.dumps(row) for row in texts)
    outcome(with_rows(tmp_path, "rows.jsonl", text.encode("utf-8")))


@FUZZ
@given(data=st.binary(max_size=200))
def test_jsonl_rows_of_any_bytes_never_crash(tmp_path, data):
    outcome(with_rows(tmp_path, "rows.jsonl", data))


@FUZZ
@given(header=st.lists(st.sampled_from(COLUMNS) | any_text, min_size=1, max_size=4),
       cells=st.lists(st.lists(any_text | st.sampled_from(["", "5", "720p", "1 2", '"', "\r"]), max_size=5),
                      max_size=3))
def test_csv_rows_of_any_text_never_crash(tmp_path, header, cells):
    text = "\n".join(",".join(row) for row in [header, *cells])
    outcome(with_rows(tmp_path, "rows.csv", text.encode("utf-8", "surrogatepass")))


@FUZZ
@given(data=st.binary(max_size=200))
def test_csv_rows_of_any_bytes_never_crash(tmp_path, data):
    outcome(with_rows(tmp_path, "rows.csv", data))


@FUZZ
@given(prompt=any_text, key=any_text)
def test_yaml_escapes_of_any_code_point_never_crash(tmp_path, prompt, key):
    def escaped(text: str) -> str:  # YAML's double-quoted form, every character a \U escape
        return '"' + "".join(f"\\U{ord(c):08x}" for c in text) + '"'
    manifest = tmp_path / "m.yaml"
    manifest.write_text(HEAD + f"  - prompt: {escaped(prompt)}\n    {escaped(key)}: 1\n", encoding="utf-8")
    outcome(manifest)


def pure_python_yamlfile(monkeypatch):
    """batcher.manifest.yamlfile as it loads where PyYAML has no libyaml: the pure-Python parser, which
    (unlike libyaml) builds "\\ud800" from its escape."""
    monkeypatch.delattr(yaml, "CSafeLoader", raising=False)
    spec = importlib.util.spec_from_file_location("batcher.manifest._pure_yamlfile", batcher.manifest.yamlfile.__file__)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module._BaseLoader is yaml.SafeLoader
    return module


@pytest.mark.parametrize("text", ['prompt: "a \\ud800 b"\n', 'x: 1\n"\\udfff": 2\n', "- ok\n- \"\\U0000dc00\"\n"])
def test_a_lone_surrogate_in_yaml_is_a_diagnostic_with_either_parser(monkeypatch, text):
    line = 2 if text.startswith("x") or text.startswith("-") else 1
    for module in (batcher.manifest.yamlfile, pure_python_yamlfile(monkeypatch)):
        diags = Diagnostics()
        assert module.parse_yaml(text, "m.yaml", diags) is None
        [d] = diags.items
        assert (d.file, d.line) == ("m.yaml", line), d
        str(d.message).encode("utf-8")


ISSUE_ROWS = ['{"prompt": "a knight"}', '{"prompt": "a cat \\ud800 on a mat"}']  # the issue's reproduction
EVERY_PLACE = [
    '{"prompt": "a knight"}',
    '{"prompt": "a cat \\ud800 on a mat"}',
    '{"prompt": "a mare", "negative_prompt": "\\udfff"}',
    '{"prompt": "a dog", "\\ud83d": "x"}',  # a key, half of an emoji's pair
    '{"prompt": "a fox", "seeds": [1, "\\udc00"]}',
    '{"prompt": "a pair is fine \\ud83d\\ude00"}',
]


@pytest.mark.parametrize("command", ["validate", "plan", "run"])
@pytest.mark.parametrize(("found", "bad_lines"), [(ISSUE_ROWS, [2]), (EVERY_PLACE, [2, 3, 4, 5])])
def test_a_lone_surrogate_in_jsonl_rows_is_file_line_and_exit_2(tmp_path, command, found, bad_lines):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("\n".join(found) + "\n", encoding="utf-8")
    manifest = tmp_path / "m.yaml"
    manifest.write_text(HEAD + "  - from: rows.jsonl\n", encoding="utf-8")
    args = [command, str(manifest)]
    if command == "run":
        args += ["--simulate", "--ledger", str(tmp_path / "l.db"), "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # an exit, not an escaped exception
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert [line.split(": ", 1)[0] for line in lines] == [f"{rows}:{n}" for n in bad_lines], lines
    assert all("surrogate" in line for line in lines)


@pytest.mark.parametrize("command", ["validate", "plan", "run"])
def test_a_manifest_whose_path_is_not_utf8_is_one_line_and_exit_2(tmp_path, command):
    """A folder named with bytes that are not UTF-8 (Python holds them as lone surrogates): the
    manifest could be read, but its path never written as text, as every job's origin is."""
    folder = os.fsdecode(os.fsencode(tmp_path) + b"/takes-\xff")
    try:
        os.mkdir(folder)
    except (OSError, UnicodeEncodeError):
        pytest.skip("this file system refuses names that are not UTF-8")
    manifest = os.path.join(folder, "m.yaml")
    Path(manifest).write_text(HEAD + "  - prompt: a knight\n", encoding="utf-8")
    args = [command, manifest]
    if command == "run":
        args += ["--simulate", "--ledger", str(tmp_path / "l.db"), "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    [line] = result.stderr.strip().splitlines()
    shown = manifest.encode("utf-8", "backslashreplace").decode()  # as the CLI prints what UTF-8 cannot hold
    assert line.startswith(f"{shown}:1: ") and "not UTF-8" in line, line
