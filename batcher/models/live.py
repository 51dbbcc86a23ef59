"""A model batcher has no table for, described from what the API publishes: its request schema
(JSON Schema) and its info (`creditCost`). Pure: the fetching and caching live in `catalog`.

Manifest names follow the schema's by rule (`aspectRatio` is written `aspect_ratio`; either is
accepted), never by a table per model. A model's one list-of-URLs parameter is its references
(written `references` in manifests, as for the built-in models).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ..text import as_number
from .schema import manifest_name
from .tables import MODELS, ROW_WORDS, ModelSpec, Param

DEFINITION_KEYS = ("$defs", "definitions")
MAX_PARAMS = 200  # a schema with more properties is not a model request we can trust
PER_SECOND = ("per_second", "per-second", "perSecond", "second", "seconds")
PER_JOB = ("fixed", "per_generation", "per-generation", "perGeneration", "per_request", "per_run", "per_video")


def _with_definitions(rule: Mapping[str, Any], root: Mapping[str, Any]) -> dict[str, Any]:
    """A property's rule that can still resolve `#/$defs/...` references against its schema."""
    out = dict(rule)
    for key in DEFINITION_KEYS:
        if isinstance(root.get(key), Mapping) and key not in out:
            out[key] = root[key]
    return out


def _resolved(rule: Any, root: Mapping[str, Any]) -> Any:
    """A property's rule with a top-level local `$ref` followed (a few steps, never a loop)."""
    for _ in range(8):
        ref = rule.get("$ref") if isinstance(rule, Mapping) else None
        if not isinstance(ref, str) or not ref.startswith("#/"):
            return rule
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part) if isinstance(target, Mapping) else None
        if not isinstance(target, Mapping):
            return rule
        rule = {**target, **{k: v for k, v in rule.items() if k != "$ref"}}
    return rule


def _is_url_list(rule: Mapping[str, Any], wire: str) -> bool:
    items = rule.get("items")
    if rule.get("type") != "array" or not isinstance(items, Mapping):
        return False
    return items.get("format") in ("uri", "uri-reference") or "url" in wire.lower() or "image" in wire.lower()


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def params_of(schema: Mapping[str, Any]) -> tuple[Param, ...]:
    """The parameters a request schema describes, named for manifests by rule."""
    props = schema.get("properties")
    if not isinstance(props, Mapping):
        return ()
    required = {r for r in schema.get("required", []) or [] if isinstance(r, str)} \
        if isinstance(schema.get("required", []), list) else set()
    url_lists = [w for w, r in props.items() if isinstance(w, str) and isinstance(r, Mapping)
                 and _is_url_list(_resolved(r, schema), w)]
    params: list[Param] = []
    for wire, raw in list(props.items())[:MAX_PARAMS]:
        if not isinstance(wire, str) or not isinstance(raw, Mapping):
            continue
        rule = _with_definitions(_resolved(raw, schema), schema)
        name = "references" if len(url_lists) == 1 and wire == url_lists[0] else manifest_name(wire)
        if name in ROW_WORDS or (name == "references" and wire not in url_lists):
            name = f"api_{name}"  # a row's own word (or the references' name) is never the API's
        aliases = tuple(dict.fromkeys(a for a in (wire, manifest_name(wire))
                                      if a != name and a not in ROW_WORDS and a != "references"))
        default = rule.get("default")
        description = rule.get("description") if isinstance(rule.get("description"), str) else None
        choices = tuple(str(c) for c in rule["enum"]) if isinstance(rule.get("enum"), list) else ()
        if wire in url_lists:
            params.append(Param(name, wire, "url_list", required=wire in required, default=default,
                                min_items=_count(rule.get("minItems")), max_items=_count(rule.get("maxItems")),
                                aliases=aliases, rule=rule, description=description))
        else:
            params.append(Param(name, wire, "schema", required=wire in required, default=default, choices=choices,
                                aliases=aliases, rule=rule, description=description))
    return tuple(params)


def price_of(info: Mapping[str, Any]) -> tuple[dict[str, float], float | None]:
    """(credits per second by resolution, credits per job) from a model's `creditCost`
    ({default, type, amount}); both empty when it names no price we can use."""
    cost = info.get("creditCost")
    if not isinstance(cost, Mapping):
        return {}, None
    amount, kind, default = _positive(cost.get("amount")), str(cost.get("type") or ""), _positive(cost.get("default"))
    if amount is not None and kind in PER_SECOND:
        return {"*": amount}, None
    if amount is not None and kind in PER_JOB:
        return {}, amount
    if default is not None and not kind:
        return {}, default
    return {}, None


