"""Staging: a manifest's jobs filled into ledger rows from each row's compiled text, held equal to
the jobs built one by one; the run's survey of them against the live schema."""
from __future__ import annotations

import json

import anyio
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batcher import api
from batcher.errors import SchemaMismatch
from batcher.ledger import Ledger
from batcher.manifest import load_manifest
from batcher.models import check_against
from batcher.plan import check, expand, iter_jobs, job_rows, row_of
from batcher.plan.keys import row_data, row_data_format, row_data_value
from batcher.run import RunOptions
from batcher.run.startup import _plainly_fits, _value_key
from batcher.simulator import SimConfig, Simulator

from .conftest import MANIFESTS, manifest_rows, small_manifest, valid_rows

_texts = st.sampled_from(["a", "é", '"q"', "x\\y", "{", "", "1", "\t", "{{", "\u2713 ok", "line\nbreak"])
_rows = manifest_rows(_texts, vary={
    "negative_prompt": st.lists(_texts, min_size=1, max_size=2),  # a row built job by job
    # A varied list: stored as json.dumps spells it (", "), hashed compact (",").
    "references": st.lists(st.sampled_from([["https://x.com/a.png", "https://x.com/\u00e9.png"],
                                             ["https://x.com/c.png"]]), min_size=1, max_size=2),
}, extra={"aspect_ratio": st.sampled_from(["1:1", "9:16"])})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(_rows, min_size=1, max_size=4),
       defaults=st.fixed_dictionaries({}, optional={"seed": st.just("auto"), "resolution": st.just("1080p")}))
def test_staged_rows_are_the_jobs_built_one_by_one(tmp_path, rows, defaults):
    doc = {"version": 1, "defaults": defaults, "reference_sets": {"hero": ["https://x.com/a.png"]},
           "rows": valid_rows(rows)}
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    m = load_manifest(path)
    summary = check(m, keep=True)
    built = [row_of(job) for job in iter_jobs(m)]
    assert list(job_rows(m)) == built
    assert list(job_rows(m, compiled=summary.compiled)) == built  # check's keys, not hashed again
    assert summary.jobs == len(built) == len({r.key for r in built})


_values = _texts | st.integers(-3, 3) | st.floats(-2, 2, allow_nan=False)
_cells = _values.filter(lambda v: v != "")  # (an empty cell fills no variable)
_meta = st.dictionaries(st.sampled_from(["source", "licence", "é", "{x}", "n"]), _values | st.dates()
                        | st.lists(_texts, max_size=2) | st.dictionaries(_texts, _texts, max_size=1), max_size=3)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=st.lists(st.tuples(_cells, _cells), min_size=1, max_size=3), with_b=st.booleans(),
       vary=st.fixed_dictionaries({}, optional={"c": st.lists(_values, min_size=1, max_size=3),
                                                "d": st.lists(_texts, min_size=1, max_size=2),
                                                "duration": st.lists(st.sampled_from([3, 5]), min_size=1, max_size=2)}),
       meta=st.tuples(_meta, _meta), plain=_meta, repeat=st.integers(1, 2), seed=st.sampled_from([7, "auto"]))
def test_staged_rows_carry_the_variables_and_meta_of_the_jobs_built_one_by_one(tmp_path, records, with_b, vary, meta,
                                                                                 plain, repeat, seed):
    lines = [json.dumps({"a": a, "b": b} if with_b else {"a": a}) + "\n" for a, b in records]
    (tmp_path / "rows.jsonl").write_text("".join(lines), encoding="utf-8")
    names = ["a", *(["b"] if with_b else []), *(n for n in ("c", "d") if n in vary)]
    prompt = "shot " + " ".join(f"{{{n}}}" for n in names)
    doc = {"version": 1, "defaults": {"meta": meta[0]}, "reference_sets": {"hero": ["https://x.com/a.png"]},
           "rows": [{"from": "rows.jsonl", "prompt": prompt, "references": "hero", "meta": meta[1],
                     "repeat": repeat, "seed": seed, **({"vary": vary} if vary else {})},
                    {"prompt": "plain", "references": ["hero"], "meta": plain}]}
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    m = load_manifest(path)
    summary = check(m, keep=True)
    built = [row_of(job) for job in iter_jobs(m)]
    assert list(job_rows(m, compiled=summary.compiled)) == built
    assert all(json.loads(r.data)["meta"] == json.loads(row_data({}, {**meta[0], **meta[1]}))["meta"]
               for r in built[:-1])


