"""Every PixelDojo video model from its live schema: a batch mixing happyhorse-1.0, happyhorse-1.1
and a model batcher has never seen runs end to end against the simulator served over HTTP, each
body valid against its own live schema; an error for the unseen model is FILE:LINE before
anything is spent; descriptions are cached in the ledger; prices come from where they are known."""
from __future__ import annotations

import json
from pathlib import Path

import anyio
import httpx
import pytest
from click.testing import CliRunner

from batcher import api
from batcher.cli import cli
from batcher.client import ModelCatalog, PixelDojoClient
from batcher.errors import ManifestError, UsageError
from batcher.ledger import Ledger
from batcher.manifest import load_manifest
from batcher.models import HAPPYHORSE_11_R2V, check_against, described, price_of, unpriced
from batcher.plan import check, expand
from batcher.run import RunOptions
from batcher.simulator import SimConfig, Simulator

from .conftest import run_against, serving

KEY = "sim-key-live-models"
MIXED = """\
version: 1
batch: compare
defaults:
  duration: 5
  aspect_ratio: "16:9"
rows:
  - prompt: "A knight rides through snow"
    references: [https://example.com/knight.png]
    seeds: [1, 2]
  - prompt: "A knight rides through snow"
    model: happyhorse-1.1-r2v
    references: [https://example.com/knight.png]
    seeds: [1, 2]
  - prompt: "A knight rides through snow"
    model: wan-2.5-t2v
    guidanceScale: 6.5
    camera_motion: pan-left
    style_tags: [snow, epic]
    seeds: [1, 2]
"""


@pytest.fixture
def served():
    sim = Simulator(SimConfig(api_key=KEY, render_seconds=0.02))
    with serving(sim) as base:
        yield sim, base


def run(path: Path, tmp_path: Path, base: str, **options):
    return run_against(path, tmp_path, base, KEY, **options)


def test_a_batch_of_three_models_runs_end_to_end_each_body_valid_against_its_own_live_schema(tmp_path, served):
    sim, base = served
    path = tmp_path / "mix.yaml"
    path.write_text(MIXED)
    report = run(path, tmp_path, base)
    assert report.counts["completed"] == 6, report.messages
    record = sim.record()
    assert record["runs_by_model"] == {"happyhorse-1.0-r2v": 2, "happyhorse-1.1-r2v": 2, "wan-2.5-t2v": 2}
    schemas = {m: httpx.get(f"{base}/api/v1/models/{m}/schema", headers={"authorization": f"Bearer {KEY}"}).json()
               for m in record["runs_by_model"]}
    for job in record["jobs"]:
        assert check_against(schemas[job["model"]], job["body"]) == [], job
    wan = [j["body"] for j in record["jobs"] if j["model"] == "wan-2.5-t2v"]
    assert all(b["guidanceScale"] == 6.5 and b["cameraMotion"] == "pan-left" and b["styleTags"] == ["snow", "epic"]
               and "reference_urls" not in b and "references" not in b for b in wan)
    # charged each model's own price: 1.0 4/s, 1.1 5/s, wan 3/s at 720p, 5 s, two jobs each
    assert record["charged"] == pytest.approx(2 * 5 * (4 + 5 + 3))
    with Ledger(tmp_path / "l.db") as led:
        jobs = list(led.iter_batch("compare"))
        assert sorted(j.model for j in jobs) == sorted(["happyhorse-1.0-r2v"] * 2 + ["happyhorse-1.1-r2v"] * 2
                                                       + ["wan-2.5-t2v"] * 2)
        cached = led.model_infos()
    assert set(cached) == {"wan-2.5-t2v", "happyhorse-1.1-r2v"}  # the one without a table, the one guessing its price
    assert json.loads(cached["wan-2.5-t2v"].request_schema)["properties"]["guidanceScale"]["multipleOf"] == 0.5


