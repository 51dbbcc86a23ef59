"""Manifest loading and validation: each rule, with its exact line."""
from __future__ import annotations

import pytest

from batcher.errors import ManifestError
from batcher.manifest import load_manifest
from batcher.plan import check, expand

from .conftest import MANIFESTS


def problems(path) -> list[str]:
    with pytest.raises(ManifestError) as info:
        check(load_manifest(path))
    return [f"{d.line}: {d.message}" for d in info.value.diagnostics]


def one_problem(path) -> tuple[int, str]:
    found = problems(path)
    assert len(found) == 1, found
    line, _, message = found[0].partition(": ")
    return int(line), message


def test_demo_manifests_are_valid():
    assert check(load_manifest(MANIFESTS / "demo.yaml")).jobs == 12
    assert check(load_manifest(MANIFESTS / "dataset.yaml")).jobs == 5


@pytest.mark.parametrize("body, line, fragment", [
    ("version: 2\nrows: []\n", 1, "version must be 1"),
    ("version: 1\nmodle: x\nrows:\n  - {prompt: a, references: https://x.com/a.png}\n", 2,
     "unknown field 'modle' (did you mean 'model'?)"),
    ("version: 1\nmodel: happyhorse-2\nrows:\n  - {prompt: a, references: https://x.com/a.png}\n", 2,
     "unknown model"),
    ("version: 1\nrows:\n  - prompt: ''\n    references: https://x.com/a.png\n", 3, "prompt must not be empty"),
    ("version: 1\nrows:\n  - prompt: a\n    references: https://x.com/a.png\n    duration: 2\n", 5,
     "duration must be at least 3"),
    ("version: 1\nrows:\n  - prompt: a\n    references: https://x.com/a.png\n    duration: 16\n", 5,
     "duration must be at most 15"),
    ("version: 1\nrows:\n  - prompt: a\n    references: https://x.com/a.png\n    duration: 5.5\n", 5,
     "duration must be an integer"),
    ("version: 1\nrows:\n  - prompt: a\n    references: https://x.com/a.png\n    resolution: 4k\n", 5,
     "resolution must be one of 720p, 1080p"),
    ("version: 1\nrows:\n  - prompt: a\n    references: https://x.com/a.png\n    aspect_ratio: '21:9'\n", 5,
     "aspect_ratio must be one of"),
    ("version: 1\nrows:\n  - prompt: a\n    references: https://x.com/a.png\n    seed: -1\n", 5,
     "seed must be at least 0"),
    ("version: 1\nrows:\n  - prompt: a\n    references: https://x.com/a.png\n    seed: 2147483648\n", 5,
     "seed must be at most 2147483647"),
    ("version: 1\nrows:\n  - prompt: a\n    references: ftp://x.com/a.png\n", 4, "not an http or https URL"),
    ("version: 1\nrows:\n  - prompt: a\n    references: []\n", 4, "needs at least 1 URL"),
    ("version: 1\nrows:\n  - prompt: 'a {who}'\n    references: https://x.com/a.png\n", 3,
     "undefined template variable {who}"),
    ("version: 1\nrows:\n  - prompt: a\n    references: https://x.com/a.png\n    colour: red\n", 5,
     "unknown row field 'colour'"),
    ("version: 1\nrows:\n  - prompt: a\n    references: https://x.com/a.png\n    resolutoin: 720p\n", 5,
     "(did you mean 'resolution'?)"),
    ("version: 1\nrows:\n  - references: https://x.com/a.png\n", 3, "this row has no prompt"),
    ("version: 1\nrows:\n  - prompt: a\n", 3, "this row has no references"),
    ("version: 1\nrows:\n  - prompt: a\n    references: herro\n", 4, "unknown reference set 'herro'"),
    ("version: 1\nrows:\n  - prompt: a\n    references: https://x.com/a.png\n    repeat: 0\n", 5,
     "repeat must be an integer"),
    ("version: 1\nrows:\n  - prompt: a\n    references: https://x.com/a.png\n    seed: 1\n    seeds: [1]\n", 6,
     "not both"),
    ("version: 1\nrows:\n  - prompt: a\n    references: https://x.com/a.png\n    vary:\n      place: [x]\n", 6,
     "has no {place}"),
    ("version: 1\nrows:\n  - prompt: a\n    prompt: b\n    references: https://x.com/a.png\n", 4,
     "duplicate key 'prompt'"),
    ("version: 1\nrows:\n  - prompt: [a\n", 4, "invalid YAML"),
    ("version: 1\ndefaults:\n  duration: 1\nrows:\n  - {prompt: a, references: https://x.com/a.png}\n", 3,
     "duration must be at least 3"),
    ("version: 1\ndefaults:\n  aspectratio: 1:1\nrows:\n  - {prompt: a, references: https://x.com/a.png}\n", 3,
     "unknown API parameter 'aspectratio' in defaults (did you mean 'aspect_ratio'?)"),
    ("version: 1\nrows: {}\n", 2, "rows must be a non-empty list"),
    ("version: 1\n", 1, "missing field 'rows'"),
    ("- a\n- b\n", 1, "must be a mapping"),
    ("", 1, "the manifest is empty"),
])
def test_each_rule_reports_its_line(write, body, line, fragment):
    path = write("m.yaml", body)
    found = problems(path)
    assert any(p.startswith(f"{line}: ") and fragment in p for p in found), found


