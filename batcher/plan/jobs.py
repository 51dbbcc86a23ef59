"""Expanding a manifest into jobs: pure functions, no I/O beyond what `manifest` already read.

A job's key (`keys`) is a hash of its canonical request (model + final wire parameters) and its
take number, so keys survive reordering rows and change only for the rows that are edited.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from ..errors import Diagnostic, ManifestError
from ..manifest import META_FIELD, Diagnostics, Located, Manifest, Row, Template, compile_template
from ..models import ModelSpec
from ..money import ZERO, estimate_hundredths, from_hundredths
from .compiled import FastRow, fast_row
from .expansion import (
    AUTO,
    TEMPLATED,
    RowPlan,
    check_unusable,
    check_value,
    first_uses,
    outcomes_per_value,
    param_sources,
    plan_rows,
    render_checked,
    row_label,
)
from .keys import auto_seed, job_key, key_text, row_data, row_keys

# The default for `max_jobs`: the most jobs a manifest may expand to, counted row by row before
# any job is built (and before identical requests are merged), so a huge manifest is refused at
# once instead of after minutes of expansion. The CLI's --max-jobs changes it.
MAX_JOBS = 1_000_000


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
    model: str = ""  # the API id of the model it renders with (its row's, else the manifest's)
    data: str = ""  # keys.row_data: its template variables and its row's `meta:`, for exports

    def wire(self, model: ModelSpec) -> dict[str, Any]:
        return model.to_wire(self.params)



@dataclass
class RowSummary:
    origin: str
    label: str
    jobs: int = 0
    hundredths: int = 0  # the row's estimates, summed exactly

    @property
    def credits(self) -> Decimal:
        return from_hundredths(self.hundredths) or ZERO


@dataclass
class PlanSummary:
    """What a manifest would cost, computed without sending or writing anything."""

    batch: str
    model: str
    jobs: int = 0
    hundredths: int = 0  # the jobs' estimates, summed exactly (never a running float)
    credits_are_guess: bool = False
    duplicates: int = 0
    seconds_of_video: int = 0
    rows: list[RowSummary] = field(default_factory=list)
    by_resolution: dict[str, int] = field(default_factory=dict)
    by_model: dict[str, int] = field(default_factory=dict)  # jobs per model (a batch may mix them)
    local_images: int = 0  # distinct local reference images the jobs use (by content)
    local_bytes: int = 0  # their size together: what uploading them would send
    # With check(keep=True): each usable row as it was compiled (its keys kept), or None for a row
    # built job by job. Staging fills the ledger from them (`plan.staging`) instead of expanding again.
    compiled: list[tuple[RowPlan, FastRow | None]] | None = field(default=None, repr=False, compare=False)

    @property
    def credits(self) -> Decimal:
        """What the jobs are estimated to cost, exactly."""
        return from_hundredths(self.hundredths) or ZERO

    def to_json(self) -> dict[str, Any]:
        local = {"local_images": {"count": self.local_images, "bytes": self.local_bytes}} if self.local_images else {}
        return {
            "batch": self.batch, "model": self.model, "jobs": self.jobs,
            "credits": round(self.credits, 2), "credits_are_estimate": True,
            "credits_include_guessed_rates": self.credits_are_guess,
            "duplicates_merged": self.duplicates, "seconds_of_video": self.seconds_of_video,
            "by_resolution": self.by_resolution,
            "rows": [{"origin": r.origin, "label": r.label, "jobs": r.jobs, "credits": round(r.credits, 2)}
                     for r in self.rows],
            **local,
            # A batch that mixes models: its jobs per model (one model is named above).
            **({"by_model": self.by_model} if len(self.by_model) > 1 else {}),
        }


def _expand(manifest: Manifest, diags: Diagnostics, rate_overrides: dict[str, float] | None,
            max_jobs: int = MAX_JOBS) -> Iterator[JobSpec]:
    plans = plan_rows(manifest, diags, max_jobs)
    if plans is None:
        return
    wires: dict[str, dict[str, str]] = {}
    costs: dict[tuple[Any, ...], tuple[float, bool]] = {}
    for plan in plans:
        if plan.usable:
            yield from expand_row(plan, manifest, diags, rate_overrides, wire_names_of(plan.model, wires), costs)
        else:
            check_unusable(plan, manifest, diags)


def wire_names_of(model: ModelSpec, cache: dict[str, dict[str, str]]) -> dict[str, str]:
    """A model's manifest names -> wire names (model.to_wire without a search per key)."""
    found = cache.get(model.api_id)
    if found is None:
        found = cache[model.api_id] = {p.name: p.wire for p in model.params}
    return found