def test_the_same_prompt_and_seed_with_two_models_are_two_jobs(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(MIXED.split("  - prompt: \"A knight rides through snow\"\n    model: wan")[0])
    jobs = expand(load_manifest(path))
    assert len(jobs) == len({j.key for j in jobs}) == 4
    assert [j.model for j in jobs] == ["happyhorse-1.0-r2v"] * 2 + ["happyhorse-1.1-r2v"] * 2
    assert [j.params for j in jobs[:2]] == [j.params for j in jobs[2:]]


def test_a_manifest_error_for_the_unseen_model_is_file_line_before_anything_is_spent(tmp_path, served):
    sim, base = served
    path = tmp_path / "bad.yaml"
    path.write_text(MIXED.replace("guidanceScale: 6.5", "guidanceScale: 2.3\n    motion: pan")
                    + "  - prompt: x\n    model: nope-9000\n")
    with pytest.raises(ManifestError) as caught:
        run(path, tmp_path, base)
    lines = [str(d) for d in caught.value.diagnostics]
    assert f"{path}:16: guidance_scale: 2.3 is not a multiple of 0.5" in lines
    assert any(line.startswith(f"{path}:17: unknown row field 'motion'") for line in lines)
    assert any(line.startswith(f"{path}:22: model 'nope-9000': the API does not know it") for line in lines)
    assert sim.record()["run_bodies"] == 0 and sim.record()["charged"] == 0


def test_descriptions_are_cached_with_their_time_and_asked_again_after_a_day(tmp_path, served):
    sim, base = served
    now = [1_000_000.0]

    async def describe(**kw):
        with Ledger(tmp_path / "l.db") as led:
            async with PixelDojoClient(KEY, base) as client:
                return await ModelCatalog(led, client, clock=lambda: now[0]).describe(["wan-2.5-t2v"], **kw)
    first = anyio.run(describe)
    assert first.fetched == ["wan-2.5-t2v"] and "fetched" in first.specs["wan-2.5-t2v"].source
    asked = sim.record()["requests"].get("model", 0)
    now[0] += 3600
    assert anyio.run(describe).fetched == [] and sim.record()["requests"].get("model", 0) == asked  # cached
    now[0] += 24 * 3600
    assert anyio.run(describe).fetched == ["wan-2.5-t2v"]  # a day old: asked again
    assert anyio.run(lambda: describe(refresh=True)).fetched == ["wan-2.5-t2v"]
    with Ledger(tmp_path / "l.db") as led:
        assert led.model_infos()["wan-2.5-t2v"].fetched_at == now[0]


def test_plan_and_validate_use_the_cache_and_send_nothing(tmp_path, served):
    sim, base = served
    path = tmp_path / "mix.yaml"
    path.write_text(MIXED)
    before = CliRunner().invoke(cli, ["plan", str(path), "--ledger", str(tmp_path / "l.db")])
    assert before.exit_code == 2
    assert f"{path}:15: model 'wan-2.5-t2v': not described yet: `batcher models wan-2.5-t2v` fetches" in before.output
    shown = CliRunner().invoke(cli, ["models", "wan-2.5-t2v", "--ledger", str(tmp_path / "l.db"), "--api-base", base],
                               env={"PIXELDOJO_API_KEY": KEY})
    assert shown.exit_code == 0, shown.output
    assert "guidance_scale [guidanceScale]: number, optional, default 5; 1 to 10; a multiple of 0.5" in shown.output
    requests = dict(sim.record()["requests"])
    after = CliRunner().invoke(cli, ["plan", str(path), "--ledger", str(tmp_path / "l.db"), "--json"])
    assert after.exit_code == 0, after.output
    data = json.loads(after.output)
    assert data["by_model"] == {"happyhorse-1.0-r2v": 2, "happyhorse-1.1-r2v": 2, "wan-2.5-t2v": 2}
    assert data["jobs"] == 6 and data["credits"] == pytest.approx(2 * 5 * (4 + 4 + 3))  # 1.1 still a guess: 4/s
    assert dict(sim.record()["requests"]) == requests  # plan sent nothing


def test_the_models_command_lists_what_the_api_offers(served):
    _sim, base = served
    listed = CliRunner().invoke(cli, ["models", "--api-base", base], env={"PIXELDOJO_API_KEY": KEY})
    assert listed.exit_code == 0, listed.output
    lines = listed.output.splitlines()
    assert any(line.startswith("happyhorse-1.0-r2v") and line.endswith("(built in)") for line in lines)
    assert any(line.startswith("wan-2.5-t2v") and "3 credits per second" in line for line in lines)
    data = json.loads(CliRunner().invoke(cli, ["models", "--api-base", base, "--json"],
                                         env={"PIXELDOJO_API_KEY": KEY}).output)
    assert {m["apiId"] for m in data} == {"happyhorse-1.0-r2v", "happyhorse-1.1-r2v", "wan-2.5-t2v"}


# --- prices ---------------------------------------------------------------------------------------

WAN_SCHEMA = {"type": "object", "properties": {"prompt": {"type": "string"}, "duration": {"type": "integer",
              "enum": [5, 10], "default": 5}, "resolution": {"type": "string", "enum": ["480p", "720p"],
              "default": "720p"}}, "required": ["prompt"], "additionalProperties": False}


@pytest.mark.parametrize("cost, per_second, per_job", [
    ({"default": 15, "type": "per_second", "amount": 3}, {"*": 3.0}, None),
    ({"default": 40, "type": "fixed", "amount": 40}, {}, 40.0),
    ({"default": 40}, {}, 40.0),
    ({"amount": -3, "type": "per_second"}, {}, None),
    ({"amount": float("nan"), "type": "per_second"}, {}, None),
    ({"amount": "3", "type": "per_second"}, {}, None),
    ({"amount": True, "type": "per_second"}, {}, None),
    ("free", {}, None),
])
def test_a_listed_price_is_believed_only_when_it_is_one(cost, per_second, per_job):
    assert price_of({"creditCost": cost}) == (per_second, per_job)


def test_prices_come_from_where_they_are_known_and_guesses_are_marked():
    wan = described("wan-x", WAN_SCHEMA, {"creditCost": {"type": "per_second", "amount": 3}}, "now")
    assert wan.estimate({"duration": 10, "resolution": "720p"}) == 30
    assert not wan.is_guess({"resolution": "720p"}) and wan.is_guess({"resolution": "480p"})
    fixed = described("img-x", {"type": "object", "properties": {"prompt": {"type": "string"}}},
                      {"creditCost": {"type": "fixed", "amount": 40}}, "now")
    assert fixed.estimate({}) == 40 and not fixed.is_guess({})
    unknown = described("nopr-x", WAN_SCHEMA, {}, "now")
    assert not unknown.price_known and unknown.estimate({"duration": 5}) == 0 and unknown.is_guess({})
    assert unpriced([unknown, wan], {}) == ["nopr-x"]
    assert unpriced([unknown], {"nopr-x": 2.0}) == [] and unpriced([unknown], {"nopr-x:720p": 2.0}) == ["nopr-x"]
    assert unpriced([unknown], {"nopr-x:720p": 2.0, "480p": 1.0}) == []  # every resolution has a rate
    assert unknown.estimate({"duration": 5}, {"nopr-x": 2.0}) == 10
    live = described("happyhorse-1.1-r2v", {}, {"creditCost": {"type": "per_second", "amount": 5}}, "now")
    assert live.rate({"resolution": "720p"}) == 5 and not live.is_guess({"resolution": "720p"})
    assert live.rate({"resolution": "1080p"}) == 10 and live.is_guess({"resolution": "1080p"})  # kept its ratio
    assert HAPPYHORSE_11_R2V.is_guess({"resolution": "720p"})  # until the API lists a price


def test_a_budgeted_run_refuses_a_model_without_a_price_until_rate(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("version: 1\nmodel: nopr-x\nrows:\n  - prompt: a\n")
    unknown = described("nopr-x", WAN_SCHEMA, {}, "now")
    m = load_manifest(path, models={"nopr-x": unknown})
    check(m)
    with pytest.raises(UsageError, match=r"nopr-x has no known price .* --rate nopr-x=CREDITS_PER_SECOND"):
        api.refuse_unpriced(m, {})
    api.refuse_unpriced(m, {"nopr-x": 3.0})


def test_names_map_by_rule_and_either_spelling_is_accepted(tmp_path):
    wan = described("wan-x", {"type": "object", "additionalProperties": False, "properties": {
        "prompt": {"type": "string"}, "negativePrompt": {"type": "string"}, "imageURLs": {
            "type": "array", "items": {"type": "string", "format": "uri"}, "maxItems": 2}}}, {}, "now")
    assert [(p.name, p.wire) for p in wan.params] == [("prompt", "prompt"), ("negative_prompt", "negativePrompt"),
                                                      ("references", "imageURLs")]
    one = tmp_path / "a.yaml"
    one.write_text("version: 1\nmodel: wan-x\nrows:\n  - prompt: a\n    negativePrompt: b\n"
                   "    references: [https://example.com/1.png]\n")
    two = tmp_path / "b.yaml"
    two.write_text("version: 1\nmodel: wan-x\nrows:\n  - prompt: a\n    negative_prompt: b\n"
                   "    image_urls: [https://example.com/1.png]\n")
    keys = [[j.key for j in expand(load_manifest(p, models={"wan-x": wan}))] for p in (one, two)]
    assert keys[0] == keys[1] and len(keys[0]) == 1
    three = tmp_path / "c.yaml"
    three.write_text("version: 1\nmodel: wan-x\nrows:\n  - prompt: a\n    references: [https://example.com/1.png, "
                     "https://example.com/2.png, https://example.com/3.png]\n")
    with pytest.raises(ManifestError) as caught:
        check(load_manifest(three, models={"wan-x": wan}))
    assert [str(d) for d in caught.value.diagnostics] == [f"{three}:5: references takes at most 2 URLs, got 3"]


# --- what a hostile review found -------------------------------------------------------------------

def test_keys_do_not_move_when_the_api_adds_an_optional_parameter_with_a_default(tmp_path):
    before = described("wan-x", WAN_SCHEMA, {}, "then")
    later = {**WAN_SCHEMA, "properties": {**WAN_SCHEMA["properties"],
                                           "enhancePrompt": {"type": "boolean", "default": True}}}
    after = described("wan-x", later, {}, "now")
    path = tmp_path / "m.yaml"
    path.write_text("version: 1\nmodel: wan-x\nrows:\n  - prompt: a\n  - prompt: b\n")
    keys = [[j.key for j in expand(load_manifest(path, models={"wan-x": spec}))] for spec in (before, after)]
    assert keys[0] == keys[1]
    assert "duration" not in expand(load_manifest(path, models={"wan-x": after}))[0].params  # the API fills it in


def test_a_manifest_whose_only_rows_name_an_undescribed_model_runs(tmp_path, served):
    sim, base = served
    path = tmp_path / "only.yaml"
    path.write_text("version: 1\nrows:\n  - prompt: a castle at dawn\n    model: wan-2.5-t2v\n    seeds: [1, 2]\n")
    report = run(path, tmp_path, base)
    assert report.counts["completed"] == 2 and sim.record()["runs_by_model"] == {"wan-2.5-t2v": 2}


@pytest.mark.parametrize("schema, info", [
    ({**WAN_SCHEMA, "properties": {**WAN_SCHEMA["properties"], "duration": {"type": "string", "enum": ["5", "10"]}}},
     {"creditCost": {"type": "per_second", "amount": 3}}),
    ({**WAN_SCHEMA, "properties": {**WAN_SCHEMA["properties"], "resolution": {"type": "object",
                                                                            "default": {"width": 1280}}}},
     {"creditCost": {"type": "per_second", "amount": 3}}),
    (WAN_SCHEMA, {"creditCost": {"type": "per_second", "amount": 10 ** 400}}),
    (WAN_SCHEMA, {"creditCost": {"type": "per_second", "amount": 1e308}}),
])
def test_descriptions_that_lie_about_their_shape_plan_without_a_traceback(tmp_path, schema, info):
    spec = described("odd-x", schema, info, "now")
    path = tmp_path / "m.yaml"
    path.write_text("version: 1\nmodel: odd-x\nrows:\n  - prompt: a\n")
    summary = check(load_manifest(path, models={"odd-x": spec}))
    assert summary.jobs == 1 and summary.credits >= 0


def test_a_cached_description_that_cannot_be_used_is_a_line_not_a_traceback(tmp_path):
    from batcher.ledger import ModelInfo
    with Ledger(tmp_path / "l.db") as led:
        led.write(led.remember_model_info(ModelInfo("wan-2.5-t2v", "{}", "{not json", 1.0)))
    path = tmp_path / "m.yaml"
    path.write_text("version: 1\nmodel: wan-2.5-t2v\nrows:\n  - prompt: a\n")
    result = CliRunner().invoke(cli, ["plan", str(path), "--ledger", str(tmp_path / "l.db")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "its description cannot be used (JSONDecodeError); `batcher models wan-2.5-t2v --refresh`" in result.output


def test_parameters_named_like_a_rows_own_words_are_written_api_name():
    schema = {"type": "object", "properties": {"prompt": {"type": "string"}, "repeat": {"type": "integer"},
                                               "seeds": {"type": "array"}, "model": {"type": "string"},
                                               "references": {"type": "string"}}}
    names = {p.name: p.wire for p in described("odd-x", schema, {}, "now").params}
    assert names == {"prompt": "prompt", "api_repeat": "repeat", "api_seeds": "seeds", "api_model": "model",
                     "api_references": "references"}


def test_seeds_for_a_model_without_a_seed_are_refused_not_merged(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("version: 1\nmodel: wan-x\nrows:\n  - prompt: a\n    seeds: [1, 2]\n")
    with pytest.raises(ManifestError) as caught:
        check(load_manifest(path, models={"wan-x": described("wan-x", WAN_SCHEMA, {}, "now")}))
    assert [str(d) for d in caught.value.diagnostics] == [f"{path}:5: seeds: wan-x takes no seed"]


def test_a_templated_prompt_is_held_to_a_live_pattern_by_check_as_by_the_run(tmp_path):
    schema = {**WAN_SCHEMA, "properties": {**WAN_SCHEMA["properties"],
                                           "prompt": {"type": "string", "maxLength": 10}}}
    path = tmp_path / "m.yaml"
    path.write_text("version: 1\nmodel: wan-x\nrows:\n  - prompt: 'a {thing} at dawn'\n"
                    "    vary:\n      thing: [cat, very long castle]\n")
    with pytest.raises(ManifestError) as caught:
        check(load_manifest(path, models={"wan-x": described("wan-x", schema, {}, "now")}))
    assert any("prompt:" in str(d) and "the most is 10" in str(d) for d in caught.value.diagnostics)


def test_a_model_column_in_a_rows_file_is_refused_not_ignored(tmp_path):
    (tmp_path / "rows.csv").write_text("prompt,model\nA dog,nonexistent-model\n")
    path = tmp_path / "m.yaml"
    path.write_text("version: 1\nrows:\n  - from: rows.csv\n    references: [https://example.com/a.png]\n")
    with pytest.raises(ManifestError) as caught:
        check(load_manifest(path))
    assert any("a model column is not read in rows from a file" in str(d) for d in caught.value.diagnostics)


def test_exports_carry_every_parameter_of_a_live_model(tmp_path, served):
    _sim, base = served
    path = tmp_path / "mix.yaml"
    path.write_text(MIXED)
    run(path, tmp_path, base)
    records = [r for r in api.export_records(tmp_path / "l.db", "compare") if r["model"] == "wan-2.5-t2v"]
    assert len(records) == 2
    assert all(r["parameters"]["guidance_scale"] == 6.5 and r["parameters"]["camera_motion"] == "pan-left"
               for r in records)


def test_a_price_far_below_the_real_one_costs_one_job_past_the_budget_not_one_per_kind(tmp_path):
    from batcher.simulator import SimConfig, Simulator
    sim = Simulator(SimConfig(render_seconds=0.02, rates={"720p": 40.0, "1080p": 72.0}))  # 10x the estimate
    path = tmp_path / "m.yaml"
    path.write_text("version: 1\nrows:\n  - prompt: a\n    references: [https://example.com/a.png]\n"
                    "    vary:\n      duration: [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]\n")
    opts = RunOptions.of(out_dir=tmp_path / "out", expected_render=0.02, budget=300, concurrency=16)
    report = anyio.run(lambda: api.run_async(path, ledger=tmp_path / "l.db", options=opts,
                                             to=api.target(simulate=sim)))
    charged = [j["cost"] for j in sim.record()["jobs"]]
    # Before: the first job of each of the 13 durations went at once (13 jobs, 3,600 credits).
    assert sum(charged) <= 300 + max(charged), charged
    assert report.stop_reason is not None and report.stop_reason.value == "budget"


def test_the_model_list_never_prints_an_apis_control_characters_or_absurd_prices():
    from batcher.views import model_list_lines
    lines = model_list_lines([{"apiId": "x\x1b]0;PWNED\x07", "type": "video\x1b[31m",
                               "creditCost": {"amount": 10 ** 400, "type": "per_second"}}])
    assert not any(ch in "".join(lines) for ch in "\x1b\x07") and "price not listed" in lines[0]


@pytest.mark.parametrize("api_id", ["..", ".", "a/b", "%2F"])
def test_the_models_command_refuses_ids_that_are_paths(api_id):
    result = CliRunner().invoke(cli, ["models", api_id, "--simulate"])
    assert result.exit_code == 2 and "is not a model id" in result.output
