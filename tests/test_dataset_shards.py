"""Exports that keep the dataset (variables, meta, references, video facts), splits, WebDataset
shards and the Parquet index (issue 26, items 2 to 4), loaded by `datasets` and `webdataset`."""
from __future__ import annotations

import json
import tarfile
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner

from batcher.cli import cli
from batcher.errors import UsageError
from batcher.ledger import Ledger, LocalImage
from batcher.manifest import load_manifest
from batcher.views import parse_splits, records
from batcher.views.record import reference_entries, split_of
from batcher.views.shards import INDEX, parse_size

ROWS = "character,action\na fox,runs\na cat,sleeps\n"
MANIFEST = """
version: 1
batch: ds
defaults:
  duration: 5
  meta: {source: studio, licence: cc-by}
reference_sets:
  hero: [https://example.com/hero.png]
rows:
  - from: rows.csv
    prompt: "{character} {action} in {place}"
    vary: {place: [rain, snow]}
    references: hero
    meta: {licence: internal}
  - prompt: "a plain shot"
    references: hero
"""


@pytest.fixture
def dataset(simrun, write):
    write("rows.csv", ROWS)
    report, _, ledger_path = simrun(write("m.yaml", MANIFEST))
    assert report.counts["completed"] == 5
    return ledger_path


def _export(ledger_path, *args):
    result = CliRunner().invoke(cli, ["export", "--ledger", str(ledger_path), *args])
    assert result.exit_code == 0, result.output
    return result


def test_records_carry_variables_meta_references_and_video_facts(dataset):
    with Ledger(dataset) as ledger:
        found = {r["prompt"]: r for r in records(ledger, "ds")}
    fox = found["a fox runs in snow"]
    assert fox["vars"] == {"character": "a fox", "action": "runs", "place": "snow"}
    assert fox["meta"] == {"source": "studio", "licence": "internal"}  # the row's name wins over the defaults'
    assert found["a plain shot"]["vars"] == {} and found["a plain shot"]["meta"]["licence"] == "cc-by"
    assert fox["references"] == [{"name": "https://example.com/hero.png", "sha256": None}]
    assert fox["video_info"]["seconds"] > 0 and fox["video_info"]["width"] > 0 and fox["video_info"]["height"] > 0
    assert fox["remote_job_id"] and fox["credit_cost"] is not None and fox["model"] and fox["finished_at"]


def test_csv_jsonl_and_videofolder_share_the_record(dataset, tmp_path):
    lines = _export(dataset, "--format", "jsonl").output.splitlines()
    jsonl = {r["id"]: r for r in map(json.loads, [line for line in lines if line.startswith("{")])}
    _export(dataset, "--format", "csv", "-o", str(tmp_path / "r.csv"))
    import csv
    with open(tmp_path / "r.csv", encoding="utf-8") as f:
        rows = {r["id"]: r for r in csv.DictReader(f)}
    _export(dataset, "--format", "videofolder", "-o", str(tmp_path / "vf"))
    folder = [json.loads(line) for line in (tmp_path / "vf" / "metadata.jsonl").read_text().splitlines()]
    assert len(jsonl) == len(rows) == len(folder) == 5
    for row in folder:
        assert row["vars"] == jsonl[row["id"]]["vars"] and row["meta"] == jsonl[row["id"]]["meta"]
        assert json.loads(rows[row["id"]]["vars"]) == row["vars"]
        assert rows[row["id"]]["references"] == "https://example.com/hero.png"


def test_local_references_by_relative_path_and_hash(tmp_path):
    image = LocalImage("local:sha256:" + "ab" * 32, str(tmp_path / "refs" / "hero.png"), 3,
                       f"{tmp_path / 'm.yaml'}:7", 0.0)
    entries = reference_entries([image.address, "https://x.test/a.png", "local:sha256:" + "cd" * 32],
                                {image.address: image})
    assert entries == [{"name": "refs/hero.png", "sha256": "ab" * 32},
                       {"name": "https://x.test/a.png", "sha256": None}, {"name": None, "sha256": "cd" * 32}]


