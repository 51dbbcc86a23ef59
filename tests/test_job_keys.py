"""Job keys and stored parameters: the one implementation (`plan.keys`) held to a plain statement of
them, and to keys that ledgers in the field hold (computed by the code before it was one module)."""
from __future__ import annotations

import hashlib
import itertools
import json
import textwrap

from hypothesis import given, settings
from hypothesis import strategies as st

from batcher.manifest import load_manifest
from batcher.models import HAPPYHORSE_R2V, get_model
from batcher.plan import check, iter_jobs, job_key, job_rows
from batcher.plan.keys import (
    Slot,
    Spliced,
    auto_seed,
    canonical_request,
    compile_row,
    key_text,
    row_keys,
    stored_params,
)

from .conftest import MANIFESTS


def spec_request(api_id: str, wire: dict) -> str:
    return json.dumps({"model": api_id, "params": wire}, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def spec_key(api_id: str, wire: dict, take: int) -> str:
    """A job's key, as ledgers hold it: SHA-256 of the canonical request and the take, 20 hex digits."""
    return hashlib.sha256(f"{spec_request(api_id, wire)}#take={take}".encode()).hexdigest()[:20]


def spec_seed(api_id: str, wire_without_seed: dict, take: int) -> int:
    """`seed: auto`: SHA-256 of the request without its seed and the take, its first 32 bits mod 2**31."""
    digest = hashlib.sha256(f"{spec_request(api_id, wire_without_seed)}#seed-for-take={take}".encode()).hexdigest()
    return int(digest[:8], 16) % 2**31


def spec_stored(params: dict) -> str:
    """A job's parameters as the ledger stores them."""
    return json.dumps(params, ensure_ascii=False)


def spec_job_key(api_id: str, params: dict, take: int) -> str:
    """The key of a job of model `api_id` with these parameters (manifest names)."""
    model = get_model(api_id)
    assert model is not None
    return spec_key(api_id, model.to_wire(params), take)


def spec_job_seed(api_id: str, params: dict, take: int) -> int:
    """The seed `seed: auto` derives for a job of model `api_id` with these parameters."""
    model = get_model(api_id)
    assert model is not None
    return spec_seed(api_id, model.to_wire({k: v for k, v in params.items() if k != "seed"}), take)


_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                       | st.text(max_size=6), lambda inner: st.lists(inner, max_size=3)
                       | st.dictionaries(st.text(max_size=3), inner, max_size=3), max_leaves=8)


@settings(max_examples=200, deadline=None)
@given(wire=st.dictionaries(st.text(max_size=5), _values, max_size=4), take=st.integers(1, 100))
def test_a_job_key_auto_seed_and_stored_parameters_are_the_plain_statement(wire, take):
    api = HAPPYHORSE_R2V.api_id
    assert canonical_request(api, wire) == spec_request(api, wire)
    assert job_key(HAPPYHORSE_R2V, wire, take) == spec_key(api, wire, take)
    assert auto_seed(HAPPYHORSE_R2V, wire, take) == spec_seed(api, wire, take)
    assert stored_params(wire) == spec_stored(wire)


# Text that JSON escapes, braces str.format would read, and the marker characters compiling uses.
_texts = st.lists(st.sampled_from(['"', "\\", "{", "}", "{{", "\n", "é", "\ue000", "\ue001", "\ue000w0\ue000",
                                   "\ue000s1\ue000", "\ue001s0\ue001", "a"]), max_size=4).map("".join)


@settings(max_examples=300, deadline=None)
@given(fixed=st.dictionaries(st.sampled_from(["a", "b{", "\ue000"]), st.one_of(_texts, st.integers(),
                                                                                  st.lists(_texts, max_size=2))),
       slotted=st.lists(st.lists(st.one_of(_texts, st.integers(-2, 2), st.lists(_texts, max_size=2)),
                                 min_size=1, max_size=3), max_size=2),
       template=st.lists(_texts | st.integers(0, 1), max_size=4),
       spliced_values=st.lists(st.lists(_texts, min_size=1, max_size=2), min_size=2, max_size=2),
       seed=st.booleans(), repeat=st.integers(1, 2))
