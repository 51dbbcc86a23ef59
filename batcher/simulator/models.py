"""The models the simulator serves: each one's listing, request schema, strict check and price.

Every model is served from its description: batcher's built-in `ModelSpec`s (their schema is
`spec.json_schema()`), and one video model batcher does not know, `wan-2.5-t2v`, described only as
a raw JSON schema and the info the API lists. One rule checks every submission: the model's request
schema (`models.schema.check_against`: unknown keys refused, types, enums, ranges, patterns). A built-in
words its refusals with its parameter table, as batcher's own messages do; any other model with the
schema's words. Video is charged per second (the `duration` parameter, else its schema default) at
the rate of the `resolution` parameter (else its default). A parameter whose schema is a list of
URLs takes reference images, judged as `batcher.simulator.references` judges them.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..models import HAPPYHORSE_11_R2V, HAPPYHORSE_R2V, MODELS, WEB_FORMATS, ModelSpec, Violation, check_against
from .references import FetchReference, UploadStore, references_problem

# Credits per second the simulator charges, by resolution. 1.0: the published 720p price and the
# upstream 1.8x for 1080p (SimConfig.rates, which a simulator may change); 1.1: the simulator's own.
BUILT_IN_RATES: dict[str, dict[str, float]] = {
    HAPPYHORSE_R2V.api_id: {"720p": 4.0, "1080p": 7.2},
    HAPPYHORSE_11_R2V.api_id: {"720p": 5.0, "1080p": 9.0},
}
BUILT_IN_TEXT: dict[str, tuple[str, str]] = {  # api id -> (name, description)
    HAPPYHORSE_R2V.api_id: ("Happy Horse 1.0 Reference to Video",
                            "Happy Horse 1.0: a 3 to 15 second clip from a prompt and 1 to 9 reference images."),
    HAPPYHORSE_11_R2V.api_id: ("Happy Horse 1.1 Reference to Video",
                               "Happy Horse 1.1: a 3 to 15 second clip from a prompt and 1 to 9 reference images."),
}

# A model batcher does not know (not in models.MODELS): text to video, no references.
WAN_T2V_SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "required": ["prompt"],
    "properties": {
        "prompt": {"type": "string", "minLength": 1, "maxLength": 2000, "description": "What happens in the clip"},
        "negativePrompt": {"type": "string", "maxLength": 1000},
        "duration": {"type": "integer", "enum": [5, 10], "default": 5, "description": "Seconds of video"},
        "resolution": {"type": "string", "enum": ["480p", "720p", "1080p"], "default": "720p"},
        "aspectRatio": {"type": "string", "enum": ["16:9", "9:16", "1:1"], "default": "16:9"},
        "guidanceScale": {"type": "number", "minimum": 1, "maximum": 10, "multipleOf": 0.5, "default": 5},
        "enhancePrompt": {"type": "boolean", "default": True},
        "seed": {"type": ["integer", "null"], "minimum": 0, "maximum": 2147483647},
        "cameraMotion": {"$ref": "#/$defs/motion"},
        "styleTags": {"type": "array", "items": {"type": "string", "pattern": "^[a-z-]+$"}, "maxItems": 4,
                      "uniqueItems": True},
    },
    "$defs": {"motion": {"type": "string", "enum": ["static", "pan-left", "pan-right", "zoom-in"],
                         "default": "static"}},
}
WAN_T2V_INFO: dict[str, Any] = {"apiId": "wan-2.5-t2v", "name": "Wan 2.5 Text to Video", "type": "video",
                                "creditCost": {"default": 15, "type": "per_second", "amount": 3}}
WAN_T2V_RATES: dict[str, float] = {"480p": 2.0, "720p": 3.0, "1080p": 6.0}


@dataclass(frozen=True)
class ServedModel:
    """One model as the simulator serves it: what it lists, the schema it checks, what it charges."""

    api_id: str
    listed: Mapping[str, Any]  # apiId, name, type, description (optional), creditCost
    schema: Mapping[str, Any]  # the request schema, `additionalProperties: false`
    rates: Mapping[str, float]  # credits per second by resolution
    spec: ModelSpec | None = None  # a built-in's parameter table: words its refusals
    rate_param: str = "resolution"
    seconds_param: str = "duration"

    def info(self) -> dict[str, Any]:
        """The model as `GET /api/v1/models/{apiId}` lists it (without its schema)."""
        return copy.deepcopy(dict(self.listed))

    def request_schema(self) -> dict[str, Any]:
        """The request schema, as `/schema` serves it (a copy)."""
        return copy.deepcopy(dict(self.schema))

    def default(self, wire: str) -> Any:
        """A top-level parameter's schema default, or None."""
        props = self.schema.get("properties", {})
        rule = props.get(wire) if isinstance(props, Mapping) else None
        return rule.get("default") if isinstance(rule, Mapping) else None

    def seconds(self, body: Mapping[str, Any]) -> float:
        """Seconds of video a valid `body` asks for."""
        seconds = body.get(self.seconds_param, self.default(self.seconds_param))
        return float(seconds) if seconds is not None else 0.0

    def charge(self, body: Mapping[str, Any]) -> float:
        """Credits a valid `body` costs: per second of video at its resolution's rate."""
        resolution = body.get(self.rate_param, self.default(self.rate_param))
        return round(self.rates[str(resolution)] * self.seconds(body), 2)

    def check(self, body: Any) -> str | None:
        """None when `body` fits the request schema; else one line naming the field and why."""
        found = check_against(self.schema, body)
        return self._reason(body, found[0]) if found else None

    def url_lists(self) -> tuple[str, ...]:
        """Wire names of the parameters that take reference URLs (a list of `format: uri` strings)."""
        props = self.schema.get("properties", {})
        return tuple(wire for wire, rule in props.items()
                     if isinstance(rule, Mapping) and rule.get("type") == "array"
                     and isinstance(items := rule.get("items"), Mapping) and items.get("format") in WEB_FORMATS)

    def reference_problem(self, body: Mapping[str, Any], uploads: UploadStore, fetch: FetchReference | None
                          ) -> tuple[str | None, int]:
        """(why the API would refuse a valid `body` for one of its reference images, or None; fetches
        made): every URL-list parameter is judged; a model without one has nothing to judge."""
        fetched = 0
        for wire in self.url_lists():
            urls = body.get(wire)
            if isinstance(urls, list):
                problem, made = references_problem(wire, urls, uploads, fetch)
                fetched += made
                if problem is not None:
                    return problem, fetched
        return None, fetched

    def _reason(self, body: Any, violation: Violation) -> str:
        if not isinstance(body, Mapping):
            return "Body must be a JSON object"
        key = violation.path[0] if violation.path else None
        props = self.schema.get("properties", {})
        if len(violation.path) == 1 and key not in props:
            return f"Unknown parameter '{key}': {violation.message}"
        if len(violation.path) == 1 and key not in body:
            return f"Missing required parameter '{key}'"
        param = next((p for p in self.spec.params if p.wire == key), None) if self.spec else None
        problem = param.check(body[key]) if param is not None else None
        return problem.replace(param.name, param.wire, 1) if param is not None and problem else str(violation)


