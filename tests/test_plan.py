"""Expansion features and job-key stability."""
from __future__ import annotations

from batcher.manifest import load_manifest
from batcher.models import HAPPYHORSE_R2V
from batcher.plan import check, expand, job_key

from .conftest import MANIFESTS


def test_demo_expansion():
    jobs = expand(load_manifest(MANIFESTS / "demo.yaml"))
    by_row = [[j for j in jobs if j.row == r] for r in range(3)]
    assert [len(r) for r in by_row] == [3, 8, 1]
    assert [j.params["seed"] for j in by_row[0]] == [11, 12, 13]
    # vary: cartesian product of aspect ratios x places, two takes each
    combos = {(j.params["aspect_ratio"], j.params["prompt"], j.take) for j in by_row[1]}
    assert len(combos) == 8
    assert ("9:16", "The mare trots across a beach", 2) in combos
    # references: union in order, duplicates removed
    assert by_row[1][0].params["references"] == ["https://example.com/mare.jpg", "https://example.com/saddle.webp"]
    assert by_row[2][0].params["references"] == [
        "https://example.com/knight-front.png", "https://example.com/knight-side.png", "https://example.com/mare.jpg"]
    closeup = by_row[2][0]
    assert closeup.params["resolution"] == "1080p" and closeup.params["duration"] == 8
    assert closeup.estimate == 64 and closeup.estimate_is_guess
    assert by_row[0][0].estimate == 20 and not by_row[0][0].estimate_is_guess
    # defaults reach every row; seed is absent unless given
    assert all(j.params["negative_prompt"] == "blurry, watermark" for j in jobs)
    assert all("seed" not in j.params for j in by_row[1])


def test_csv_rows_use_entry_defaults_and_template_columns():
    jobs = expand(load_manifest(MANIFESTS / "dataset.yaml"))
    assert jobs[0].params["prompt"] == "A fox in a snowy forest, documentary style"
    assert jobs[2].params["references"] == ["https://example.com/owl.png"]
    assert jobs[4].params["references"] == ["https://example.com/fox-1.png", "https://example.com/fox-2.png",
                                            "https://example.com/owl.png"]
    assert [j.params["aspect_ratio"] for j in jobs] == ["16:9", "9:16", "1:1", "16:9", "4:3"]
    assert jobs[1].origin.endswith("prompts.csv:3")


def test_seed_auto_is_derived_and_reproducible(write):
    body = """
        version: 1
        defaults: {seed: auto}
        rows:
          - prompt: a
            references: https://x.com/a.png
            repeat: 3
        """
    first = expand(load_manifest(write("a.yaml", body)))
    again = expand(load_manifest(write("b.yaml", body)))
    seeds = [j.params["seed"] for j in first]
    assert seeds == [j.params["seed"] for j in again]
    assert len(set(seeds)) == 3 and all(0 <= s <= 2**31 - 1 for s in seeds)


def test_keys_are_stable_and_in_order(write):
    path = MANIFESTS / "demo.yaml"
    a = [j.key for j in expand(load_manifest(path))]
    b = [j.key for j in expand(load_manifest(path))]
    assert a == b and len(set(a)) == len(a)


ROWS = [
    "  - {prompt: one, references: https://x.com/1.png}\n",
    "  - {prompt: two, references: https://x.com/2.png, repeat: 2}\n",
    "  - {prompt: three, references: https://x.com/3.png, seeds: [1, 2]}\n",
]


def keys_by_prompt(path):
    out: dict[str, set[str]] = {}
    for j in expand(load_manifest(path)):
        out.setdefault(j.params["prompt"], set()).add(j.key)
    return out


def test_editing_a_row_changes_only_its_keys(write):
    before = keys_by_prompt(write("a.yaml", "version: 1\nrows:\n" + "".join(ROWS)))
    edited = ROWS[:1] + ["  - {prompt: two, references: https://x.com/2.png, repeat: 2, duration: 6}\n"] + ROWS[2:]
    after = keys_by_prompt(write("b.yaml", "version: 1\nrows:\n" + "".join(edited)))
    assert after["one"] == before["one"] and after["three"] == before["three"]
    assert not (after["two"] & before["two"])


def test_reordering_rows_changes_no_key(write):
    before = keys_by_prompt(write("a.yaml", "version: 1\nrows:\n" + "".join(ROWS)))
    after = keys_by_prompt(write("b.yaml", "version: 1\nrows:\n" + "".join(reversed(ROWS))))
    assert before == after


def test_key_hashes_request_and_take():
    wire = {"prompt": "a", "reference_urls": ["https://x.com/a.png"]}
    assert job_key(HAPPYHORSE_R2V, wire, 1) != job_key(HAPPYHORSE_R2V, wire, 2)
    assert job_key(HAPPYHORSE_R2V, wire, 1) != job_key(HAPPYHORSE_R2V, {**wire, "seed": 1}, 1)
    assert job_key(HAPPYHORSE_R2V, wire, 1) == job_key(HAPPYHORSE_R2V, dict(reversed(wire.items())), 1)


def test_identical_requests_are_merged(write):
    path = write("m.yaml", "version: 1\nrows:\n" + ROWS[0] + ROWS[0])
    summary = check(load_manifest(path))
    assert summary.jobs == 1 and summary.duplicates == 1


def test_rate_override_changes_estimate_and_clears_guess():
    m = load_manifest(MANIFESTS / "demo.yaml")
    base = check(m)
    cheaper = check(m, {"1080p": 7.2})
    assert abs((base.credits - cheaper.credits) - (8 - 7.2) * 8) < 1e-9
    assert base.credits_are_guess and not cheaper.credits_are_guess