def test_prompt_length_is_checked_after_templating(write):
    path = write("m.yaml", f"""
        version: 1
        rows:
          - prompt: "{'x' * 4990}{{word}}"
            references: https://x.com/a.png
            vary:
              word: [short, "{'y' * 20}"]
        """)
    line, message = one_problem(path)
    assert line == 3 and "5010 characters long; the most is 5000" in message


def test_every_error_is_reported_not_only_the_first(write):
    path = write("m.yaml", """
        version: 1
        rows:
          - prompt: a
            references: https://x.com/a.png
            duration: 99
          - prompt: b
            references: nope
          - prompt: c
            references: https://x.com/a.png
            resolution: 8k
        """)
    assert [p.split(":")[0] for p in problems(path)] == ["5", "7", "10"]


def test_diagnostics_are_capped(write):
    rows = "".join(f"  - {{prompt: a{i}, references: https://x.com/a.png, duration: 99}}\n" for i in range(80))
    found = problems(write("m.yaml", "version: 1\nrows:\n" + rows))
    assert len(found) == 51 and "30 more problem(s)" in found[-1]


def test_wire_names_are_accepted_as_aliases(write):
    path = write("m.yaml", """
        version: 1
        rows:
          - prompt: a
            reference_urls: [https://x.com/a.png]
            aspectRatio: "9:16"
        """)
    [job] = expand(load_manifest(path))
    assert job.params["aspect_ratio"] == "9:16" and job.params["references"] == ["https://x.com/a.png"]
    assert job.wire(load_manifest(path).model)["aspectRatio"] == "9:16"


def test_csv_rows_report_the_csv_line(write, tmp_path):
    write("rows.csv", "prompt,duration\nfine,5\nbad,40\n")
    path = write("m.yaml", """
        version: 1
        rows:
          - from: rows.csv
            references: https://x.com/a.png
        """)
    with pytest.raises(ManifestError) as info:
        check(load_manifest(path))
    [d] = info.value.diagnostics
    assert d.file.endswith("rows.csv") and d.line == 3 and "at most 15" in d.message


def test_jsonl_rows_and_bad_lines(write):
    write("rows.jsonl", '{"prompt": "one"}\n{"prompt": "two", "seed": 7}\nnot json\n')
    path = write("m.yaml", "version: 1\nrows:\n  - from: rows.jsonl\n    references: https://x.com/a.png\n")
    with pytest.raises(ManifestError) as info:
        check(load_manifest(path))
    [d] = info.value.diagnostics
    assert d.file.endswith("rows.jsonl") and d.line == 3 and "invalid JSON" in d.message


def test_from_file_must_exist(write):
    path = write("m.yaml", "version: 1\nrows:\n  - from: missing.csv\n    references: https://x.com/a.png\n")
    found = problems(path)
    assert found and found[0].startswith("3: no such file")


def test_unknown_csv_column_suggests(write):
    write("rows.csv", "promt\nx\n")
    path = write("m.yaml", "version: 1\nrows:\n  - from: rows.csv\n    references: https://x.com/a.png\n")
    with pytest.raises(ManifestError) as info:
        check(load_manifest(path))
    assert "unknown column 'promt' (did you mean 'prompt'?)" in str(info.value)
