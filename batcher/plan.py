"""Expanding a manifest into jobs: pure functions, no I/O beyond what `manifest` already read.

A job's key is a hash of its canonical request (model + final wire parameters) and its take
number, so keys survive reordering rows and change only for the rows that are edited.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .errors import Diagnostic, ManifestError
from .manifest import MAX_REPEAT, LineDict, LineList, Located, Manifest, Row, _Diagnostics, suggest
from .models import MAX_INT32, ModelSpec, short
from .template import render, variables_in

MAX_JOBS = 5_000_000
KEY_LENGTH = 20


@dataclass(frozen=True)
class JobSpec:
    """One clip to render: the final request, where it came from, and what it should cost."""

    key: str
    batch: str
    row: int
    take: int
    origin: str
    label: str
    params: dict[str, Any]  # manifest names, every effective value
    estimate: float
    estimate_is_guess: bool

    def wire(self, model: ModelSpec) -> dict[str, Any]:
        return model.to_wire(self.params)



@dataclass
class RowSummary:
    origin: str
    label: str
    jobs: int = 0
    credits: float = 0.0


@dataclass
class PlanSummary:
    """What a manifest would cost, computed without sending or writing anything."""

    batch: str
    model: str
    jobs: int = 0
    credits: float = 0.0
    credits_are_guess: bool = False
    duplicates: int = 0
    seconds_of_video: int = 0
    rows: list[RowSummary] = field(default_factory=list)
    by_resolution: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "batch": self.batch, "model": self.model, "jobs": self.jobs,
            "credits": round(self.credits, 2), "credits_are_estimate": True,
            "credits_include_guessed_rates": self.credits_are_guess,
            "duplicates_merged": self.duplicates, "seconds_of_video": self.seconds_of_video,
            "by_resolution": self.by_resolution,
            "rows": [{"origin": r.origin, "label": r.label, "jobs": r.jobs, "credits": round(r.credits, 2)}
                     for r in self.rows],
        }


def canonical_request(model: ModelSpec, wire: dict[str, Any]) -> str:
    """The canonical JSON text of a request: the thing a job key hashes."""
    return json.dumps({"model": model.api_id, "params": wire}, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False)


def job_key(model: ModelSpec, wire: dict[str, Any], take: int) -> str:
    """A stable key for one take of one request."""
    text = canonical_request(model, wire) + f"#take={take}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:KEY_LENGTH]


def auto_seed(model: ModelSpec, wire_without_seed: dict[str, Any], take: int) -> int:
    """A seed derived from the request and take, so a rerender reproduces the same clip."""
    text = canonical_request(model, wire_without_seed) + f"#seed-for-take={take}"
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:8], 16) % (MAX_INT32 + 1)


_LABEL_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def row_label(row: Row) -> str:
    name = row.fields.get("name")
    if name is not None and isinstance(name.value, str) and name.value.strip():
        cleaned = _LABEL_UNSAFE.sub("-", name.value.strip()).strip("-.")[:40]
        if cleaned:
            return cleaned
    return f"row{row.index + 1:04d}"


@dataclass
class _Dimension:
    """One axis of a row's expansion: a parameter or variable and its located values."""

    name: str
    is_param: bool
    values: list[Located]


def _as_list(loc: Located) -> list[Located]:
    value = loc.value
    if isinstance(value, list):
        lines = value.item_lines if isinstance(value, LineList) else [loc.line] * len(value)
        return [Located(v, loc.file, line) for v, line in zip(value, lines)]
    return [loc]


