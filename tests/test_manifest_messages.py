"""Messages a newcomer met: each says what is wrong and what to write, as one FILE:LINE line."""
from __future__ import annotations

from pathlib import Path

import pytest

from batcher.errors import ManifestError
from batcher.manifest import load_manifest
from batcher.plan import check

URL = "https://x.com/a.png"


def messages(path: Path) -> list[str]:
    with pytest.raises(ManifestError) as info:
        check(load_manifest(path))
    return [f"{Path(d.file).name}:{d.line}: {d.message}" for d in info.value.diagnostics]


# --- a: an unquoted ratio is a base-60 number in YAML 1.1 --------------------------------------

def test_unquoted_aspect_ratio_says_to_quote_it_in_defaults_rows_and_vary(write):
    path = write("m.yaml", f"""
        version: 1
        defaults:
          aspect_ratio: 16:9
        rows:
          - prompt: a
            references: {URL}
            aspect_ratio: 21:9
          - prompt: b
            references: {URL}
            vary:
              aspectRatio: ["1:1", 4:3]
          - prompt: c
            references: {URL}
            resolution: 7:20
        """)
    assert messages(path) == [
        'm.yaml:3: aspect_ratio: write "16:9" in quotes (unquoted, YAML reads 16:9 as the number 969)',
        'm.yaml:7: aspect_ratio: write "21:9" in quotes (unquoted, YAML reads 21:9 as the number 1269)',
        'm.yaml:11: aspect_ratio: write "4:3" in quotes (unquoted, YAML reads 4:3 as the number 243)',
        'm.yaml:14: resolution: write "7:20" in quotes (unquoted, YAML reads 7:20 as the number 440)',
    ]


def test_unquoted_ratio_on_a_from_entry_says_to_quote_it(write):
    write("rows.csv", "prompt\nhello\n")
    path = write("m.yaml", f"version: 1\nrows:\n  - from: rows.csv\n    references: {URL}\n    aspect_ratio: 3:4\n")
    assert messages(path) == [
        'm.yaml:5: aspect_ratio: write "3:4" in quotes (unquoted, YAML reads 3:4 as the number 184)']


def test_plain_integers_and_quoted_ratios_keep_their_meaning(write):
    path = write("m.yaml", f"""
        version: 1
        rows:
          - prompt: "a {{x}}"
            references: {URL}
            aspect_ratio: 969
            seed: 1:30
            vary: {{x: [16:9]}}
        """)
    assert messages(path) == ["m.yaml:5: aspect_ratio must be one of 16:9, 9:16, 1:1, 4:3, 3:4; got 969"]
    good = write("g.yaml", f"version: 1\nrows:\n  - prompt: 'a {{x}}'\n    references: {URL}\n"
                           f"    aspect_ratio: '16:9'\n    seed: 1:30\n    vary: {{x: [16:9]}}\n")
    from batcher.plan import expand
    [job] = expand(load_manifest(good))
    # A base-60 number where a number is wanted is still that number, in keys too.
    assert job.params["seed"] == 90 and job.params["prompt"] == "a 969"


# --- b: local files as references ---------------------------------------------------------------

@pytest.mark.parametrize("spec", ["./robot.png", "robot.png", "/abs/x.jpg", "~/x.webp", "file:///x.png"])
def test_local_file_reference_says_local_files_are_not_supported(write, spec):
    path = write("m.yaml", f"version: 1\nrows:\n  - prompt: a\n    references: [{spec!r}]\n")
    assert messages(path) == [(
        f"m.yaml:4: references must be http(s) image URLs or reference set names; {spec!r} looks like a local "
        f"file (local files are not supported yet)")]


def test_local_file_in_a_reference_set_is_reported_once_where_the_set_is(write):
    path = write("m.yaml", f"""
        version: 1
        reference_sets:
          hero: [{URL}, ./robot.png]
        rows:
          - prompt: a
            references: hero
        """)
    assert messages(path) == [(
        "m.yaml:3: reference set 'hero': './robot.png' looks like a local file; a reference set holds http(s) "
        "image URLs (local files are not supported yet)")]


def test_unknown_set_name_is_still_an_unknown_set(write):
    path = write("m.yaml", f"version: 1\nreference_sets:\n  hero: [{URL}]\nrows:\n  - prompt: a\n    references: her\n")
    assert messages(path) == ["m.yaml:6: unknown reference set 'her' (did you mean 'hero'?)"]


# --- c: every problem of every row, at once -----------------------------------------------------

def test_row_without_prompt_still_reports_its_references_and_duration(write):
    path = write("m.yaml", f"""
        version: 1
        rows:
          - references: [unknownset]
            duration: 99
          - prompt: fine
            references: {URL}
            duration: 2
        """)
    assert messages(path) == [
        "m.yaml:3: this row has no prompt",
        "m.yaml:3: unknown reference set 'unknownset'",
        "m.yaml:4: duration must be at most 15, got 99",
        "m.yaml:7: duration must be at least 3, got 2",
    ]


def test_row_with_bad_vary_or_repeat_still_reports_its_other_fields(write):
    path = write("m.yaml", """
        version: 1
        rows:
          - prompt: "a {x}"
            references: nothere
            vary: [x]
            repeat: 0
            resolution: 4k
          - prompt: b
            references: https://x.com/a.png
            seed: 1
            seeds: [-1]
            duration: 1
        """)
    assert messages(path) == [
        "m.yaml:4: unknown reference set 'nothere'",
        "m.yaml:5: vary must be a mapping of names to lists of values",
        "m.yaml:6: repeat must be an integer from 1 to 10000, got 0",
        "m.yaml:7: resolution must be one of 720p, 1080p; got '4k'",
        "m.yaml:11: give 'seed' or 'seeds', not both",
        "m.yaml:12: duration must be at least 3, got 1",
    ]


# --- d: suggestions from the names that make sense in that place -------------------------------

def test_misspelt_variable_suggests_the_vary_name_not_an_api_parameter(write):
    path = write("m.yaml", f"""
        version: 1
        rows:
          - prompt: "a {{stret}}"
            references: {URL}
            vary:
              street: [a, b]
        """)
    assert messages(path) == [
        "m.yaml:3: undefined template variable {stret} (did you mean 'street'?)",
        "m.yaml:6: vary 'street' is not an API parameter and the prompt has no {street} (did you mean 'stret'?)",
    ]


def test_misspelt_vary_name_suggests_the_prompt_variable(write):
    path = write("m.yaml", f"""
        version: 1
        rows:
          - prompt: "a {{street}}"
            references: {URL}
            vary:
              stret: [a, b]
              sed: [1]
        """)
    assert messages(path) == [
        "m.yaml:3: undefined template variable {street} (did you mean 'stret'?)",
        "m.yaml:6: vary 'stret' is not an API parameter and the prompt has no {stret} (did you mean 'street'?)",
        "m.yaml:7: vary 'sed' is not an API parameter (did you mean 'seed'?) and the prompt has no {sed}",
    ]


def test_misspelt_variable_of_a_from_row_suggests_the_file_column(write):
    write("rows.csv", "animal\nfox\n")
    path = write("m.yaml", f"version: 1\nrows:\n  - from: rows.csv\n    prompt: 'A {{anmial}}'\n    references: {URL}\n")
    assert messages(path) == [
        "m.yaml:4: undefined template variable {anmial} (did you mean 'animal'?)",
        "rows.csv:2: unknown column 'animal' (did you mean 'anmial'?)",
    ]