def test_meta_must_be_a_mapping_with_its_line(write):
    path = write("bad.yaml", "version: 1\nbatch: b\ndefaults:\n  meta: [1, 2]\nrows:\n  - prompt: p\n    meta: text\n")
    problems = [str(p) for p in load_manifest(path).problems]
    assert any(":4: meta must be a mapping" in p for p in problems), problems
    assert any(":7: meta must be a mapping" in p for p in problems), problems


def test_splits_are_stable_exact_and_refuse_bad_specs():
    splits = parse_splits("train=0.9,validation=0.1")
    assert splits == (("train", Decimal("0.9")), ("validation", Decimal("0.1")))
    keys = [f"{i:020x}" for i in range(2000)]
    first = [split_of(k, splits) for k in keys]
    assert first == [split_of(k, parse_splits("train=0.9,validation=0.1")) for k in keys]
    assert 1600 < first.count("train") < 1990
    for bad in ("train=0.9,validation=0.2", "train", "train=x", "=1", "a=0.5,a=0.5", "a=-0.5,b=1.5"):
        with pytest.raises(UsageError):
            parse_splits(bad)
    result = CliRunner().invoke(cli, ["export", "--ledger", "nowhere.db", "--split", "a=0.3"])
    assert result.exit_code == 2 and "sum to 0.3" in result.output


def test_every_format_honours_the_split(dataset, tmp_path):
    spec = "train=0.6,validation=0.4"
    with Ledger(dataset) as ledger:
        want = {j.key: split_of(j.key, parse_splits(spec)) for j in ledger.iter_batch("ds")}
    lines = _export(dataset, "--split", spec).output.splitlines()
    assert {r["id"]: r["split"] for r in map(json.loads, [x for x in lines if x.startswith("{")])} == want
    _export(dataset, "--format", "videofolder", "-o", str(tmp_path / "vf"), "--split", spec)
    for split in set(want.values()):
        rows = [json.loads(x) for x in (tmp_path / "vf" / split / "metadata.jsonl").read_text().splitlines()]
        assert {r["id"] for r in rows} == {k for k, s in want.items() if s == split}
    _export(dataset, "--format", "webdataset", "-o", str(tmp_path / "wds"), "--split", spec)
    index = json.loads((tmp_path / "wds" / INDEX).read_text())["shards"]
    for name, keys in index.items():
        assert all(want[k] == name.rsplit("-", 1)[0] for k in keys)


def test_webdataset_shards_are_resumable_and_load_in_both_libraries(dataset, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    webdataset = pytest.importorskip("webdataset")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    out = tmp_path / "wds"
    _export(dataset, "--format", "webdataset", "-o", str(out), "--shard-size", "30KB")
    shards = sorted(out.glob("*.tar"))
    assert len(shards) >= 2
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in shards}
    again = _export(dataset, "--format", "webdataset", "-o", str(out), "--shard-size", "30KB")
    assert "0 clip(s) in 0 new shard(s) (5 already" in again.output
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.glob("*.tar")} == before
    with tarfile.open(shards[0]) as tar:
        names = tar.getnames()
    assert names[0].endswith(".mp4") and names[1].endswith(".json") and names[0][:-4] == names[1][:-5]
    with Ledger(dataset) as ledger:
        jobs = {j.key: j for j in ledger.iter_batch("ds")}
    ds = datasets.load_dataset("webdataset", data_files={"train": [str(p) for p in shards]}, split="train",
                               cache_dir=str(tmp_path / "hf-cache"))
    ds = ds.cast_column("mp4", datasets.Video(decode=False))  # decoding needs torchcodec (see test_dataset)
    assert ds.num_rows == 5 and set(ds["__key__"]) == set(jobs)
    row = ds[0]
    assert row["json"]["vars"] == json.loads(jobs[row["__key__"]].row_data)["vars"]
    samples = list(webdataset.WebDataset([str(p) for p in shards], shardshuffle=False))
    assert len(samples) == 5
    for sample in samples:
        assert json.loads(sample["json"])["sha256"] == jobs[sample["__key__"]].sha256
        assert len(sample["mp4"]) == jobs[sample["__key__"]].size