def _row_dimensions(row: Row, model: ModelSpec, diags: _Diagnostics) -> list[_Dimension] | None:
    dims: list[_Dimension] = []
    vary = row.fields.get("vary")
    if vary is not None:
        if not isinstance(vary.value, dict) or not vary.value:
            diags.add(vary.file, vary.line, "vary must be a mapping of names to lists of values")
            return None
        raw: LineDict = vary.value
        used = set()
        for key in ("prompt", "negative_prompt"):
            loc = row.fields.get(key)
            if loc is not None and isinstance(loc.value, str):
                used |= variables_in(loc.value)
        for key, values in raw.items():
            key_line = raw.key_lines.get(key, vary.line) if isinstance(raw, LineDict) else vary.line
            value_line = raw.value_lines.get(key, vary.line) if isinstance(raw, LineDict) else vary.line
            if not isinstance(key, str):
                diags.add(vary.file, key_line, f"a vary name must be text, got {short(key)}")
                continue
            p = model.param(key)
            if p is not None and p.name == "prompt":
                diags.add(vary.file, key_line, "vary the prompt through a {variable} in it, not directly")
                continue
            if not isinstance(values, list) or not values:
                diags.add(vary.file, value_line, f"vary {short(key)} must be a non-empty list")
                continue
            located = _as_list(Located(values, vary.file, value_line))
            if p is not None:
                dims.append(_Dimension(p.name, True, located))
            elif not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                diags.add(vary.file, key_line, f"vary {short(key)} is neither an API parameter nor a variable name")
            elif key not in used:
                diags.add(vary.file, key_line,
                          f"vary {short(key)} is not an API parameter{suggest(key, model.names())} and the prompt "
                          f"has no {{{key}}}")
            else:
                dims.append(_Dimension(key, False, located))
    seeds = row.fields.get("seeds")
    if seeds is not None:
        if "seed" in row.fields:
            diags.add(seeds.file, seeds.line, "give 'seed' or 'seeds', not both")
            return None
        if not isinstance(seeds.value, list) or not seeds.value:
            diags.add(seeds.file, seeds.line, "seeds must be a non-empty list of integers")
            return None
        dims.append(_Dimension("seed", True, _as_list(seeds)))
    return dims


def _repeat(row: Row, diags: _Diagnostics) -> int | None:
    loc = row.fields.get("repeat")
    if loc is None:
        return 1
    value = loc.value
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_REPEAT:
        diags.add(loc.file, loc.line, f"repeat must be an integer from 1 to {MAX_REPEAT}, got {short(value)}")
        return None
    return value


def _resolve_references(loc: Located, manifest: Manifest, diags: _Diagnostics) -> list[str] | None:
    specs = loc.value if isinstance(loc.value, list) else [loc.value]
    urls: list[str] = []
    ok = True
    for spec in specs:
        if isinstance(spec, list):
            nested = _resolve_references(Located(spec, loc.file, loc.line), manifest, diags)
            if nested is None:
                ok = False
            else:
                urls.extend(nested)
            continue
        if not isinstance(spec, str) or not spec.strip():
            diags.add(loc.file, loc.line, f"a reference must be a set name or an image URL, got {short(spec)}")
            ok = False
        elif spec in manifest.reference_sets:
            urls.extend(manifest.reference_sets[spec].value)
        elif "://" in spec:
            urls.append(spec)  # checked with the parameter's rule below
        else:
            diags.add(loc.file, loc.line,
                      f"unknown reference set {short(spec)}{suggest(spec, list(manifest.reference_sets))}")
            ok = False
    if not ok:
        return None
    return list(dict.fromkeys(urls))


def _expand(manifest: Manifest, diags: _Diagnostics, rate_overrides: dict[str, float] | None
            ) -> Iterator[JobSpec]:
    model = manifest.model
    base: dict[str, Located] = {name: Located(value, manifest.display, 0)
                                for name, value in model.defaults().items()}
    base.update(manifest.defaults)
    total = 0
    for row in manifest.rows:
        dims = _row_dimensions(row, model, diags)
        repeat = _repeat(row, diags)
        if dims is None or repeat is None:
            continue
        fields = dict(base)
        fields.update({k: v for k, v in row.fields.items() if model.param(k) is not None})
        for required in ("prompt", "references"):
            if required not in fields:
                diags.add(row.file, row.line, f"this row has no {required}")
        if "prompt" not in fields or "references" not in fields:
            continue
        count = repeat
        for dim in dims:
            count *= len(dim.values)
        total += count
        if total > MAX_JOBS:
            diags.add(row.file, row.line, f"the manifest expands to more than {MAX_JOBS} jobs; split it")
            return
        label = row_label(row)
        combos = itertools.product(*[dim.values for dim in dims]) if dims else [()]
        for combo in combos:
            params_loc = dict(fields)
            variables = {k: v.value for k, v in row.variables.items()}
            for dim, loc in zip(dims, combo):
                if dim.is_param:
                    params_loc[dim.name] = loc
                else:
                    variables[dim.name] = loc.value
            job_params = _finalise(params_loc, variables, manifest, diags)
            if job_params is None:
                continue
            for take in range(1, repeat + 1):
                params = dict(job_params)
                seed_loc = params_loc.get("seed")
                if seed_loc is not None and seed_loc.value == "auto":
                    without = model.to_wire({k: v for k, v in params.items() if k != "seed"})
                    params["seed"] = auto_seed(model, without, take)
                wire = model.to_wire(params)
                yield JobSpec(
                    key=job_key(model, wire, take), batch=manifest.batch, row=row.index, take=take,
                    origin=row.origin, label=label, params=params,
                    estimate=model.estimate(params, rate_overrides),
                    estimate_is_guess=model.is_guess(params, rate_overrides),
                )


