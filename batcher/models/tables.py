"""Per-model parameter tables: the one place that knows a PixelDojo model's rules and prices.

Adding another model means adding one `ModelSpec` to `MODELS`; manifest validation, the
simulator's strict checks, the JSON schema it serves and cost estimates all read from here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ..text import short, type_name
from .schema import check_against

MAX_INT32 = 2_147_483_647
# The words a manifest row keeps for itself (expansion, labels, its model, rows from a file): a
# model parameter of the same name is written `api_<name>` in manifests.
ROW_WORDS = ("seeds", "vary", "repeat", "name", "model", "from")


@dataclass(frozen=True)
class Param:
    """One API parameter: its manifest name, wire name and rule."""

    name: str  # as written in manifests (snake_case)
    wire: str  # as sent to the API
    kind: str  # "string" | "integer" | "enum" | "url_list" | "schema" (any rule of a live JSON schema)
    required: bool = False
    default: Any = None
    minimum: int | None = None
    maximum: int | None = None
    max_length: int | None = None
    min_items: int | None = None
    max_items: int | None = None
    choices: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    rule: dict[str, Any] | None = None  # the property's JSON schema, for models described by the live API
    description: str | None = None

    def check(self, value: Any) -> str | None:
        """Return why `value` breaks this parameter's rule, or None if it is fine."""
        if self.rule is not None and (self.kind == "schema" or not isinstance(value, list)):
            return self._check_rule(value)
        if self.kind == "string":
            if not isinstance(value, str):
                return f"{self.name} must be a string, got {type_name(value)}"
            if self.required and not value.strip():
                return f"{self.name} must not be empty"
            if self.max_length is not None and len(value) > self.max_length:
                return f"{self.name} is {len(value)} characters long; the most is {self.max_length}"
            return None
        if self.kind == "integer":
            if isinstance(value, bool) or not isinstance(value, int):
                return f"{self.name} must be an integer, got {type_name(value)} {short(value)}"
            if self.minimum is not None and value < self.minimum:
                return f"{self.name} must be at least {self.minimum}, got {value}"
            if self.maximum is not None and value > self.maximum:
                return f"{self.name} must be at most {self.maximum}, got {value}"
            return None
        if self.kind == "enum":
            if value not in self.choices:
                return f"{self.name} must be one of {', '.join(self.choices)}; got {short(value)}"
            return None
        if self.kind == "url_list":
            if not isinstance(value, list):
                return f"{self.name} must be a list of URLs, got {type_name(value)}"
            if self.min_items is not None and len(value) < self.min_items:
                return f"{self.name} needs at least {self.min_items} URL(s), got {len(value)}"
            if self.max_items is not None and len(value) > self.max_items:
                return f"{self.name} takes at most {self.max_items} URLs, got {len(value)}"
            for url in value:
                problem = check_url(url)
                if problem:
                    return f"{self.name}: {problem}"
            return None
        raise ValueError(f"unknown parameter kind {self.kind}")  # a bug in the table

    def _check_rule(self, value: Any) -> str | None:
        """The first rule of the live schema `value` breaks, named after this parameter."""
        assert self.rule is not None
        found = check_against(self.rule, value)
        if not found:
            return None
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in found[0].path)
        return f"{self.name}{where}: {found[0].message}"

    def json_schema(self) -> dict[str, Any]:
        """This parameter as a JSON-schema property."""
        if self.rule is not None:
            return dict(self.rule)
        if self.kind == "string":
            out: dict[str, Any] = {"type": "string"}
            if self.required:
                out["minLength"] = 1
            if self.max_length is not None:
                out["maxLength"] = self.max_length
        elif self.kind == "integer":
            out = {"type": "integer"}
            if self.minimum is not None:
                out["minimum"] = self.minimum
            if self.maximum is not None:
                out["maximum"] = self.maximum
        elif self.kind == "enum":
            out = {"type": "string", "enum": list(self.choices)}
        else:
            out = {"type": "array", "items": {"type": "string", "format": "uri"}}
            if self.min_items is not None:
                out["minItems"] = self.min_items
            if self.max_items is not None:
                out["maxItems"] = self.max_items
        if self.default is not None:
            out["default"] = self.default
        return out