def test_a_rerun_adds_new_clips_in_new_shards_only(simrun, write, tmp_path):
    write("rows.csv", ROWS)
    manifest = write("m.yaml", MANIFEST)
    simrun(manifest)
    out = tmp_path / "wds"
    _export(tmp_path / "ledger.db", "--format", "webdataset", "-o", str(out))
    first = {p.name: p.read_bytes() for p in out.glob("*.tar")}
    write("rows.csv", ROWS + "a dog,jumps\n")
    simrun(manifest)
    _export(tmp_path / "ledger.db", "--format", "webdataset", "-o", str(out))
    now = {p.name: p.read_bytes() for p in out.glob("*.tar")}
    assert {k: now[k] for k in first} == first and len(now) == len(first) + 1
    index = json.loads((out / INDEX).read_text())["shards"]
    assert sum(len(k) for k in index.values()) == 7


def test_parquet_index_of_the_records(dataset, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    _export(dataset, "--format", "parquet", "-o", str(tmp_path / "r.parquet"), "--split", "a=0.5,b=0.5")
    table = pq.read_table(tmp_path / "r.parquet").to_pylist()
    assert len(table) == 5 and {r["split"] for r in table} <= {"a", "b"}
    assert all(json.loads(r["meta"])["source"] == "studio" for r in table)
    result = CliRunner().invoke(cli, ["export", "--ledger", str(dataset), "--format", "parquet"])
    assert result.exit_code == 2 and "needs -o/--output FILE" in result.output


def test_shard_sizes():
    assert parse_size("1GB") == 10 ** 9 and parse_size("64MiB") == 64 * 2 ** 20 and parse_size("500") == 500
    with pytest.raises(UsageError):
        parse_size("lots")


def test_staged_rows_carry_the_dataset_columns_as_built_one_by_one(write):
    from batcher.plan import check, iter_jobs, job_rows, row_of
    write("rows.csv", ROWS + '"é ""q""",{{x}}\n')
    path = write("m.yaml", MANIFEST.replace("vary: {place: [rain, snow]}", 'vary: {place: [rain, 1, "1", "a\\\\b"]}'))
    m = load_manifest(path)
    summary = check(m, keep=True)
    built = [row_of(job) for job in iter_jobs(m)]
    assert list(job_rows(m)) == built == list(job_rows(m, compiled=summary.compiled))
    data = [json.loads(r.data) for r in built]
    assert {d["vars"]["character"] for d in data if d["vars"]} == {"a fox", "a cat", 'é "q"'}
    assert [d["vars"]["place"] for d in data if d["vars"].get("character") == "a fox"] == ["rain", 1, "a\\b"]
    assert all(d["meta"]["source"] == "studio" for d in data)


def test_parquet_without_pyarrow_is_one_line(dataset, tmp_path, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    result = CliRunner().invoke(cli, ["export", "--ledger", str(dataset), "--format", "parquet", "-o",
                                      str(tmp_path / "r.parquet")])
    assert result.exit_code != 0 and "pip install 'batcher[parquet]'" in result.output
    assert not (tmp_path / "r.parquet").exists()


def test_a_poster_beside_the_clip_goes_in_the_shard(dataset, tmp_path):
    with Ledger(dataset) as ledger:
        job = next(j for j in ledger.iter_batch("ds") if j.state == "completed")
    poster = Path(job.file_path).with_suffix(".jpg")
    poster.write_bytes(b"\xff\xd8\xff\xe0 a poster")
    _export(dataset, "--format", "webdataset", "-o", str(tmp_path / "wds"))
    members = {}
    for shard in (tmp_path / "wds").glob("*.tar"):
        with tarfile.open(shard) as tar:
            members.update({m.name: tar.extractfile(m).read() for m in tar.getmembers()})
    assert members[f"{job.key}.jpg"] == b"\xff\xd8\xff\xe0 a poster"
    assert sum(name.endswith(".jpg") for name in members) == 1 and len(members) == 11
