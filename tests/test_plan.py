"""Expansion features and job-key stability."""
from __future__ import annotations

from decimal import Decimal

from batcher.manifest import load_manifest
from batcher.models import HAPPYHORSE_R2V
from batcher.plan import check, expand, iter_jobs, job_key

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
    # references: union in order, duplicates removed; the mare's folder as its images' content addresses
    import hashlib
    mare = ["local:sha256:" + hashlib.sha256((MANIFESTS / "characters/mare" / name).read_bytes()).hexdigest()
            for name in ("mare-front.png", "mare-side.png")]
    assert by_row[1][0].params["references"] == [*mare, "https://example.com/saddle.webp"]
    assert by_row[2][0].params["references"] == [
        "https://example.com/knight-front.png", "https://example.com/knight-side.png", *mare]
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
    edited = [*ROWS[:1], "  - {prompt: two, references: https://x.com/2.png, repeat: 2, duration: 6}\n", *ROWS[2:]]
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
    assert base.credits - cheaper.credits == Decimal("6.4")  # (8 - 7.2) x 8 s, exactly
    assert base.credits_are_guess and not cheaper.credits_are_guess


# --- keys pinned: computed by the code before expansion was made faster ------------------------
# (The demo's pins were computed again when its mare set became a local folder: its keys follow the
# images' content. The every-feature and dataset pins are the originals.)
# A manifest using every expansion feature: defaults, wire-name aliases, sets and nested reference
# lists, vary over parameters and variables, seeds, repeat, seed: auto, a float duration, braces,
# non-ASCII text, duplicates across rows, and rows from CSV and JSONL files. ("True" in quotes: a
# boolean no longer fills a {variable}; the text renders as the boolean did, so the keys stand.)
EVERY_FEATURE_YAML = 'version: 1\nbatch: every-feature\ndefaults:\n  duration: 5.0\n  resolution: 720p\n  aspectRatio: "16:9"\n  negative_prompt: "blurry, watermark"\nreference_sets:\n  knight: [https://example.com/knight-front.png, https://example.com/knight-side.png]\n  mare: https://example.com/mare.jpg\nrows:\n  - prompt: "The knight rides — {weather}, {{literal}} ✓ {n}"\n    references: [knight, [mare, "https://example.com/knight-front.png"]]\n    vary:\n      weather: [snow, "rain", 3, 2.5, "True"]\n      n: [0, -1]\n      mood: [grey]\n      duration: [3, 15]\n    negative_prompt: "no {mood} tones"\n    seeds: [0, 2147483647]\n    repeat: 2\n  - name: "Close up / 1080p!"\n    prompt: "Close-up of the knight in {mood}"\n    reference_urls: [https://example.com/mare.jpg, mare]\n    resolution: 1080p\n    duration: 8\n    seed: 42\n    vary:\n      mood: [dusk, dawn]\n      aspectRatio: ["9:16", "1:1", "4:3", "3:4"]\n  - prompt: "Close-up of the knight in {mood}"\n    references: [mare]\n    resolution: 1080p\n    duration: 8\n    seed: 42\n    vary: {mood: [dusk]}\n    aspect_ratio: "9:16"\n  - prompt: "The mare alone"\n    references: mare\n    negative_prompt: ""\n    seed: auto\n    repeat: 3\n  - prompt: "The mare alone"\n    references: mare\n    negative_prompt: ""\n    seed: auto\n  - prompt: "Seeds and auto {mood}"\n    references: knight\n    vary: {mood: [calm], seed: [7, auto]}\n  - from: rows.csv\n    prompt: "A {animal} in a {place}"\n    references: knight\n    seed: auto\n  - from: rows.jsonl\n    references: mare\n    repeat: 2\n'
EVERY_FEATURE_CSV = 'animal,place,references,aspect_ratio,duration\nfox,snowy forest,,16:9,4\nowl,barn,knight|mare,1:1,\n"fox, red","a ""field""",mare https://example.com/x.png,9:16,12\n'
EVERY_FEATURE_JSONL = '{"prompt": "JSON {thing}", "thing": "caf\\u00e9", "duration": 7, "seed": 9}\n{"prompt": "JSON {thing}", "thing": 12, "references": ["knight"], "resolution": "1080p", "seeds": [1, 2]}\n{"prompt": "plain", "seed": "auto", "aspectRatio": "3:4"}\n'