def check_url(url: Any) -> str | None:
    """Why `url` is not an absolute http(s) URL, or None."""
    if not isinstance(url, str):
        return f"{short(url)} is not a URL"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return f"{short(url)} is not an http or https URL"
    return None


@dataclass(frozen=True)
class ModelSpec:
    """A model's parameters, prices and typical render time."""

    api_id: str
    params: tuple[Param, ...]
    credits_per_second: dict[str, float]
    # Resolutions whose price is a guess (unpublished); estimates using them are marked as such.
    guessed_rates: frozenset[str] = field(default_factory=frozenset)
    rate_param: str = "resolution"
    seconds_param: str = "duration"
    expected_render_seconds: float = 90.0
    # For models described by the live API: where the description came from ("built-in" for the
    # table below), and whether any price is known (else a budgeted run needs --rate).
    source: str = "built-in"
    price_known: bool = True
    # Whether a job's request (and so its key) holds the model's defaults. A model described by
    # the API does not: a default the API adds or changes later must not change the keys of jobs
    # already paid for (their requests say what the manifest says, the API fills in the rest).
    fill_defaults: bool = True

    def param(self, name: str) -> Param | None:
        """Find a parameter by manifest name, wire name or alias."""
        for p in self.params:
            if name == p.name or name == p.wire or name in p.aliases:
                return p
        return None

    def job_class(self, params: dict[str, Any]) -> tuple[Any, Any, Any]:
        """Jobs that render and cost alike (model, seconds of video, resolution): render times are
        learned, and charges remembered, per class."""
        return (self.api_id, params.get(self.seconds_param, self.defaults().get(self.seconds_param)),
                params.get(self.rate_param, self.defaults().get(self.rate_param)))

    def names(self) -> list[str]:
        """Every manifest-side name, for suggestions."""
        return [p.name for p in self.params]

    def defaults(self) -> dict[str, Any]:
        """The model's default values by manifest name."""
        return {p.name: p.default for p in self.params if p.default is not None}

    def to_wire(self, params: dict[str, Any]) -> dict[str, Any]:
        """Manifest-named parameters to the body the API expects."""
        out = {}
        for name, value in params.items():
            p = self.param(name)
            if p is None:
                raise KeyError(name)
            out[p.wire] = value
        return out

    def from_wire(self, body: dict[str, Any]) -> dict[str, Any]:
        """An API body back to manifest names (unknown keys kept as they are)."""
        out = {}
        for wire, value in body.items():
            p = self.param(wire)
            out[p.name if p else wire] = value
        return out

    def resolutions(self) -> list[str]:
        """The values of the parameter prices depend on (its choices, or the priced ones)."""
        p = self.param(self.rate_param)
        choices = list(p.choices) if p is not None and p.choices else []
        if p is not None and p.rule is not None and isinstance(p.rule.get("enum"), list):
            choices = [str(c) for c in p.rule["enum"]]
        return list(dict.fromkeys([*(k for k in self.credits_per_second if k != "*"), *choices]))

    def check_rates(self, overrides: dict[str, float]) -> str | None:
        """Why `--rate` overrides do not fit this model, or None (see `check_rates`)."""
        return check_rates([self], overrides)

    def rate(self, params: dict[str, Any], overrides: dict[str, float] | None = None) -> float:
        """Credits per second of video for these (manifest-named) parameters: an override for this
        model and resolution, this model, or this resolution (`--rate`), else the model's price
        for the resolution, else its one price for all ("*"); 0 when no price is known."""
        key = str(params.get(self.rate_param, self.defaults().get(self.rate_param)))
        given = overrides or {}
        for name in (f"{self.api_id}:{key}", self.api_id, key):
            if name in given:
                return given[name]
        return self.credits_per_second.get(key, self.credits_per_second.get("*", 0.0))

    def estimate(self, params: dict[str, Any], overrides: dict[str, float] | None = None) -> float:
        """Credits one job with these parameters is expected to cost."""
        # A model priced per job (no seconds parameter) counts each job as one second.
        seconds: float = params.get(self.seconds_param, self.defaults().get(self.seconds_param, 0)) \
            if self.seconds_param else 1
        return math.ceil(self.rate(params, overrides) * seconds * 100) / 100

    def is_guess(self, params: dict[str, Any], overrides: dict[str, float] | None = None) -> bool:
        """True when the estimate for these parameters rests on an unpublished (or unknown) price."""
        key = str(params.get(self.rate_param, self.defaults().get(self.rate_param)))
        given = overrides or {}
        if any(name in given for name in (f"{self.api_id}:{key}", self.api_id, key)):
            return False
        return not self.price_known or key in self.guessed_rates or (
            key not in self.credits_per_second and "*" not in self.credits_per_second)

    def json_schema(self) -> dict[str, Any]:
        """The model's parameter schema, as /schema serves it."""
        return {
            "type": "object",
            "properties": {p.wire: p.json_schema() for p in self.params},
            "required": [p.wire for p in self.params if p.required],
            "additionalProperties": False,
        }