MAX_PRICE = 1e6  # credits a second or a job: past this a price is not believed


def _positive(value: Any) -> float | None:
    """A price the API gave, if it is one: a finite number above 0 and below MAX_PRICE (never
    text, true, NaN, or an integer too large for a float)."""
    number = as_number(value)
    return number if number is not None and 0 < number <= MAX_PRICE else None


def described(api_id: str, schema: Mapping[str, Any], info: Mapping[str, Any], fetched: str) -> ModelSpec:
    """The ModelSpec of a model known only from the API. A built-in model keeps its own table;
    a published per-second price replaces its guessed rates."""
    builtin = MODELS.get(api_id)
    per_second, per_job = price_of(info)
    if builtin is not None:
        return _priced_builtin(builtin, per_second, fetched)
    params = params_of(schema)
    by_name = {p.name: p for p in params}
    # Prices multiply seconds and vary by resolution only when those parameters are plain values.
    seconds_param = "duration" if _numeric(by_name.get("duration")) else ""
    if per_job is not None and not per_second:
        # A price per job: estimates are rate x seconds, so a job counts as one second.
        per_second, seconds_param = {"*": per_job}, ""
    # The published price is the default clip's: other resolutions' prices are guesses.
    rate = by_name.get("resolution") if _textual(by_name.get("resolution")) else None
    others = frozenset(c for c in (rate.choices if rate else ()) if rate is not None and c != str(rate.default))
    if per_second and rate is not None and rate.default is not None:
        per_second = {str(rate.default): per_second["*"], **per_second}
    return ModelSpec(api_id, params, per_second, others if per_second else frozenset(),
                     rate_param="resolution" if rate is not None else "",
                     seconds_param=seconds_param, source=f"live schema ({fetched})", price_known=bool(per_second),
                     fill_defaults=False)


def _priced_builtin(builtin: ModelSpec, per_second: dict[str, float], fetched: str) -> ModelSpec:
    """A built-in model whose default resolution's price was a guess, priced by the API: its other
    guessed rates keep their ratio to it (still guesses)."""
    default = str(builtin.defaults().get(builtin.rate_param))
    if not per_second or default not in builtin.guessed_rates:
        return builtin
    live = per_second["*"]
    scale = live / builtin.credits_per_second[default]
    rates = {r: live if r == default else (v * scale if r in builtin.guessed_rates else v)
             for r, v in builtin.credits_per_second.items()}
    return ModelSpec(builtin.api_id, builtin.params, rates, builtin.guessed_rates - {default}, builtin.rate_param,
                     builtin.seconds_param, builtin.expected_render_seconds,
                     source=f"built-in, {default} price from the API ({fetched})")


def needs_description(api_id: str) -> bool:
    """Whether a model must be described by the API: it has no table, or its table guesses the
    price of its default clip (the API's creditCost replaces the guess)."""
    spec = MODELS.get(api_id)
    if spec is None:
        return True
    return str(spec.defaults().get(spec.rate_param)) in spec.guessed_rates


def wanted_descriptions(manifest: Any) -> list[str]:
    """The models of a loaded manifest the API must describe: unknown ones, and built-in ones
    whose price is a guess."""
    return list(dict.fromkeys([*manifest.unknown_models, *(i for i in manifest.models if needs_description(i))]))


def _numeric(p: Param | None) -> bool:
    """A parameter whose values are numbers (its type, its enum and its default)."""
    if p is None or p.rule is None:
        return False
    kind = p.rule.get("type")
    kinds: list[Any] = kind if isinstance(kind, list) else [kind]
    enum = p.rule.get("enum")
    values = [*(enum if isinstance(enum, list) else []), *([] if p.default is None else [p.default])]
    return bool({"integer", "number"} & set(kinds)) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)


def _textual(p: Param | None) -> bool:
    """A parameter whose values are text (its enum and default): one a price can vary by."""
    if p is None:
        return False
    enum = p.rule.get("enum") if p.rule is not None else None
    values = [*(enum if isinstance(enum, list) else p.choices), *([] if p.default is None else [p.default])]
    return all(isinstance(v, str) for v in values)
