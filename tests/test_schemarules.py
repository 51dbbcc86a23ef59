"""A live schema's rules: every keyword a model schema uses, every violation at once, names mapped by
rule, parameters described, and no schema from the network able to crash or stall a check."""
from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batcher.models import (
    MAX_DEPTH,
    ParameterFacts,
    Violation,
    check_against,
    describe_parameters,
    get_model,
    manifest_name,
    path_text,
    suggest,
    wire_name,
)


def lines(schema, value) -> list[str]:
    return [str(v) for v in check_against(schema, value)]


# --- each keyword: a value that passes, one that fails, and the message it fails with -------------

@pytest.mark.parametrize("schema, good, bad, message", [
    ({"type": "string"}, "a", 5, "must be text, got a number 5"),
    ({"type": "integer"}, 5, True, "must be a whole number, got true"),
    ({"type": "integer"}, -3, 5.0, "must be a whole number, got a decimal number 5.0"),
    ({"type": "integer"}, 10**30, "5", "must be a whole number, got text '5'"),
    ({"type": "number"}, 2.5, False, "must be a number, got false"),
    ({"type": "number"}, 7, float("nan"), "must be a number, got a decimal number nan"),
    ({"type": "boolean"}, False, 0, "must be true/false, got a number 0"),
    ({"type": "null"}, None, 0, "must be nothing, got a number 0"),
    ({"type": "array"}, [], {}, "must be a list, got a mapping {}"),
    ({"type": "object"}, {}, [], "must be a mapping, got a list []"),
    ({"type": ["integer", "null"]}, None, "x", "must be a whole number or nothing, got text 'x'"),
    ({"enum": ["720p", "1080p"]}, "1080p", "4k", "'4k' is not one of 720p, 1080p"),
    ({"enum": [1, 2]}, 1.0, True, "True is not one of 1, 2"),
    ({"enum": [[1, 2], {"a": 1}]}, {"a": 1}, [2, 1], "[2, 1] is not one of [1, 2], {'a': 1}"),
    ({"const": "x"}, "x", "y", "'y' is not x, the only value allowed"),
    ({"const": None}, None, 0, "0 is not None, the only value allowed"),
    ({"minimum": 3}, 3, 2, "2 is below the minimum 3"),
    ({"maximum": 15}, 15, 20, "20 is above the maximum 15"),
    ({"exclusiveMinimum": 0}, 0.5, 0, "0 must be above 0"),
    ({"exclusiveMaximum": 1.5}, 1, 1.5, "1.5 must be below 1.5"),
    ({"multipleOf": 5}, 15, 12, "12 is not a multiple of 5"),
    ({"multipleOf": 0.1}, 0.3, 0.35, "0.35 is not a multiple of 0.1"),
    ({"minLength": 2}, "ab", "a", "'a' is 1 characters long; the least is 2"),
    ({"minLength": 1}, "a", "", "must not be empty"),
    ({"maxLength": 3}, "abc", "abcd", "'abcd' is 4 characters long; the most is 3"),
    ({"pattern": "^[0-9]+:[0-9]+$"}, "16:9", "wide", "'wide' does not match the pattern '^[0-9]+:[0-9]+$'"),
    ({"pattern": "x"}, "axb", "ab", "'ab' does not match the pattern 'x'"),  # search, not match
    ({"format": "uri"}, "https://x.com/a.png", "ftp://x.com/a", "'ftp://x.com/a' is not an http or https URL"),
    ({"format": "uri"}, "http://x.com", "https:///path", "'https:///path' is not an http or https URL"),
    ({"format": "uri-reference"}, "http://x.com/a", "/a.png", "'/a.png' is not an http or https URL"),
    ({"items": {"type": "integer"}}, [1, 2], [1, "b"], "[1]: must be a whole number, got text 'b'"),
    ({"minItems": 1}, [1], [], "must not be empty"),
    ({"minItems": 2}, [1, 2], [1], "has 1 item(s); the least is 2"),
    ({"maxItems": 2}, [1, 2], [1, 2, 3], "has 3 item(s); the most is 2"),
    ({"uniqueItems": True}, [1, True, "1"], [1, 2, 1.0], "1.0 appears more than once"),
    ({"properties": {"a": {"type": "string"}}}, {"a": "x", "b": 1}, {"a": 1}, "a: must be text, got a number 1"),
    ({"required": ["prompt"]}, {"prompt": "p"}, {}, "prompt: required but not given"),
    ({"properties": {"seed": {}}, "additionalProperties": False}, {"seed": 1}, {"zzz": 1},
     "zzz: not accepted by this model (it takes seed)"),
    ({"additionalProperties": {"type": "integer"}}, {"a": 1}, {"a": "x"}, "a: must be a whole number, got text 'x'"),
    ({"anyOf": [{"type": "integer"}, {"type": "null"}]}, None, "x",
     "'x' fits none of the allowed forms (must be a whole number, got text 'x'; or must be nothing, got text 'x')"),
    ({"oneOf": [{"type": "integer"}, {"minimum": 10}]}, 5, 12, "12 fits 2 of the allowed forms; exactly one must"),
    ({"oneOf": [{"type": "integer"}, {"type": "string"}]}, "a", [],
     "[] fits none of the allowed forms (must be a whole number, got a list []; or must be text, got a list [])"),
    ({"allOf": [{"minimum": 1}, {"maximum": 3}]}, 2, 4, "4 is above the maximum 3"),
    ({"definitions": {"d": {"enum": ["a"]}}, "$ref": "#/definitions/d"}, "a", "b", "'b' is not one of a"),
    ({"$defs": {"d": {"type": "string"}}, "items": {"$ref": "#/$defs/d"}}, ["a"], [1],
     "[0]: must be text, got a number 1"),
    ({"definitions": {"a/b": {"maximum": 1}}, "$ref": "#/definitions/a~1b"}, 1, 2, "2 is above the maximum 1"),
])
def test_each_keyword_passes_a_good_value_and_names_a_bad_one(schema, good, bad, message):
    assert check_against(schema, good) == [], schema
    assert lines(schema, bad) == [message]