EVERY_KEYS = ["bce062e8f4681c644080", "be6b565ab7579d0df258", "2107a3935f24f2da7ac4", "e009b594675f161f7958", "4d1e466767e4ffd3dadd", "cd42b224e6db7c787d9f", "531961355bd51cb4c15e", "b0fb57d5af201ac42be7", "5261408c26b668f4e844", "71f3a0aff008b346532d", "5368e94fe6a824d183b9", "868c7fcf181066005bf5", "bffd60d9de2602184aec", "0a3de552cc92c55922b0", "2cfd123078d13f4e8445", "59ed99ce37b2ae2caa30", "ae631b98b61e6e58c9f0", "ed7fa3ef87683b4a4d2d", "c79554d869f00a9950ed", "43f59e53da7937524cba", "c858322200c6a3b3f8c4", "4be4ab2b039d9c0042e5", "eda707fdb6cea27237db", "fc36cca1162f0672f4d2", "b2dd2be8f9edc997119b", "b84b4b6c88123d486cd3", "e3f8ecc8759a133f2481", "0490159be172aaa16ce3", "95a251f2c4d961f75893", "c5a67d92347e3a3f1680", "32a19387f4480426f1af", "04164b6f981ac7c12914", "855ec77c05e61fecb6e4", "fdcecfd125d18a355cbf", "cae3efa9b5b38bab37dc", "e45b50cd9ffc7192f0d4", "62e23b343339e2cebdfb", "a75964d4a7643af2ab58", "36d936114c9279920dd9", "af9ea97f29dca8132bde", "1edaf400be2ef76a739b", "161696ded0cc9b2075a0", "5ea2f60f460e8640f0f4", "67c30d46c2e584bcf84c", "fc42f0239b71db306e39", "950e4c3a0fd5f55fe5ba", "9277c4cd8d7aecea9b54", "8b17949fbe4866b7b50b", "e1babdabc627a1aaff20", "7dbeaa941c7b241674f1", "ad354febfbd85b43da30", "46dd1f371efa63c5263e", "64d23dd3dd2e64799a35", "aa2b224a64ab5f0b025d", "b592edb878216659c95e", "8b2fbe8dc58466ba1cf3", "e5fa5ac2da9e5caa7d18", "4a9145996750ba7de5e9", "5b09b6cac74d546e5bba", "c057d62e36e8363fdf87", "de2581386d2040effc8e", "46bbd09259954a7616c1", "316ac0e459cd5038b60f", "e25d9dcfd286e46ef6e7", "63618c137413ad123bd2", "c9290e8392f4e75b94b1", "d94ec8e9765dda8d1bce", "0b49b0f97cef89004c78", "8aeb80afd6562435e849", "cc3d9d86d5d065d9bd2f", "e48bb4c1fe28866499a1", "732d99044aff38c23787", "151112d09947d82de68c", "3e0b001ebcef68ce3835", "406462c96773d9e31acf", "19c4764d3ab8be006222", "0c129a1576abcd039781", "366bb4a7beb03e79bc4c", "9419321a5563e38e2540", "bcf80d933b25e3bb172d", "5430e558bcb1ee55fb78", "92ec43e2370a91e1d91e", "816a8d8f92d9e7f1c6a1", "a82c1bb7426f62a231bb", "ac809857a90adf5ff00d", "4ae902edb74ccc75dc27", "d527238063a568d64186", "2daf2a719d9ab437a19a", "af0d0565b97d941ea793", "203a7e7a1dc096d5820c", "613bf9effbd1f9eb6812", "241990d64c522fbb857f", "874866f3d4cc926b2951", "785a92a3eddbed12b98a", "a90fc58627b3cbbb3c34", "6fcfa3816b9386a929a5", "b3dac214241e738757e4", "6f438291d4c7aaeae91d", "5e07a756c2b0ca22e26c", "542997d7bbbe97179ec4", "c1d53d8c070ad35aa893", "a2d5dcaf75eac75ea439", "36ebdc41f5cff27cb7a3", "2de26884b71b6269e559"]
EVERY_JOBS_SHA256 = '24e8fbce95f847a8a5c0eaf251ddd9f1cd9a4f6d3ae478561b3c17ead030f733'
EVERY_SUMMARY = {'batch': 'every-feature', 'model': 'happyhorse-1.0-r2v', 'jobs': 104, 'credits': 3832.0, 'credits_are_estimate': True, 'credits_include_guessed_rates': True, 'duplicates_merged': 2, 'seconds_of_video': 874, 'by_resolution': {'720p': 92, '1080p': 12}, 'rows': [['every.yaml:12', 'row0001', 80, 2880.0], ['every.yaml:22', 'Close-up-1080p', 8, 512.0], ['every.yaml:38', 'row0004', 3, 60.0], ['every.yaml:47', 'row0006', 2, 40.0], ['rows.csv:2', 'row0007', 1, 16.0], ['rows.csv:3', 'row0008', 1, 20.0], ['rows.csv:4', 'row0009', 1, 48.0], ['rows.jsonl:1', 'row0010', 2, 56.0], ['rows.jsonl:2', 'row0011', 4, 160.0], ['rows.jsonl:3', 'row0012', 2, 40.0]]}

