"""No input file ever gives a traceback: only ManifestError, or a valid manifest."""
from __future__ import annotations

from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batcher.errors import ManifestError
from batcher.manifest import load_manifest
from batcher.money import estimate_hundredths
from batcher.plan import check

from .conftest import manifest_rows, valid_rows
from .test_job_keys import spec_job_key, spec_job_seed, spec_stored  # (at import: see below)

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
@given(parts=st.lists(st.sampled_from([*"ab:- \n[]{}&*!|>'\"#%@`,?\t1", "rows", "version", "prompt"]),
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
        f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True))
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


def _reference_render(template: str, variables: dict) -> tuple[str, list[str]]:
    """The original one-pass regex renderer, kept here as the specification."""
    import re
    missing: list[str] = []

    def replace(m: re.Match) -> str:
        if m.group(0) in ("{{", "}}"):
            return m.group(0)[0]
        if m.group(1) in variables:
            return str(variables[m.group(1)])
        missing.append(m.group(1))
        return m.group(0)
    return re.sub(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}", replace, template), missing


@settings(max_examples=500, deadline=None)
@given(parts=st.lists(st.sampled_from(["{", "}", "{{", "}}", "x", "{x}", "{y}", "{x_1}", "{1}", " ", "é"]),
                      max_size=20),
       variables=st.dictionaries(st.sampled_from(["x", "y", "x_1"]), st.one_of(st.text(max_size=5), st.integers())))
def test_compiled_templates_render_and_measure_like_the_regex(parts, variables):
    from batcher.manifest import compile_template, render
    template = "".join(parts)
    expected = _reference_render(template, variables)
    assert render(template, variables) == expected
    compiled = compile_template(template)
    assert compiled.render(variables) == expected[0]
    assert compiled.length(variables) == len(expected[0])
    assert compiled.missing(variables) == list(dict.fromkeys(expected[1]))


# --- check counts rows without building jobs: the same keys and figures as job by job, and the
# plain statement of a key --------------------------------------------------------------------

_texts = st.sampled_from(["a", "b", "é", '"q"', "x\\y", "{", "", "1", "\t", "{{"])
_rows = manifest_rows(_texts, vary={"aspectRatio": st.lists(st.sampled_from(["16:9", "1:1"]), min_size=1, max_size=2)},
                      extra={"duration": st.sampled_from([4, 8.0])})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(_rows, min_size=1, max_size=4),
       defaults=st.fixed_dictionaries({}, optional={"seed": st.just("auto"), "resolution": st.just("1080p")}))
def test_counting_rows_gives_the_keys_and_figures_of_building_jobs(tmp_path, rows, defaults):
    from batcher.plan import iter_jobs, row_key_texts
    doc = {"version": 1, "defaults": defaults, "reference_sets": {"hero": ["https://x.com/a.png"]},
           "rows": valid_rows(rows)}
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    m = load_manifest(path)
    summary = check(m)
    jobs = list(iter_jobs(m))
    all_keys = [j.key for j in _jobs_with_duplicates(m)]
    assert summary.jobs == len(jobs) and summary.duplicates == len(all_keys) - len(jobs)
    # exact: each estimate rounded up to the hundredth, as the ledger holds it, then summed
    assert summary.credits * 100 == sum(estimate_hundredths(j.estimate) for j in jobs)
    assert summary.seconds_of_video == sum(j.params["duration"] for j in jobs)
    assert summary.by_resolution == {r: sum(j.params["resolution"] == r for j in jobs)
                                     for r in dict.fromkeys(j.params["resolution"] for j in jobs)}
    assert [(r.jobs, r.label) for r in summary.rows] == [
        (n, label) for label, n in _count_by_label(jobs)]
    for fast, slow in zip(row_key_texts(m), _keys_per_row(m, len(rows)), strict=True):
        assert fast is None or fast == slow
    _assert_the_plain_statement(m, doc, jobs)


def _assert_the_plain_statement(m, doc, jobs):
    """Every job's key and derived seed, built or counted, and its stored parameters, staged
    from compiled rows or built, are the plain statement of them (`test_job_keys`, imported with
    this module: importing it inside a running @given test applies its @given there, a nested
    @given, which Hypothesis refuses)."""
    from batcher.plan import job_rows

    for job in _jobs_with_duplicates(m):
        assert job.key == spec_job_key(job.model, job.params, job.take)
        if doc["rows"][job.row].get("seed", doc.get("defaults", {}).get("seed")) == "auto":
            assert job.params["seed"] == spec_job_seed(job.model, job.params, job.take)
    for row, job in zip(job_rows(m), jobs, strict=True):
        assert row.key == job.key and row.params == spec_stored(job.params)


def _jobs_with_duplicates(m):
    from batcher.manifest import Diagnostics
    from batcher.plan.jobs import _expand
    return list(_expand(m, Diagnostics(), None))


def _keys_per_row(m, n):
    jobs = _jobs_with_duplicates(m)
    return [[j.key for j in jobs if j.row == i] for i in range(n)]


def _count_by_label(jobs):
    counts: dict[str, int] = {}
    for j in jobs:
        counts[j.label] = counts.get(j.label, 0) + 1
    return list(counts.items())


_local_rows = st.fixed_dictionaries({
    "prompt": st.sampled_from(["p {v}", "p"]),
    "references": st.sampled_from(["refs", "refs/b.png", "refs/*.png", ["local", "https://x.com/b.png"],
                                   ["refs/a.png", "hero"], "local"]),
}, optional={
    "vary": st.fixed_dictionaries({}, optional={
        "v": st.lists(_texts, min_size=1, max_size=2),
        "references": st.lists(st.sampled_from(["refs/a.png", "refs", "hero"]), min_size=1, max_size=2),
    }),
    "seed": st.sampled_from([0, "auto"]),
    "repeat": st.integers(1, 2),
})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(_local_rows, min_size=1, max_size=3))
def test_counting_rows_with_local_references_gives_the_keys_of_building_jobs(tmp_path, rows):
    from batcher.plan import iter_jobs, row_key_texts
    from batcher.simulator import png_image
    (tmp_path / "refs").mkdir(exist_ok=True)
    for name, side in (("a.png", 400), ("b.png", 401)):
        (tmp_path / "refs" / name).write_bytes(png_image(side, side))
    for row in rows:
        vary = row.setdefault("vary", {})
        if "{v}" in row["prompt"]:
            vary.setdefault("v", ["z"])
        else:
            vary.pop("v", None)
        if not vary:
            del row["vary"]
    doc = {"version": 1, "rows": rows,
           "reference_sets": {"hero": ["https://x.com/a.png"], "local": ["refs/a.png", "https://x.com/c.png"]}}
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    m = load_manifest(path)
    summary = check(m)
    jobs = list(iter_jobs(m))
    all_keys = [j.key for j in _jobs_with_duplicates(m)]
    assert summary.jobs == len(jobs) and summary.duplicates == len(all_keys) - len(jobs)
    assert all(not ref.startswith("refs") for j in jobs for ref in j.params["references"])
    for fast, slow in zip(row_key_texts(m), _keys_per_row(m, len(rows)), strict=True):
        assert fast is None or fast == slow
    _assert_the_plain_statement(m, doc, jobs)