def test_keywords_only_apply_to_their_kind_of_value():
    schema = {"minimum": 3, "maxLength": 2, "minItems": 2, "required": ["a"], "pattern": "^x$", "uniqueItems": True}
    for value in ("x", 5, [1, 2], {"a": 1}, None, True):
        assert check_against(schema, value) == [], value
    assert check_against({"format": "uri", "maxLength": 1}, 12345) == []


def test_boolean_schemas():
    assert check_against(True, 1) == [] and check_against({"items": True}, [1]) == []
    assert lines(False, None) == ["not accepted here"]
    assert lines({"items": False}, [1, 2]) == ["[0]: not accepted here", "[1]: not accepted here"]


def test_unknown_keywords_and_formats_are_ignored():
    assert check_against({"format": "email", "x-order": 3, "title": "t", "contentMediaType": "image/png"}, "x") == []


def test_every_violation_is_collected_not_just_the_first():
    schema = {"type": "object", "additionalProperties": False, "required": ["prompt", "seed"],
              "properties": {"prompt": {"type": "string", "minLength": 1}, "seed": {"type": "integer"},
                             "urls": {"type": "array", "maxItems": 1, "items": {"type": "string", "format": "uri"}}}}
    found = check_against(schema, {"prompt": "", "urls": ["ftp://a", "https://b.c", 3], "bogus": 1})
    assert [path_text(v.path) for v in found] == ["seed", "prompt", "urls", "urls[0]", "urls[2]", "bogus"]
    assert all(isinstance(v, Violation) and "\n" not in v.message for v in found)


def test_a_violation_reads_as_one_line_with_its_path():
    assert str(Violation(("reference_urls", 2, "url"), "x")) == "reference_urls[2].url: x"
    assert str(Violation((), "top")) == "top"
    assert path_text((0, "a")) == "[0].a"


def test_names_from_the_schema_read_as_one_short_line():
    found = lines({"required": ["a\nb", "x" * 500], "properties": {"zz\nq": {}}, "additionalProperties": False},
                  {"zzq": 1})
    assert found[0] == "'a\\nb': required but not given" and len(found[1]) < 100
    assert found[2] == "zzq: not accepted by this model (did you mean zz\\nq?)"


