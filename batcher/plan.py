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
from .manifest import (
    MAX_REPEAT,
    LineDict,
    LineList,
    Located,
    Manifest,
    Row,
    _Diagnostics,
    suggest,
)
from .models import MAX_INT32, ModelSpec, Param, short, type_name
from .template import Template, compile_template, is_template_value, variables_in

# The default for `max_jobs`: the most jobs a manifest may expand to, counted row by row before
# any job is built (and before identical requests are merged), so a huge manifest is refused at
# once instead of after minutes of expansion. The CLI's --max-jobs changes it.
MAX_JOBS = 1_000_000
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


# What json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False) builds on each call,
# built once: this runs for every job, and keys must never change.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_request(model: ModelSpec, wire: dict[str, Any]) -> str:
    """The canonical JSON text of a request: the thing a job key hashes."""
    return _CANONICAL.encode({"model": model.api_id, "params": wire})


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


def _kind(value: Any) -> str:
    """type_name, for LineDict and LineList too."""
    return "a mapping" if isinstance(value, dict) else "a list" if isinstance(value, list) else type_name(value)


def _row_dimensions(row: Row, model: ModelSpec, diags: _Diagnostics) -> list[_Dimension] | None:
    dims: list[_Dimension] = []
    invalid = False
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
                # str() of a list or mapping is not a prompt, and through aliases it can be huge.
                bad = [loc for loc in located if not is_template_value(loc.value)]
                if bad:
                    # The first one, and how many more: a list can hold 500,000 of them.
                    more = f" ({len(bad) - 1:,} more in this list)" if len(bad) > 1 else ""
                    diags.add(bad[0].file, bad[0].line, f"vary {short(key)}: a value for {{{key}}} must be text "
                              f"or a number, not {_kind(bad[0].value)} {short(bad[0].value)}{more}")
                    invalid = True
                    continue
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
    return None if invalid else dims


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


@dataclass
class _RowPlan:
    """A row ready to expand: its axes, takes and fixed fields, and how many jobs it makes."""

    row: Row
    dims: list[_Dimension]
    repeat: int
    fields: dict[str, Located]
    jobs: int


def _count_text(n: int) -> str:
    return f"{n:,}" if n < 10**15 else f"about {n:.1e}"


def _plan_rows(manifest: Manifest, diags: _Diagnostics, max_jobs: int) -> list[_RowPlan] | None:
    """Every row's shape and job count, before any job is built; None (with a diagnostic at
    the row that crosses it) when the manifest expands to more than `max_jobs`."""
    model = manifest.model
    base: dict[str, Located] = {name: Located(value, manifest.display, 0)
                                for name, value in model.defaults().items()}
    base.update(manifest.defaults)
    plans: list[_RowPlan] = []
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
        if total > max_jobs:
            diags.add(row.file, row.line,
                      f"the manifest expands to more than {max_jobs:,} jobs: with this row's {_count_text(count)} "
                      f"it reaches {_count_text(total)} (counted before identical requests merge); split it "
                      f"into smaller manifests or raise the limit with --max-jobs")
            return None
        plans.append(_RowPlan(row, dims, repeat, fields, count))
    return plans


def _expand(manifest: Manifest, diags: _Diagnostics, rate_overrides: dict[str, float] | None,
            max_jobs: int = MAX_JOBS) -> Iterator[JobSpec]:
    plans = _plan_rows(manifest, diags, max_jobs)
    if plans is None:
        return
    wire_names = {p.name: p.wire for p in manifest.model.params}  # model.to_wire without a search per key
    costs: dict[tuple[Any, Any], tuple[float, bool]] = {}
    for plan in plans:
        yield from _expand_row(plan, manifest, diags, rate_overrides, wire_names, costs)


_TEMPLATED = ("prompt", "negative_prompt")
_AUTO = object()  # a checked `seed: auto`, derived per take