DEMO_KEYS = ["d3c61ad09bffb842e846", "afaa20f575eb5e610efd", "6d978806bcef1fd5d87a", "f19845f03254bdd30d27", "b9c17ab9665e16c69923", "a27deab1ebcb6eeb3043", "aec36967ce215ce4999a", "d85b512729203dc17fb3", "f6370700f4b3d863b973", "e0ad1cc3865a6c3c683d", "5811cfc55207d63b358f", "4c52662c3484fdcd406b"]
DEMO_JOBS_SHA256 = '1b732ee4ea9cf06eea156c3081fb6b4caa3490e8060fa3e1c5e5458ed7484549'
DEMO_SUMMARY = {'batch': 'knight-and-mare', 'model': 'happyhorse-1.0-r2v', 'jobs': 12, 'credits': 284.0, 'credits_are_estimate': True, 'credits_include_guessed_rates': True, 'duplicates_merged': 0, 'seconds_of_video': 63, 'by_resolution': {'720p': 11, '1080p': 1}, 'rows': [['demo.yaml:14', 'row0001', 3, 60.0], ['demo.yaml:17', 'row0002', 8, 160.0], ['demo.yaml:23', 'closeup', 1, 64.0]], 'local_images': {'count': 2, 'bytes': 1841}}

DATASET_KEYS = ["f6f302de4b9a4c5f5362", "a508b7f9fd6178f38877", "8b7f1530da406301d066", "3af326e7ff4573a8ccfa", "99e245a038e3e7008837"]
DATASET_JOBS_SHA256 = '218d6bb30267b0dc9bc9ffccafeec4db5424058d252714f498952e98128718e0'
DATASET_SUMMARY = {'batch': 'animal-dataset', 'model': 'happyhorse-1.0-r2v', 'jobs': 5, 'credits': 80.0, 'credits_are_estimate': True, 'credits_include_guessed_rates': False, 'duplicates_merged': 0, 'seconds_of_video': 20, 'by_resolution': {'720p': 5}, 'rows': [['prompts.csv:2', 'row0001', 1, 16.0], ['prompts.csv:3', 'row0002', 1, 16.0], ['prompts.csv:4', 'row0003', 1, 16.0], ['prompts.csv:5', 'row0004', 1, 16.0], ['prompts.csv:6', 'row0005', 1, 16.0]]}



def _pinned(path):
    import hashlib
    import json
    m = load_manifest(path)
    jobs = expand(m)
    rows = [[j.key, j.row, j.take, j.label, j.params, j.estimate, j.estimate_is_guess] for j in jobs]
    digest = hashlib.sha256(json.dumps(rows, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    summary = check(m).to_json()
    summary["rows"] = [[r["origin"].rsplit("/", 1)[-1], r["label"], r["jobs"], r["credits"]] for r in summary["rows"]]
    return [j.key for j in jobs], digest, summary, [j.key for j in iter_jobs(m)]


def test_keys_and_parameters_of_every_feature_are_pinned(tmp_path):
    (tmp_path / "rows.csv").write_text(EVERY_FEATURE_CSV, encoding="utf-8")
    (tmp_path / "rows.jsonl").write_text(EVERY_FEATURE_JSONL, encoding="utf-8")
    path = tmp_path / "every.yaml"
    path.write_text(EVERY_FEATURE_YAML, encoding="utf-8")
    assert _pinned(path) == (EVERY_KEYS, EVERY_JOBS_SHA256, EVERY_SUMMARY, EVERY_KEYS)


def test_keys_and_parameters_of_the_demo_manifests_are_pinned():
    assert _pinned(MANIFESTS / "demo.yaml") == (DEMO_KEYS, DEMO_JOBS_SHA256, DEMO_SUMMARY, DEMO_KEYS)
    assert _pinned(MANIFESTS / "dataset.yaml") == (DATASET_KEYS, DATASET_JOBS_SHA256, DATASET_SUMMARY, DATASET_KEYS)
