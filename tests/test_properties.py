"""No input file ever gives a traceback: only ManifestError, or a valid manifest."""
from __future__ import annotations

from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batcher.errors import ManifestError
from batcher.manifest import load_manifest
from batcher.plan import check

FIELDS = ["version", "batch", "model", "defaults", "reference_sets", "rows", "prompt", "references", "duration",
          "resolution", "aspect_ratio", "seed", "seeds", "vary", "repeat", "from", "negative_prompt", "name",
          "place", "aspectRatio", "reference_urls"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10, 3_000_000_000), st.floats(allow_nan=True),
                    st.text(max_size=30), st.sampled_from(["720p", "1080p", "16:9", "auto", "https://x.com/a.png",
                                                           "hero", "{place}", "rows.csv", "1"]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), inner, max_size=5)), max_leaves=30)
documents = st.fixed_dictionaries({}, optional={
    "version": st.sampled_from([1, 2, "1"]) | scalars,
    "reference_sets": st.dictionaries(st.sampled_from(["hero", "x"]), values, max_size=2),
    "defaults": values,
    "rows": st.lists(values, max_size=4),
}) | values


def run(path: Path) -> None:
    try:
        check(load_manifest(path))
    except ManifestError as e:
        assert e.diagnostics
        for d in e.diagnostics:
            assert d.line >= 1 and d.message and "\n" not in d.message


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=documents)
def test_structured_documents_never_crash(tmp_path, doc):
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    run(path)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes_never_crash(tmp_path, data):
    path = tmp_path / "m.yaml"
    path.write_bytes(data)
    run(path)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(st.sampled_from(list("ab:- \n[]{}&*!|>'\"#%@`,?\t1") + ["rows", "version", "prompt"]),
                      max_size=60))
def test_yaml_like_text_never_crashes(tmp_path, parts):
    path = tmp_path / "m.yaml"
    path.write_text("".join(parts), encoding="utf-8")
    run(path)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200))
def test_csv_files_never_crash(tmp_path, text):
    (tmp_path / "rows.csv").write_text(text, encoding="utf-8")
    path = tmp_path / "m.yaml"
    path.write_text("version: 1\nrows:\n  - from: rows.csv\n    references: https://x.com/a.png\n", encoding="utf-8")
    run(path)


def test_deeply_nested_yaml(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("[" * 5000 + "]" * 5000, encoding="utf-8")
    run(path)
    path.write_text("a:\n" + "".join(" " * i + "b:\n" for i in range(1, 3000)), encoding="utf-8")
    run(path)


def test_recursive_alias_and_huge_fanout(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("version: 1\nrows: &r\n  - *r\n", encoding="utf-8")
    run(path)
    laughs = "version: 1\na: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
    path.write_text(laughs + "rows:\n  - prompt: p\n    references: https://x.com/a.png\n    vary: {seed: *i}\n",
                    encoding="utf-8")
    run(path)


def test_huge_expansion_is_refused(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("version: 1\nrows:\n  - prompt: 'a {v}'\n    references: https://x.com/a.png\n    repeat: 10000\n"
                    "    vary:\n      v: [" + ", ".join(str(i) for i in range(1000)) + "]\n", encoding="utf-8")
    try:
        check(load_manifest(path))
        raise AssertionError("expected a ManifestError")
    except ManifestError as e:
        assert "more than" in str(e)


def test_directory_and_missing_file(tmp_path):
    run(tmp_path)
    run(tmp_path / "missing.yaml")