def _expand_row(plan: _RowPlan, manifest: Manifest, diags: _Diagnostics, rate_overrides: dict[str, float] | None,
                wire_names: dict[str, str], costs: dict[tuple[Any, Any], tuple[float, bool]]) -> Iterator[JobSpec]:
    """A row's jobs: templating, reference resolution and each parameter's rule per job.

    A value every job of the row shares is checked once for the row, not once per job (a
    reference list can hold a million values through aliases; a template is parsed once)."""
    model = manifest.model
    row, dims, repeat = plan.row, plan.dims, plan.repeat
    # Where each parameter comes from: an axis of the expansion (the last one naming it wins)
    # or the row's fields and defaults.
    axis_of = {dim.name: i for i, dim in enumerate(dims) if dim.is_param}
    steps: list[tuple[Param, int | None, Located | None]] = [
        (p, axis_of.get(p.name), plan.fields.get(p.name)) for p in model.params
        if p.name in axis_of or p.name in plan.fields]
    variable_axes = [(i, dim.name) for i, dim in enumerate(dims) if not dim.is_param]
    row_variables = {k: v.value for k, v in row.variables.items()}
    checked: dict[int, tuple[bool, Any]] = {}  # id(Located) -> outcome; the row keeps them alive
    templates: dict[int, Template] = {}
    label = row_label(row)
    combos = itertools.product(*[dim.values for dim in dims]) if dims else [()]
    for combo in combos:
        variables = row_variables
        if variable_axes:
            variables = dict(row_variables)
            for i, name in variable_axes:
                variables[name] = combo[i].value
        params: dict[str, Any] = {}
        ok = True
        auto = False
        for p, axis, fixed in steps:
            loc = combo[axis] if axis is not None else fixed
            assert loc is not None
            if p.name in _TEMPLATED and isinstance(loc.value, str):
                template = templates.get(id(loc))
                if template is None:
                    template = templates[id(loc)] = compile_template(loc.value)
                value = _render_checked(p, loc, template, variables, diags)
                good = value is not None
            else:
                outcome = checked.get(id(loc))
                if outcome is None:
                    outcome = checked[id(loc)] = _check_value(p, loc, manifest, diags)
                good, value = outcome
            if not good:
                ok = False
            elif value is _AUTO:
                auto = True
            else:
                # Checked values are shared by the row's jobs; each job gets its own list.
                params[p.name] = list(value) if isinstance(value, list) else value
        if not ok:
            continue
        # An estimate depends only on the rate and seconds parameters, never on the seed.
        cost_key = (params.get(model.rate_param), params.get(model.seconds_param))
        cost = costs.get(cost_key)
        if cost is None:
            cost = costs[cost_key] = (model.estimate(params, rate_overrides), model.is_guess(params, rate_overrides))
        wire = {wire_names[k]: v for k, v in params.items()}  # without the seed when it is derived
        for take in range(1, repeat + 1):
            job_params = dict(params)
            job_wire = wire
            if auto:
                job_params["seed"] = auto_seed(model, wire, take)
                job_wire = dict(wire)
                job_wire[wire_names["seed"]] = job_params["seed"]
            yield JobSpec(
                key=job_key(model, job_wire, take), batch=manifest.batch, row=row.index, take=take,
                origin=row.origin, label=label, params=job_params, estimate=cost[0], estimate_is_guess=cost[1],
            )


def _render_checked(p: Param, loc: Located, template: Template, variables: dict[str, Any],
                    diags: _Diagnostics) -> str | None:
    ok = True
    for name in template.missing(variables):
        diags.add(loc.file, loc.line, f"undefined template variable {{{name}}}{suggest(name, list(variables))}")
        ok = False
    # Measured before it is built: a long template times many jobs must not cost a render each.
    length = template.length(variables)
    if p.max_length is not None and length > p.max_length:
        # The same words Param.check uses for a text that is too long.
        diags.add(loc.file, loc.line or 1, f"{p.name} is {length} characters long; the most is {p.max_length}")
        return None
    value = template.render(variables)
    problem = p.check(value)
    if problem:
        diags.add(loc.file, loc.line or 1, problem)
        return None
    return value if ok else None


def _check_value(p: Param, loc: Located, manifest: Manifest, diags: _Diagnostics) -> tuple[bool, Any]:
    """(ok, value) for a parameter that is not a template: references resolved, rule checked."""
    value = loc.value
    if p.name == "references":
        value = _resolve_references(loc, manifest, diags)
        if value is None:
            return False, None
    elif p.name == "seed" and value == "auto":
        return True, _AUTO
    elif p.kind == "integer" and isinstance(value, float) and value.is_integer():
        value = int(value)
    problem = p.check(value)
    if problem:
        diags.add(loc.file, loc.line or 1, problem)
        return False, None
    return True, value


def check(manifest: Manifest, rate_overrides: dict[str, float] | None = None, *,
          max_jobs: int = MAX_JOBS) -> PlanSummary:
    """Expand every job once, raising ManifestError with every problem; return the plan's figures.

    A manifest that expands to more than `max_jobs` jobs is refused before any job is built."""
    diags = _Diagnostics()
    for d in manifest.problems:
        diags.add(d.file, d.line, d.message)
    summary = PlanSummary(batch=manifest.batch, model=manifest.model.api_id)
    rows: dict[int, RowSummary] = {}
    seen: set[str] = set()
    for job in _expand(manifest, diags, rate_overrides, max_jobs):
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


def iter_jobs(manifest: Manifest, rate_overrides: dict[str, float] | None = None, *,
              max_jobs: int = MAX_JOBS) -> Iterator[JobSpec]:
    """Every distinct job of a manifest that `check` accepted, in manifest order."""
    if manifest.problems:
        raise ManifestError(list(manifest.problems))
    diags = _Diagnostics()
    seen: set[str] = set()
    for job in _expand(manifest, diags, rate_overrides, max_jobs):
        if job.key not in seen:
            seen.add(job.key)
            yield job
    if diags.items:  # check() should have been called first
        raise ManifestError(list(diags.items))


def expand(manifest: Manifest, rate_overrides: dict[str, float] | None = None, *,
           max_jobs: int = MAX_JOBS) -> list[JobSpec]:
    """Check a manifest and return all its jobs (for small batches and tests)."""
    check(manifest, rate_overrides, max_jobs=max_jobs)
    return list(iter_jobs(manifest, rate_overrides, max_jobs=max_jobs))


__all__ = ["MAX_JOBS", "Diagnostic", "JobSpec", "PlanSummary", "RowSummary", "check", "expand", "iter_jobs", "job_key"]