def test_long_values_are_named_shortly():
    [message] = lines({"maxLength": 5000}, "p" * 6000)
    assert message.endswith("is 6000 characters long; the most is 5000") and len(message) < 120
    [message] = lines({"enum": list(range(50))}, 99)
    assert message.endswith("... (50 in all)")


# --- suggestions ------------------------------------------------------------------------------

NAMES = ["prompt", "reference_urls", "duration", "resolution", "aspectRatio", "negative_prompt", "seed"]


@pytest.mark.parametrize("written, meant", [
    ("aspect_ratio", "aspectRatio"),  # the snake_case form of a camelCase name
    ("aspectratio", "aspectRatio"),
    ("durration", "duration"),
    ("referenceUrls", "reference_urls"),
    ("negativePrompt", "negative_prompt"),
    ("resolutoin", "resolution"),
])
def test_an_unknown_name_suggests_what_was_meant(written, meant):
    assert suggest(written, NAMES) == meant
    schema = {"properties": {n: {} for n in NAMES}, "additionalProperties": False}
    assert lines(schema, {written: 1}) == [f"{written}: not accepted by this model (did you mean {meant}?)"]


def test_no_suggestion_for_a_name_like_none_of_them():
    assert suggest("qqqqqq", NAMES) is None
    schema = {"properties": {"a": {"additionalProperties": False, "properties": {"b": {}}}}}
    assert lines(schema, {"a": {"zz": 1}}) == ["a.zz: not accepted here (it takes b)"]


# --- names mapped by rule -----------------------------------------------------------------------

@pytest.mark.parametrize("wire, manifest", [
    ("aspectRatio", "aspect_ratio"), ("referenceURLs", "reference_urls"), ("imageURL", "image_url"),
    ("HTTPServer", "http_server"), ("negative_prompt", "negative_prompt"), ("seed", "seed"),
    ("aspect-ratio", "aspect_ratio"), ("userIDs", "user_ids"), ("v2Model", "v2_model"), ("ID", "id"),
    ("", ""), ("négatif", "négatif"),
])
def test_manifest_name_is_snake_case(wire, manifest):
    assert manifest_name(wire) == manifest


@pytest.mark.parametrize("manifest, wires, expected", [
    ("aspect_ratio", ["prompt", "aspectRatio"], "aspectRatio"),
    ("aspect_ratio", ["aspect_ratio", "aspectRatio"], "aspect_ratio"),  # exact wins
    ("reference_urls", ["referenceURLs"], "referenceURLs"),
    ("reference_urls", ["reference_urls"], "reference_urls"),
    ("aspect_ratio", ["aspectratio", "aspectRatio"], "aspectRatio"),  # its snake_case is the name
    ("negative_prompt", ["negativePrompt", "negative-prompt"], None),  # ambiguous
    ("aspectratio", ["aspectRatio", "aspect_ratio"], None),
    ("seed", ["prompt"], None),
    ("seed", [], None),
])
def test_wire_name_maps_by_rule(manifest, wires, expected):
    assert wire_name(manifest, wires) == expected


@given(st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,20}", fullmatch=True))
def test_a_wire_name_is_found_again_from_its_manifest_name(wire):
    assert wire_name(manifest_name(wire), [wire]) == wire
    assert manifest_name(manifest_name(wire)) == manifest_name(wire)


# --- parameters described ------------------------------------------------------------------------

def test_the_builtin_model_is_described():
    facts = {f.name: f for f in describe_parameters(get_model("happyhorse-1.0-r2v").json_schema())}
    assert list(facts) == ["prompt", "reference_urls", "duration", "resolution", "aspect_ratio", "negative_prompt",
                           "seed"]
    assert facts["duration"] == ParameterFacts("duration", "duration", "integer", False, 5, "3 to 15", None)
    assert facts["resolution"].rule == "one of 720p, 1080p"
    assert facts["aspect_ratio"].wire == "aspectRatio" and facts["aspect_ratio"].default == "16:9"
    assert facts["reference_urls"].type_text == "list of URLs" and facts["reference_urls"].rule == "1 to 9 items"
    assert facts["prompt"].required and facts["prompt"].rule == "1 to 5000 characters"
    assert facts["seed"].rule == "0 to 2147483647" and not facts["seed"].required