def test_a_rows_data_format_filled_is_its_row_data():
    variables, meta = {"x": 1, "{y}": "é \"q\"", "c": 2}, {"when": "{{now}}", "n": [1, "a"]}
    text = row_data_format(variables, ["c", "new"], meta)
    for c, new in ((3, "a{b}"), (-2, 1.5), ("\u2713", None), (True, ["l", 2])):
        assert text.format(row_data_value(c), row_data_value(new)) == row_data({**variables, "c": c, "new": new},
                                                                                meta)
    assert row_data_format({}, [], None).format() == row_data({}, None) == '{"vars": {}, "meta": {}}'
    assert [row_data_value(v) for v in (7, True, 2.5, "a\"b")] == ["7", "true", "2.5", '"a\\"b"']


def test_the_shipped_manifests_stage_as_built_one_by_one():
    for name in ("demo.yaml", "dataset.yaml"):
        m = load_manifest(MANIFESTS / name)
        check(m)
        assert list(job_rows(m)) == [row_of(job) for job in iter_jobs(m)]


_COLUMNS = "key, seq, generation, row, take, origin, label, params, estimate, state, attempts, model"


def _stored(ledger: Ledger, batch: str) -> list[tuple]:
    with ledger.engine.connect() as conn:
        return [tuple(r) for r in conn.exec_driver_sql(f"SELECT {_COLUMNS} FROM job WHERE batch = '{batch}' "
                                                       f"ORDER BY seq")]


def test_staging_writes_what_adding_built_jobs_writes(ledger_url, tmp_path, write):
    manifest = write("m.yaml", """
        version: 1
        batch: same
        reference_sets:
          hero: [https://x.com/a.png]
        rows:
          - prompt: 'été {n} "quoted"'
            references: hero
            seed: auto
            repeat: 2
            vary:
              n: [1, 2, 2.5]
              resolution: [720p, 1080p]
          - prompt: 'plain'
            references: [https://x.com/b.png, hero]
            vary:
              references: [[https://x.com/c.png], [https://x.com/d.png, hero]]
          - from: topics.csv
            prompt: '{topic} at {hour}'
            references: hero
            vary:
              hour: [dawn, dusk]
    """)
    write("topics.csv", 'topic,aspect_ratio\nsea,1:1\n"été ""hot""",9:16\n')
    m = load_manifest(manifest)
    with Ledger(ledger_url) as ledger:
        assert api.stage(ledger, m) == (18, 0, 0)
        staged = _stored(ledger, "same")
        ledger.write(ledger.add_jobs("built", m.model.api_id, str(m.path), expand(m)))
        built = _stored(ledger, "built")
        assert staged == built and len(staged) == 18
        assert json.loads(staged[0][7])["prompt"] == 'été 1 "quoted"'
        assert json.loads(staged[-1][7])["prompt"] == 'été "hot" at dusk'
        assert api.stage(ledger, m) == (0, 18, 0)  # a second staging: a new generation, no new job
        assert [r[2] for r in _stored(ledger, "same")] == [2] * 18


def test_a_staging_writes_with_a_roomy_page_cache_and_gives_the_connection_back_as_it_was(write, tmp_path):
    from sqlalchemy import event

    from batcher.ledger.dialect import BULK_CACHE_KIB
    m = load_manifest(write("m.yaml", small_manifest(12)))
    said: list[str] = []
    with Ledger(tmp_path / "l.db") as ledger:
        ledger.engine.dispose()  # every connection from here on traced by SQLite itself
        event.listen(ledger.engine, "connect", lambda dbapi, _: dbapi.set_trace_callback(said.append))
        assert api.stage(ledger, m).added == 12
        with ledger.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA cache_size").scalar_one() == -2000  # SQLite's default
    insert = next(i for i, sql in enumerate(said) if sql.startswith("INSERT INTO job"))
    roomy = said.index(f"PRAGMA cache_size=-{BULK_CACHE_KIB}")
    assert roomy < insert < said.index("PRAGMA cache_size=-2000"), said