def test_a_compiled_row_fills_in_the_texts_of_its_jobs(fixed, slotted, template, spliced_values, seed, repeat):
    """Each job of a compiled row: its request's text and its stored parameters' text are those of
    the plain statement, and so is its key; whatever the literal text holds."""
    api = HAPPYHORSE_R2V.api_id
    n = len(slotted)
    axes_values = [*slotted, *spliced_values]  # axes n and n+1 fill the template
    template_parts = tuple(part + n if isinstance(part, int) else part for part in template)
    shape = {**fixed, **{f"slot{i}": Slot(i) for i in range(n)}, "t": Spliced(template_parts)}
    canonical_axes = [[json.dumps(v, ensure_ascii=False, separators=(",", ":")) for v in values]
                      for values in slotted] + [[json.dumps(v, ensure_ascii=False)[1:-1] for v in values]
                                                for values in spliced_values]
    stored_axes = [[json.dumps(v, ensure_ascii=False) for v in values] for values in slotted] + canonical_axes[n:]
    row = compile_row(api, shape, shape, canonical_axes, stored_axes, repeat, "seedwire" if seed else None)
    keys = [key_text(key) for key, _ in row_keys(row)]
    expected_keys = []
    for combo in itertools.product(*[range(len(values)) for values in axes_values]):
        concrete = {**fixed, **{f"slot{i}": slotted[i][combo[i]] for i in range(n)}}
        concrete["t"] = "".join(p if isinstance(p, str) else axes_values[p][combo[p]] for p in template_parts)
        filled = [canonical_axes[i][c] for i, c in enumerate(combo)]
        filled_stored = [stored_axes[i][c] for i, c in enumerate(combo)]
        for take in range(1, repeat + 1):
            wire, stored, seeds = concrete, concrete, []
            if seed:
                seeds = [spec_seed(api, concrete, take)]
                wire, stored = {**concrete, "seedwire": seeds[0]}, {**concrete, "seed": seeds[0]}
            assert row.text.format(*filled, *seeds) == spec_request(api, wire)
            assert row.stored.format(*filled_stored, *seeds) == spec_stored(stored)
            expected_keys.append(spec_key(api, wire, take))
    assert keys == expected_keys


# --- keys ledgers hold: computed by the code before the key had one implementation ---------------