def test_description_refs_and_nullable_types_are_read():
    schema = {"$defs": {"ratio": {"type": "string", "enum": ["16:9", "1:1"], "description": " The\n frame "}},
              "properties": {"aspectRatio": {"$ref": "#/$defs/ratio"},
                             "seed": {"anyOf": [{"type": "integer", "minimum": 0}, {"type": "null"}]},
                             "tags": {"type": "array", "items": {"type": "string", "maxLength": 9},
                                      "uniqueItems": True},
                             "strength": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                             "mode": {"enum": ["a", "b"]}, "loop": {"$ref": "#/properties/loop"}}}
    facts = {f.wire: f for f in describe_parameters(schema)}
    assert facts["aspectRatio"].description == "The frame" and facts["aspectRatio"].rule == "one of 16:9, 1:1"
    assert facts["seed"].type_text == "integer or null"
    assert facts["tags"].type_text == "list of text" and facts["tags"].rule == "no repeats; each at most 9 characters"
    assert facts["strength"].rule == "at most 1; above 0"
    assert facts["mode"].type_text == "choice"
    assert facts["loop"].type_text == ""  # a $ref to itself: described as nothing, not followed forever


@pytest.mark.parametrize("schema", [{}, {"properties": []}, {"properties": {"a": 5, 3: {}}}, {"$ref": "#"}])
def test_describing_a_schema_without_usable_properties_gives_what_it_can(schema):
    assert describe_parameters(schema) == []


# --- the built-in model: its own schema and its own checks agree ------------------------------------

MODEL = get_model("happyhorse-1.0-r2v")


def wire_body(**changes):
    params = {**MODEL.defaults(), "prompt": "a hero walks", "references": ["https://x.com/a.png"], **changes}
    return MODEL.to_wire(params)


def test_the_defaults_wire_body_fits_the_models_schema():
    body = wire_body()
    assert "aspectRatio" in body and check_against(MODEL.json_schema(), body) == []


@pytest.mark.parametrize("body, expected", [
    (wire_body(duration=20), "duration: 20 is above the maximum 15"),
    (wire_body(resolution="4k"), "resolution: '4k' is not one of 720p, 1080p"),
    (wire_body(seed=-1), "seed: -1 is below the minimum 0"),
    (wire_body(duration="5"), "duration: must be a whole number, got text '5'"),
    ({**wire_body(), "aspect_ratio": "16:9"}, "aspect_ratio: not accepted by this model (did you mean aspectRatio?)"),
    ({k: v for k, v in wire_body().items() if k != "prompt"}, "prompt: required but not given"),
    (wire_body(references=["https://x.com/a.png"] * 10), "reference_urls: has 10 item(s); the most is 9"),
])
def test_a_bad_body_is_refused_by_both_checks(body, expected):
    assert lines(MODEL.json_schema(), body) == [expected]


@settings(max_examples=150, deadline=None)
@given(duration=st.one_of(st.integers(-5, 30), st.floats(allow_nan=False), st.text(max_size=3), st.booleans()),
       resolution=st.sampled_from(["720p", "1080p", "4k", "", 720]),
       seed=st.one_of(st.integers(-10, 2**32), st.none()))
def test_what_the_schema_accepts_the_models_own_check_accepts(duration, resolution, seed):
    body = wire_body(duration=duration, resolution=resolution, **({} if seed is None else {"seed": seed}))
    if check_against(MODEL.json_schema(), body) == []:
        for name, value in MODEL.from_wire(body).items():
            assert MODEL.param(name).check(value) is None, (name, value)


# --- a hostile schema never crashes or stalls a check -------------------------------------------------

def test_malformed_keywords_count_as_absent():
    schema = {"type": ["bogus", 3], "enum": "abc", "minimum": "x", "maximum": None, "multipleOf": 0,
              "minLength": -1, "maxLength": 2.5, "maxItems": True, "required": "prompt", "properties": [1],
              "items": 5, "additionalProperties": "no", "anyOf": {}, "allOf": 3, "$ref": 7, "pattern": 5,
              "uniqueItems": "yes", "exclusiveMinimum": True}
    for value in (3, "abc", [1, 1], {"x": 1}, None):
        assert check_against(schema, value) == [], value