def expand_row(plan: RowPlan, manifest: Manifest, diags: Diagnostics, rate_overrides: dict[str, float] | None,
               wire_names: dict[str, str], costs: dict[tuple[Any, ...], tuple[float, bool]], build: bool = True
               ) -> Iterator[JobSpec]:
    """A row's jobs, one by one: templating, reference resolution and each parameter's rule per
    job; with `build` false, only the problems are reported (no job is built).

    A value every job of the row shares is checked once for the row, not once per job (a
    reference list can hold a million values through aliases; a template is parsed once)."""
    model = plan.model
    row, dims = plan.row, plan.dims
    steps = param_sources(plan, model)
    variable_axes = [(i, dim.name) for i, dim in enumerate(dims) if not dim.is_param]
    row_variables = {k: v.value for k, v in row.variables.items()}
    checked: dict[int, tuple[bool, Any]] = {}  # id(Located) -> outcome; the row keeps them alive
    templates: dict[int, Template] = {}
    label = row_label(row)
    meta = row_meta(manifest, row)
    combos: Iterable[tuple[Located, ...]] = itertools.product(*[dim.values for dim in dims])
    if not build and outcomes_per_value(plan, model):
        combos = first_uses(dims)  # every problem, in the same order, from far fewer jobs
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
            if p.name in TEMPLATED and isinstance(loc.value, str):
                template = templates.get(id(loc))
                if template is None:
                    template = templates[id(loc)] = compile_template(loc.value)
                value = render_checked(p, loc, template, variables, plan, diags)
                good = value is not None
            else:
                outcome = checked.get(id(loc))
                if outcome is None:
                    outcome = checked[id(loc)] = check_value(p, loc, manifest, diags)
                good, value = outcome
            if not good:
                ok = False
            elif value is AUTO:
                auto = True
            else:
                # Checked values are shared by the row's jobs; each job gets its own list.
                params[p.name] = list(value) if isinstance(value, list) else value
        if ok and build:
            yield from _takes(plan, manifest, params, auto, rate_overrides, wire_names, costs, label,
                              row_data(variables, meta))


def row_meta(manifest: Manifest, row: Row) -> dict[str, Any]:
    """A row's `meta:` over the defaults' (a row's names win)."""
    found = [f.value for f in (manifest.defaults.get(META_FIELD), row.fields.get(META_FIELD)) if f is not None]
    return {k: v for meta in found for k, v in meta.items()}


def _takes(plan: RowPlan, manifest: Manifest, params: dict[str, Any], auto: bool,
           rate_overrides: dict[str, float] | None, wire_names: dict[str, str],
           costs: dict[tuple[Any, ...], tuple[float, bool]], label: str, data: str) -> Iterator[JobSpec]:
    """The jobs of one combination of a row's values: one per take."""
    model, row = plan.model, plan.row
    # An estimate depends only on the model, its rate and seconds parameters, never on the seed.
    cost_key = (model.api_id, params.get(model.rate_param), params.get(model.seconds_param))
    cost = costs.get(cost_key)
    if cost is None:
        cost = costs[cost_key] = (model.estimate(params, rate_overrides), model.is_guess(params, rate_overrides))
    wire = {wire_names[k]: v for k, v in params.items()}  # without the seed when it is derived
    for take in range(1, plan.repeat + 1):
        job_params = dict(params)
        job_wire = wire
        if auto:
            job_params["seed"] = auto_seed(model, wire, take)
            job_wire = dict(wire)
            job_wire[wire_names["seed"]] = job_params["seed"]
        yield JobSpec(
            key=job_key(model, job_wire, take), batch=manifest.batch, row=row.index, take=take,
            origin=row.origin, label=label, params=job_params, estimate=cost[0], estimate_is_guess=cost[1],
            model=model.api_id, data=data,
        )


def _count_row(fast: FastRow, plan: RowPlan, seen: set[int], summary: PlanSummary,
               rows: dict[int, RowSummary]) -> None:
    """Add a compiled row's distinct jobs to the plan's figures, without building any job (and,
    when the plan keeps its compiled rows, keep the row's keys: None for a duplicate)."""
    kept: list[int | None] | None = [] if summary.compiled is not None else None
    classes: dict[Any, list[Any]] = {}  # estimate class -> [estimate, is_guess, seconds, resolution, jobs]
    pick = operator.itemgetter(*fast.class_axes) if fast.class_axes else None
    info = fast.class_info
    jobs = duplicates = 0
    row_hundredths, total = 0, summary.hundredths
    for key, combo in row_keys(fast.text):
        if key in seen:
            duplicates += 1
            if kept is not None:
                kept.append(None)
            continue
        seen.add(key)
        if kept is not None:
            kept.append(key)
        texts = pick(combo) if pick is not None else None
        entry = classes.get(texts)
        if entry is None:
            entry = classes[texts] = [*info(texts), 0]
            entry.append(estimate_hundredths(entry[0]))
        entry[4] += 1
        jobs += 1
        row_hundredths += entry[5]
        total += entry[5]
    summary.duplicates += duplicates
    summary.hundredths = total
    fast.keys = kept
    if not jobs:
        return
    rows[plan.row.index] = RowSummary(plan.row.origin, row_label(plan.row), jobs, row_hundredths)
    summary.jobs += jobs
    summary.by_model[plan.model.api_id] = summary.by_model.get(plan.model.api_id, 0) + jobs
    for _, guess, seconds, resolution, count, _ in classes.values():
        summary.credits_are_guess |= guess
        summary.seconds_of_video += seconds * count
        summary.by_resolution[resolution] = summary.by_resolution.get(resolution, 0) + count