GOLDEN_MANIFEST = """
    version: 1
    batch: golden
    reference_sets:
      hero: [https://example.com/hero.png, "https://example.com/\\u00e9t\\u00e9.png"]
    rows:
      - prompt: 'été {place} "quoted" \\ {{literal}}'
        references: hero
        seed: auto
        repeat: 2
        vary:
          place: [beach, "x\\\\y", "{", 2.5, "\\u2713 ok"]
          resolution: [720p, 1080p]
      - prompt: plain
        references: [hero, https://x.com/b.png]
        seed: 7
        vary:
          negative_prompt: ["n \\"1\\"", "line\\nbreak"]
      - prompt: lists
        references: https://x.com/c.png
        duration: 5.0
        vary:
          references: [[https://x.com/a.png, "https://x.com/\\u00e9.png"], [https://x.com/c.png]]
      - prompt: 'auto seed, job by job {v}'
        references: hero
        seed: auto
        vary:
          v: [a, b]
          negative_prompt: [x, y]
"""
GOLDEN_KEYS = [
    "7d605b88d870c7a39d5d", "3fc3e13cac18883bd985", "ba34bb96d42314749547", "902d90997c50e77ef534",
    "4195c293a2e7f0fa700b", "7f79c97ca741a9d55f05", "495204fba45fb1a74ab8", "197eb0a2ac0024f2a412",
    "eb6e22c4c5b71df410b7", "fc1ed66cff43c2e0d911", "10750b6fcf54e55577b8", "a838dc2196757dca570b",
    "a6e0584d814c8c850db5", "1d718dcf66ae55228c7c", "90aae1f458880ce03736", "364bcfed209305edd4df",
    "d7497917fc6e58781f3c", "ce105fb4c050eadf8aee", "350d82c91598733846b8", "1310ac82bc262d592274",
    "d5c8a203e9ba0e2fc390", "e0efe2b0aab398e736f3", "29921ce44a38fb57fea4", "8d197aba4f1b66e758d9",
    "66c6fd36c3748fdd463c", "dd4d94acbed3de01d113", "568aff6ecee221440b65", "7a826126b839531111d3",
]
GOLDEN_PARAMS = {  # a few jobs' stored parameters, by key
    "7d605b88d870c7a39d5d": '{"prompt": "été beach \\"quoted\\" \\\\ {literal}", "references": '
                            '["https://example.com/hero.png", "https://example.com/été.png"], "duration": 5, '
                            '"resolution": "720p", "aspect_ratio": "16:9", "seed": 471304622}',
    "e0efe2b0aab398e736f3": '{"prompt": "plain", "references": ["https://example.com/hero.png", '
                            '"https://example.com/été.png", "https://x.com/b.png"], "duration": 5, "resolution": '
                            '"720p", "aspect_ratio": "16:9", "negative_prompt": "line\\nbreak", "seed": 7}',
    "29921ce44a38fb57fea4": '{"prompt": "lists", "references": ["https://x.com/a.png", "https://x.com/é.png"], '
                            '"duration": 5, "resolution": "720p", "aspect_ratio": "16:9"}',
    "7a826126b839531111d3": '{"prompt": "auto seed, job by job b", "references": ["https://example.com/hero.png", '
                            '"https://example.com/été.png"], "duration": 5, "resolution": "720p", '
                            '"aspect_ratio": "16:9", "negative_prompt": "y", "seed": 2056760845}',
}
# The shipped manifests' (key, stored parameters) lines, hashed: (jobs, SHA-256).
GOLDEN_SHIPPED = {"demo.yaml": (12, "535a1c06915bbb7a95f2583154c24b0240cef30a094e9eca2ae0f29b7e2e0007"),
                  "dataset.yaml": (5, "cf656a897e7903e5c4bdaf25a4b67a0a97d8ec0ff7ff4fc43ca944cdacf50d9b")}


def _staged(path):
    m = load_manifest(path)
    summary = check(m, keep=True)
    return list(job_rows(m, compiled=summary.compiled)), list(iter_jobs(m))


def test_the_keys_and_parameters_ledgers_hold_stay_the_same(tmp_path):
    path = tmp_path / "golden.yaml"
    path.write_text(textwrap.dedent(GOLDEN_MANIFEST).lstrip("\n"), encoding="utf-8")
    staged, built = _staged(path)
    assert [r.key for r in staged] == [j.key for j in built] == GOLDEN_KEYS
    stored = {r.key: r.params for r in staged}
    for key, params in GOLDEN_PARAMS.items():
        assert stored[key] == params
    for name, (jobs, digest) in GOLDEN_SHIPPED.items():
        staged, built = _staged(MANIFESTS / name)
        assert [r.key for r in staged] == [j.key for j in built]
        lines = "\n".join(f"{r.key} {r.params}" for r in staged)
        assert (len(staged), hashlib.sha256(lines.encode()).hexdigest()) == (jobs, digest)


def test_the_golden_jobs_are_the_plain_statement(tmp_path):
    path = tmp_path / "golden.yaml"
    path.write_text(textwrap.dedent(GOLDEN_MANIFEST).lstrip("\n"), encoding="utf-8")
    staged, built = _staged(path)
    for row, job in zip(staged, built, strict=True):
        assert row.key == job.key == spec_job_key(job.model, job.params, job.take)
        assert row.params == spec_stored(job.params)