def built_in(spec: ModelSpec, rates: Mapping[str, float] | None = None) -> ServedModel:
    """A built-in model served from its ModelSpec: its schema, its name, the simulator's rates."""
    rates = rates if rates is not None else BUILT_IN_RATES.get(spec.api_id, spec.credits_per_second)
    name, description = BUILT_IN_TEXT.get(spec.api_id, (spec.api_id, f"{spec.api_id} (video)"))
    model = ServedModel(spec.api_id, {}, spec.json_schema(), rates, spec)
    amount, default = rates[str(model.default(model.rate_param))], model.charge({})
    listed = {"apiId": spec.api_id, "name": name, "type": "video", "description": description,
              "creditCost": {"default": _plain(default), "type": "per_second", "amount": _plain(amount)}}
    return ServedModel(spec.api_id, listed, model.schema, rates, spec)


def _plain(n: float) -> float:
    """20.0 as 20, as the API lists prices; 7.2 as it is."""
    return int(n) if float(n).is_integer() else n


def served_models(rates: Mapping[str, Mapping[str, float]] | None = None) -> dict[str, ServedModel]:
    """Every model the simulator serves by api id: the built-ins of `models.MODELS`, then wan-2.5-t2v.
    `rates` replaces a model's credits per second (the simulator passes SimConfig.rates for 1.0)."""
    rates = rates or {}
    served = {api_id: built_in(spec, rates.get(api_id)) for api_id, spec in MODELS.items()}
    wan = WAN_T2V_INFO["apiId"]
    served[wan] = ServedModel(wan, WAN_T2V_INFO, WAN_T2V_SCHEMA, rates.get(wan, WAN_T2V_RATES))
    return served


def not_found(api_id: str) -> tuple[int, dict[str, Any]]:
    return 404, {"error": {"code": "model_not_found", "message": f"Model {api_id} not found"}}


def model_answer(models: Mapping[str, ServedModel], route: str, api_id: str | None, detailed: bool
                 ) -> tuple[int, dict[str, Any]]:
    """(status, JSON body) of a model route: "models" (the list; `detailed` adds each creditCost),
    "model" (the info and its requestSchema) or "schema" (the request schema)."""
    if route == "models":
        keys = ("apiId", "name", "type", "creditCost") if detailed else ("apiId", "name", "type")
        return 200, {"models": [{k: m.info()[k] for k in keys if k in m.listed} for m in models.values()]}
    model = models.get(api_id or "")
    if model is None:
        return not_found(str(api_id))
    if route == "schema":
        return 200, model.request_schema()
    return 200, {**model.info(), "requestSchema": model.request_schema()}
