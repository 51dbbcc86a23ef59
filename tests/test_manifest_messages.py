"""Messages a newcomer met: each says what is wrong and what to write, as one FILE:LINE line."""
from __future__ import annotations

from pathlib import Path

import pytest

from batcher.errors import ManifestError
from batcher.manifest import load_manifest
from batcher.plan import check, expand

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
def test_a_missing_local_file_reference_says_so_with_the_path_it_looked_for(write, spec):
    # Local files are references now (tests/test_local_references.py); one that is not there is
    # reported with the path batcher looked for.
    path = write("m.yaml", f"version: 1\nrows:\n  - prompt: a\n    references: [{spec!r}]\n")
    [message] = messages(path)
    assert message.startswith(f"m.yaml:4: reference {spec!r}: no such file or folder (")
    assert message.endswith(spec.replace("file://", "").replace("~", "").lstrip("./") + ")")


def test_a_missing_local_file_in_a_reference_set_is_reported_once_where_the_set_is(write):
    path = write("m.yaml", f"""
        version: 1
        reference_sets:
          hero: [{URL}, ./robot.png]
        rows:
          - prompt: a
            references: hero
        """)
    [message] = messages(path)
    assert message.startswith("m.yaml:3: reference set 'hero': reference './robot.png': no such file or folder (")


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
    path = write("m.yaml",
                 f"version: 1\nrows:\n  - from: rows.csv\n    prompt: 'A {{anmial}}'\n    references: {URL}\n")
    assert messages(path) == [
        "m.yaml:4: undefined template variable {anmial} (did you mean 'animal'?)",
        "rows.csv:2: unknown column 'animal' (did you mean 'anmial'?)",
    ]


# --- a JSONL null, or an empty cell, never reads as an undefined variable ------------------------

def test_null_or_empty_column_for_a_template_variable_says_the_column_is_empty(write):
    write("rows.jsonl", '{"who": "fox"}\n{"who": null}\n{"who": ""}\n{"prompt": "plain", "who": null}\n')
    write("rows.csv", "who,duration\nfox,5\n,5\n")
    path = write("m.yaml", f"""
        version: 1
        rows:
          - from: rows.jsonl
            prompt: "a {{who}}"
            references: {URL}
          - from: rows.csv
            prompt: "a {{who}}"
            references: {URL}
        """)
    assert messages(path) == [
        "rows.csv:3: column 'who' is empty on this line; {who} in the prompt needs text or a number",
        "rows.jsonl:2: column 'who' is null on this line; {who} in the prompt needs text or a number",
        "rows.jsonl:3: column 'who' is empty on this line; {who} in the prompt needs text or a number",
    ]


def test_empty_column_is_fine_when_the_entry_varies_the_variable(write):
    write("rows.jsonl", '{"who": null}\n')
    path = write("m.yaml", f"""
        version: 1
        rows:
          - from: rows.jsonl
            prompt: "a {{who}}"
            references: {URL}
            vary: {{who: [fox, hare]}}
        """)
    assert [job.params["prompt"] for job in expand(load_manifest(path))] == ["a fox", "a hare"]


def test_booleans_and_non_finite_numbers_never_fill_a_template_variable(write):
    write("rows.jsonl", '{"who": true}\n{"who": NaN}\n{"who": -Infinity}\n{"who": 1e999}\n{"who": 1.5}\n')
    path = write("m.yaml", f"""
        version: 1
        rows:
          - from: rows.jsonl
            prompt: "a {{who}}"
            references: {URL}
          - prompt: "b {{mood}}"
            references: {URL}
            vary:
              mood: [calm, yes]
          - prompt: "c {{n}}"
            references: {URL}
            vary:
              n: [1, .nan, .inf]
        """)
    assert messages(path) == [
        "m.yaml:9: vary 'mood': a value for {mood} must be text or a number, not true/false (unquoted, YAML reads "
        "yes, no, on, off, true and false as true/false: write it in quotes)",
        "m.yaml:13: vary 'n': a value for {n} must be text or a finite number, not nan (1 more in this list)",
        "rows.jsonl:1: column 'who' fills {who}: it must be text or a number, not true/false "
        "(write it in quotes to use it as text)",
        "rows.jsonl:2: column 'who' fills {who}: it must be text or a finite number, not nan",
        "rows.jsonl:3: column 'who' fills {who}: it must be text or a finite number, not -inf",
        "rows.jsonl:4: column 'who' fills {who}: it must be text or a finite number, not inf",
    ]


def test_empty_column_is_reported_with_the_other_problems_of_its_row(write):
    write("rows.jsonl", '{"who": null, "duration": 99}\n')
    path = write("m.yaml", 'version: 1\nrows:\n  - from: rows.jsonl\n    prompt: "a {who}"\n')
    assert messages(path) == [
        "rows.jsonl:1: this row has no references",
        "rows.jsonl:1: column 'who' is null on this line; {who} in the prompt needs text or a number",
        "rows.jsonl:1: duration must be at most 15, got 99",
    ]