class _Recorder(Diagnostics):
    """Every diagnostic in order, none dropped: to replay into the real ones."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, int, str]] = []

    def add(self, file: str, line: int, message: str) -> None:
        self.calls.append((file, line, message))


def check(manifest: Manifest, rate_overrides: dict[str, float] | None = None, *,
          max_jobs: int = MAX_JOBS, keep: bool = False) -> PlanSummary:
    """Check every job, raising ManifestError with every problem; return the plan's figures
    (with `keep`, and the rows as compiled, for staging: see PlanSummary.compiled).

    A manifest that expands to more than `max_jobs` jobs is refused before any job is built. A
    row whose every job is valid is only counted, its keys computed without building its jobs;
    the others go job by job, which reports each problem."""
    diags = Diagnostics()
    for d in manifest.problems:
        diags.add(d.file, d.line, d.message)
    summary = PlanSummary(batch=manifest.batch, model=manifest.model.api_id, compiled=[] if keep else None)
    rows: dict[int, RowSummary] = {}
    seen: set[int] = set()  # keys as ints: a third of the memory of their text
    wires: dict[str, dict[str, str]] = {}
    costs: dict[tuple[Any, ...], tuple[float, bool]] = {}
    for plan in plan_rows(manifest, diags, max_jobs) or []:
        if not plan.usable:
            check_unusable(plan, manifest, diags)
            continue
        fast = fast_row(plan, manifest, rate_overrides)
        if summary.compiled is not None:
            summary.compiled.append((plan, fast))
        if fast is not None:
            if not diags.items:  # once anything is wrong, only problems matter
                _count_row(fast, plan, seen, summary, rows)
            continue
        build = not diags.items
        wire_names = wire_names_of(plan.model, wires)
        if build and outcomes_per_value(plan, plan.model):
            # A few jobs tell whether the row has a problem; only a valid row needs every job.
            recorder = _Recorder()
            for _ in expand_row(plan, manifest, recorder, rate_overrides, wire_names, costs, build=False):
                pass
            for call in recorder.calls:
                diags.add(*call)
            build = not recorder.calls
        for job in expand_row(plan, manifest, diags, rate_overrides, wire_names, costs, build=build):
            key = int(job.key, 16)
            if key in seen:
                summary.duplicates += 1
                continue
            seen.add(key)
            row = rows.get(job.row)
            if row is None:
                row = rows[job.row] = RowSummary(job.origin, job.label)
            row.jobs += 1
            summary.jobs += 1
            summary.hundredths += (cost := estimate_hundredths(job.estimate))
            row.hundredths += cost
            summary.credits_are_guess |= job.estimate_is_guess
            summary.seconds_of_video += int(job.params.get(plan.model.seconds_param, 0))
            res = str(job.params.get(plan.model.rate_param))
            summary.by_resolution[res] = summary.by_resolution.get(res, 0) + 1
            summary.by_model[job.model] = summary.by_model.get(job.model, 0) + 1
    diags.raise_if_any()
    summary.rows = [rows[i] for i in sorted(rows)]
    summary.local_images = len(manifest.local_files)
    summary.local_bytes = sum(f.size for f in manifest.local_files.values())
    return summary


def iter_jobs(manifest: Manifest, rate_overrides: dict[str, float] | None = None, *,
              max_jobs: int = MAX_JOBS) -> Iterator[JobSpec]:
    """Every distinct job of a manifest that `check` accepted, in manifest order."""
    if manifest.problems:
        raise ManifestError(list(manifest.problems))
    diags = Diagnostics()
    seen: set[int] = set()
    for job in _expand(manifest, diags, rate_overrides, max_jobs):
        key = int(job.key, 16)
        if key not in seen:
            seen.add(key)
            yield job
    if diags.items:  # check() should have been called first
        raise ManifestError(list(diags.items))


def expand(manifest: Manifest, rate_overrides: dict[str, float] | None = None, *,
           max_jobs: int = MAX_JOBS) -> list[JobSpec]:
    """Check a manifest and return all its jobs (for small batches and tests)."""
    check(manifest, rate_overrides, max_jobs=max_jobs)
    return list(iter_jobs(manifest, rate_overrides, max_jobs=max_jobs))


def row_key_texts(manifest: Manifest, max_jobs: int = MAX_JOBS) -> list[list[str] | None]:
    """Each row's job keys (duplicates kept) as `check` computes them, or None for a row it
    goes through job by job: for tests that hold both paths to the same keys."""
    diags = Diagnostics()
    out: list[list[str] | None] = []
    for plan in plan_rows(manifest, diags, max_jobs) or []:
        fast = fast_row(plan, manifest, None) if plan.usable else None
        out.append(None if fast is None else [key_text(key) for key, _ in row_keys(fast.text)])
    return out


__all__ = ["MAX_JOBS", "Diagnostic", "JobSpec", "PlanSummary", "RowSummary", "check", "expand", "iter_jobs", "job_key"]