@pytest.mark.parametrize("step, value", [(1e308, 3.5), (1e-308, 10**400), (1e-300, 1e300), (3, 10**400 + 1)])
def test_extreme_multiple_of_is_not_a_crash(step, value):
    assert isinstance(check_against({"multipleOf": step}, value), list)


def test_an_invalid_pattern_is_reported_once():
    schema = {"items": {"pattern": "(a"}}
    found = lines(schema, ["a", "b", "c"])
    assert len(found) == 1 and "pattern '(a' is not a regular expression" in found[0]
    assert lines({"pattern": "(?<year>[0-9]{4})"}, "in 2024") == []  # ECMA-262's named group


def test_a_ref_to_nowhere_is_reported_and_a_remote_one_is_not_fetched():
    assert lines({"$ref": "#/definitions/missing"}, 1) == [
        "the schema's $ref '#/definitions/missing' points nowhere; it was not checked"]
    assert check_against({"$ref": "https://evil.example/schema.json"}, 1) == []


def test_ref_loops_end():
    looped = {"definitions": {"a": {"$ref": "#/definitions/b"}, "b": {"$ref": "#/definitions/a"}},
              "$ref": "#/definitions/a"}
    assert check_against(looped, 1) == []
    recursive = {"type": "array", "items": {"$ref": "#"}}
    assert check_against(recursive, [[[]], []]) == []
    assert lines(recursive, [[[1]]]) == ["[0][0][0]: must be a list, got a number 1"]


def test_deep_nesting_is_reported_once_not_followed_forever():
    schema: dict = {"type": "string"}
    value: object = 1
    for _ in range(3 * MAX_DEPTH):
        schema, value = {"properties": {"a": schema}}, {"a": value}
    found = check_against(schema, value)
    assert len(found) == 1 and "deeper than 50 levels" in found[0].message


def test_exponential_fan_out_is_cut_off():
    defs = {f"d{i}": {"anyOf": [{"$ref": f"#/definitions/d{i + 1}"}, {"$ref": f"#/definitions/d{i + 1}"}]}
            for i in range(22)}
    defs["d22"] = {"type": "string"}
    started = time.monotonic()
    found = check_against({"definitions": defs, "$ref": "#/definitions/d0"}, 5)
    assert time.monotonic() - started < 10 and found  # refused: a schema too large to finish never passes


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
                    max_leaves=12)
KEYWORDS = ["type", "enum", "const", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
            "minLength", "maxLength", "pattern", "format", "items", "minItems", "maxItems", "uniqueItems",
            "properties", "required", "additionalProperties", "anyOf", "oneOf", "allOf", "$ref", "definitions",
            "$defs"]
KEYWORD_VALUES = (JSON | st.sampled_from(["string", "integer", "uri", "#", "#/definitions/a", "#/$defs/x", "(",
                                         "[a-", "^a+$", ["string", "null"]]))
SCHEMAS = st.recursive(
    st.dictionaries(st.sampled_from(KEYWORDS), KEYWORD_VALUES, max_size=4),
    lambda inner: st.dictionaries(st.sampled_from(KEYWORDS), inner | st.lists(inner, max_size=3)
                                  | st.dictionaries(st.sampled_from(["a", "b", "d", "x"]), inner, max_size=3),
                                  max_size=4),
    max_leaves=10)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schema=SCHEMAS | JSON, value=JSON)
def test_any_schema_and_value_give_a_list_of_violations(schema, value):
    started = time.monotonic()
    found = check_against(schema, value)
    assert isinstance(found, list) and all(isinstance(v, Violation) and "\n" not in str(v) for v in found)
    assert time.monotonic() - started < 5
    describe_parameters(schema if isinstance(schema, dict) else {})


@pytest.mark.parametrize("pattern", ["^(a+)+$", "(a|aa)*b", "(a*)*", r"^(?:[a-z]+\s?)+$"])
def test_a_pattern_that_could_backtrack_for_ever_is_not_run(pattern):
    from batcher.models import backtracks
    assert backtracks(pattern)
    # Run, this would not end in our lifetime: it is left to the API.
    assert check_against({"pattern": pattern}, "a" * 40 + "!") == []


def test_safe_patterns_are_still_checked():
    assert lines({"pattern": "^[a-z-]+$"}, "Snow") == ["'Snow' does not match the pattern '^[a-z-]+$'"]