def _narrowed(**rules):
    """A simulator whose live schema changes some parameters' rules."""
    class Narrow(Simulator):
        def handle(self, method, url, headers, body):
            answer = super().handle(method, url, headers, body)
            if url.endswith("/schema"):
                schema = json.loads(answer.body)
                for name, rule in rules.items():
                    schema["properties"][name] = rule
                answer.body = json.dumps(schema).encode()
            return answer
    return Narrow(SimConfig())


@pytest.mark.parametrize("rule", [
    {"type": "string", "maxLength": 14},  # checked by length alone
    {"type": "string", "pattern": "^[a-z ]{0,14}$"},  # the full check
])
def test_the_first_prompt_the_live_schema_refuses_is_named_before_spending(tmp_path, write, rule):
    rows = "".join(f"  - prompt: '{text}'\n    references: hero\n"
                   for text in ("short one", "short two", "far too long a prompt", "also much too long"))
    manifest = write("m.yaml", f"version: 1\nbatch: s\nreference_sets:\n  hero: [https://example.com/h.png]\n"
                               f"rows:\n{rows}")
    sim = _narrowed(prompt=rule)
    with pytest.raises(SchemaMismatch, match=r"m\.yaml:10: .*prompt"):
        anyio.run(lambda: api.run_async(manifest, ledger=tmp_path / "l.db", to=api.target(simulate=sim),
                                        options=RunOptions.of(out_dir=tmp_path / "o")))
    assert sim.record()["charged"] == 0


def test_a_batch_the_live_schema_accepts_is_surveyed_and_run(simrun, write):
    manifest = write("m.yaml", small_manifest(n_rows=5, repeat=2))
    report, sim, _ = simrun(manifest, simulator=_narrowed(prompt={"type": "string", "minLength": 1,
                                                                  "maxLength": 20}))
    assert report.counts["completed"] == 10 and len(sim.record()["jobs"]) == 10


@pytest.mark.parametrize("rule", [
    {"type": "string", "minLength": 1, "maxLength": 5}, {"type": ["string", "null"], "maxLength": 3},
    {"maxLength": 4, "description": "text"}, {"type": "string"}, {"type": "integer"},
    {"type": "string", "minLength": 9},
    {"type": "string", "maxLength": 3.0}, {"type": "string", "maxLength": True}, {"type": "string", "enum": ["abc"]},
    {"type": "string", "format": "uri"}, {"type": "string", "maxLength": -1}, {"type": "String"}, {},
])
def test_text_plainly_fitting_a_rule_is_text_the_full_check_accepts(rule):
    for value in ("", "abc", "abcdef", "\u00e9\u00e9\u00e9", 3, None, ["abc"], True):
        if _plainly_fits(rule, value):
            assert check_against({"type": "object", "properties": {"p": rule}}, {"p": value}) == []


def test_values_the_api_tells_apart_are_checked_apart():
    keys = [_value_key(v) for v in (1, 1.0, True, "1", None, [1], [True], ["1"], {"a": 1})]
    assert len(set(keys)) == len(keys)
    assert _value_key(["a", "b"]) == _value_key(["a", "b"]) != _value_key(["b", "a"])


def test_staging_pauses_the_collector_while_it_makes_the_rows_and_only_then(tmp_path, write, monkeypatch):
    import gc

    import batcher.launch
    m = load_manifest(write("m.yaml", small_manifest(n_rows=3)))
    seen = []

    def rows(*args, **kwargs):
        seen.append(gc.isenabled())
        yield from job_rows(*args, **kwargs)
    monkeypatch.setattr(batcher.launch, "job_rows", rows)
    with Ledger(tmp_path / "l.db") as ledger:
        assert api.stage(ledger, m) == (3, 0, 0) and seen == [False] and gc.isenabled()
        monkeypatch.setattr(ledger, "write", lambda op: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            api.stage(ledger, m)
        assert gc.isenabled()