HAPPYHORSE_R2V = ModelSpec(
    api_id="happyhorse-1.0-r2v",
    params=(
        Param("prompt", "prompt", "string", required=True, max_length=5000),
        Param("references", "reference_urls", "url_list", required=True, min_items=1, max_items=9,
              aliases=("reference_urls",)),
        Param("duration", "duration", "integer", default=5, minimum=3, maximum=15),
        Param("resolution", "resolution", "enum", default="720p", choices=("720p", "1080p")),
        Param("aspect_ratio", "aspectRatio", "enum", default="16:9",
              choices=("16:9", "9:16", "1:1", "4:3", "3:4"), aliases=("aspectRatio",)),
        Param("negative_prompt", "negative_prompt", "string"),
        Param("seed", "seed", "integer", minimum=0, maximum=MAX_INT32),
    ),
    # 20 credits for the default 5 s 720p clip is published; 1080p is not (upstream prices it
    # at about 1.8x), so we estimate it high on purpose: an estimate that is too low could let
    # a run spend past its budget.
    credits_per_second={"720p": 4.0, "1080p": 8.0},
    guessed_rates=frozenset({"1080p"}),
)

# Happy Horse 1.1 takes the same request (up to 9 references); PixelDojo has published no price
# for it yet, so both rates are marked as guesses (a live creditCost, when the API lists one,
# replaces them: see `catalog`).
HAPPYHORSE_11_R2V = ModelSpec(
    api_id="happyhorse-1.1-r2v",
    params=HAPPYHORSE_R2V.params,
    credits_per_second={"720p": 4.0, "1080p": 8.0},
    guessed_rates=frozenset({"720p", "1080p"}),
)

MODELS: dict[str, ModelSpec] = {m.api_id: m for m in (HAPPYHORSE_R2V, HAPPYHORSE_11_R2V)}
DEFAULT_MODEL = HAPPYHORSE_R2V.api_id


def check_rates(models: list[ModelSpec], overrides: dict[str, float]) -> str | None:
    """Why `--rate` overrides do not fit a batch's models (a name that is no model, resolution or
    MODEL:RESOLUTION of theirs; a rate that is not a positive number), or None."""
    names = {m.api_id for m in models} | {r for m in models for r in m.resolutions()} | {
        f"{m.api_id}:{r}" for m in models for r in m.resolutions()}
    for name, value in overrides.items():
        if name not in names and len(models) == 1:
            return (f"--rate {name}={value:g}: {models[0].api_id} has no resolution {name!r} (it has "
                    f"{', '.join(models[0].resolutions())})")
        if name not in names:
            have = ", ".join(dict.fromkeys(r for m in models for r in m.resolutions()))
            ids = ", ".join(m.api_id for m in models)
            return (f"--rate {name}={value:g}: no model of this batch has a resolution {name!r} (they have "
                    f"{have}; or name a model: {ids}, or MODEL:RESOLUTION)")
        if not math.isfinite(value) or value <= 0:
            return f"--rate {name}={value:g}: credits per second must be a positive number"
    return None


def unpriced(models: list[ModelSpec], overrides: dict[str, float]) -> list[str]:
    """The models whose price nobody knows (not published, not listed by the API, no `--rate`):
    a run under a budget cannot spend on them."""
    def priced(m: ModelSpec) -> bool:  # a rate for the model, or for each of its resolutions
        return m.api_id in overrides or (bool(m.resolutions()) and all(
            f"{m.api_id}:{r}" in overrides or r in overrides for r in m.resolutions()))
    return [m.api_id for m in models if not m.price_known and not priced(m)]


def get_model(api_id: str) -> ModelSpec | None:
    """The spec of a known model, or None."""
    return MODELS.get(api_id)