def _finalise(params_loc: dict[str, Located], variables: dict[str, Any], manifest: Manifest,
              diags: _Diagnostics) -> dict[str, Any] | None:
    """Templating, reference resolution and each parameter's rule; None if anything is wrong."""
    model = manifest.model
    out: dict[str, Any] = {}
    ok = True
    for p in model.params:
        loc = params_loc.get(p.name)
        if loc is None:
            continue
        value = loc.value
        if p.name in ("prompt", "negative_prompt") and isinstance(value, str):
            value, missing = render(value, variables)
            for name in missing:
                diags.add(loc.file, loc.line, f"undefined template variable {{{name}}}"
                          f"{suggest(name, list(variables))}")
                ok = False
        elif p.name == "references":
            value = _resolve_references(loc, manifest, diags)
            if value is None:
                ok = False
                continue
        elif p.name == "seed" and value == "auto":
            continue  # derived per take from the final request
        elif p.kind == "integer" and isinstance(value, float) and value.is_integer():
            value = int(value)
        problem = p.check(value)
        if problem:
            where = loc.line or 1
            diags.add(loc.file, where, problem)
            ok = False
            continue
        out[p.name] = value
    if ok and "seed" in params_loc and params_loc["seed"].value == "auto":
        out["seed"] = "auto"
    return out if ok else None


def check(manifest: Manifest, rate_overrides: dict[str, float] | None = None) -> PlanSummary:
    """Expand every job once, raising ManifestError with every problem; return the plan's figures."""
    diags = _Diagnostics()
    for d in manifest.problems:
        diags.add(d.file, d.line, d.message)
    summary = PlanSummary(batch=manifest.batch, model=manifest.model.api_id)
    rows: dict[int, RowSummary] = {}
    seen: set[str] = set()
    for job in _expand(manifest, diags, rate_overrides):
        if job.key in seen:
            summary.duplicates += 1
            continue
        seen.add(job.key)
        row = rows.get(job.row)
        if row is None:
            row = rows[job.row] = RowSummary(job.origin, job.label)
        row.jobs += 1
        row.credits += job.estimate
        summary.jobs += 1
        summary.credits += job.estimate
        summary.credits_are_guess |= job.estimate_is_guess
        summary.seconds_of_video += int(job.params.get("duration", 0))
        res = str(job.params.get("resolution"))
        summary.by_resolution[res] = summary.by_resolution.get(res, 0) + 1
    diags.raise_if_any()
    summary.rows = [rows[i] for i in sorted(rows)]
    return summary


def iter_jobs(manifest: Manifest, rate_overrides: dict[str, float] | None = None) -> Iterator[JobSpec]:
    """Every distinct job of a manifest that `check` accepted, in manifest order."""
    if manifest.problems:
        raise ManifestError(list(manifest.problems))
    diags = _Diagnostics()
    seen: set[str] = set()
    for job in _expand(manifest, diags, rate_overrides):
        if job.key not in seen:
            seen.add(job.key)
            yield job
    if diags.items:  # check() should have been called first
        raise ManifestError(list(diags.items))


def expand(manifest: Manifest, rate_overrides: dict[str, float] | None = None) -> list[JobSpec]:
    """Check a manifest and return all its jobs (for small batches and tests)."""
    check(manifest, rate_overrides)
    return list(iter_jobs(manifest, rate_overrides))


__all__ = ["Diagnostic", "JobSpec", "PlanSummary", "RowSummary", "check", "expand", "iter_jobs", "job_key"]
