"""A manifest's jobs as the ledger stores them, for staging: one pass over the manifest, a compiled
row's jobs filled in from its text (key and stored parameters one `str.format` each, no JobSpec,
no dict, no JSON encoder per job); the other rows' jobs built one by one, as `iter_jobs` does.
The rows are exactly those `row_of` makes of each job of `iter_jobs` (a test holds them equal).
"""

from __future__ import annotations

import functools
import itertools
import operator
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

from ..errors import ManifestError
from ..manifest import Diagnostics, Manifest
from ..models import ModelSpec
from ..money import estimate_hundredths
from .compiled import FastRow, fast_row
from .expansion import RowPlan, check_unusable, plan_rows, row_label
from .jobs import MAX_JOBS, JobSpec, expand_row, row_meta, wire_names_of
from .keys import (
    auto_seed,
    derived_seed,
    job_key,
    key_text,
    row_data_format,
    row_data_value,
    row_keys,
    stored_params,
)


class JobRow(NamedTuple):
    """One job as the ledger adds it: its columns, in the order the ledger's staging binds them
    (the ledger appends its own: batch, order, generations, times)."""

    key: str
    row: int
    take: int
    origin: str
    label: str
    params: str  # keys.stored_params: manifest names, every effective value
    estimate: int  # whole hundredths of a credit, rounded up (money.estimate_hundredths)
    model: str  # the API id of the model it renders with ("": the batch's)
    data: str = ""  # keys.row_data: its template variables and its row's `meta:` ("": none)


def row_of(job: JobSpec, model: str = "") -> JobRow:
    """A job built one by one, as the ledger stores it (`model`: the manifest's, for a job that
    names none)."""
    return JobRow(job.key, job.row, job.take, job.origin, job.label, stored_params(job.params),
                  _hundredths(job.estimate), job.model or model, job.data)


# A batch's jobs share a few estimates: each made exact once, not once a job.
_hundredths = functools.lru_cache(maxsize=1024)(estimate_hundredths)


def new_take(model: ModelSpec, params: dict[str, Any], take: int, new_seed: bool, taken: Callable[[str], bool]
             ) -> tuple[str, int, str]:
    """A fresh take of a job's request (`batcher reroll`): the first take after `take` whose key
    `taken` does not know, with a seed derived for that take when `new_seed` (as `seed: auto`
    derives one). Returns (key, take, stored parameters)."""
    while True:
        take += 1
        job_params = dict(params)
        if new_seed:
            job_params["seed"] = auto_seed(model, model.to_wire({k: v for k, v in params.items() if k != "seed"}),
                                           take)
        key = job_key(model, model.to_wire(job_params), take)
        if not taken(key):
            return key, take, stored_params(job_params)


def job_rows(manifest: Manifest, rate_overrides: dict[str, float] | None = None, *, max_jobs: int = MAX_JOBS,
             compiled: Iterable[tuple[RowPlan, FastRow | None]] | None = None) -> Iterator[JobRow]:
    """Every distinct job of a manifest that `check` accepted, in manifest order, as ledger rows;
    from the rows `check(keep=True)` compiled, when given (one expansion of the manifest, not two)."""
    if manifest.problems:
        raise ManifestError(list(manifest.problems))
    diags = Diagnostics()
    seen: set[int] = set()  # keys as ints, as `iter_jobs` keeps them
    wires: dict[str, dict[str, str]] = {}
    costs: dict[tuple[Any, ...], tuple[float, bool]] = {}
    # Each usable row: compiled when every job of it is known valid, else built job by job
    # (duplicates kept); the problems of rows that cannot expand go to `diags`.
    for plan, fast in _compiled_rows(manifest, diags, rate_overrides, max_jobs) if compiled is None else compiled:
        if fast is not None:
            yield from _compiled(fast, plan, seen, row_meta(manifest, plan.row))
            continue
        for job in expand_row(plan, manifest, diags, rate_overrides, wire_names_of(plan.model, wires), costs):
            key = int(job.key, 16)
            if key not in seen:
                seen.add(key)
                yield row_of(job, plan.model.api_id)
    if diags.items:  # check() should have been called first
        raise ManifestError(list(diags.items))


def _compiled_rows(manifest: Manifest, diags: Diagnostics, rate_overrides: dict[str, float] | None,
                   max_jobs: int) -> Iterator[tuple[RowPlan, FastRow | None]]:
    for plan in plan_rows(manifest, diags, max_jobs) or []:
        if plan.usable:
            yield plan, fast_row(plan, manifest, rate_overrides)
        else:
            check_unusable(plan, manifest, diags)


def _combos(fast: FastRow) -> Iterator[tuple[tuple[str, ...], tuple[str, ...]]]:
    """Each job's axis texts, in expansion order: (as its key hashes them, as its parameters store them)."""
    axes, stored_axes = fast.text.axes, fast.text.stored_axes
    if stored_axes == axes:  # scalars only: one text serves both
        for combo in itertools.product(*axes):
            yield combo, combo
        return
    for pairs in itertools.product(*[list(zip(a, b, strict=True)) for a, b in zip(axes, stored_axes, strict=True)]):
        yield tuple(p[0] for p in pairs), tuple(p[1] for p in pairs)


def _row_data(fast: FastRow, plan: RowPlan, meta: dict[str, Any]) -> Callable[[tuple[str, ...]], str]:
    """Each job's `row_data` from its axis texts: the row's compiled once (`row_data_format`),
    filled once per distinct value of its variable axes (its other axes are parameters: they
    fill no variable)."""
    variables = {k: v.value for k, v in plan.row.variables.items()}
    varied = [(i, dim.name, _first_values(fast.text.axes[i], [loc.value for loc in dim.values]))
              for i, dim in enumerate(plan.dims) if not dim.is_param]
    text = row_data_format(variables, [name for _, name, _ in varied], meta)
    if not varied:
        whole = text.format()
        return lambda combo: whole
    if len(varied) == 1:  # (most rows) every job's text made at once, found by one lookup
        at, filled = varied[0][0], {t: text.format(row_data_value(value)) for t, value in varied[0][2].items()}
        return lambda combo: filled[combo[at]]
    written = [{t: row_data_value(value) for t, value in values.items()} for _, _, values in varied]
    pick = operator.itemgetter(*(i for i, _, _ in varied))
    made: dict[tuple[str, ...], str] = {}

    def data(combo: tuple[str, ...]) -> str:
        texts = pick(combo)
        found = made.get(texts)
        if found is None:
            found = made[texts] = text.format(*[w[t] for w, t in zip(written, texts, strict=True)])
        return found
    return data


def _first_values(texts: list[str], values: list[Any]) -> dict[str, Any]:
    """Each text of a variable's axis -> the first value written so (1 and "1" fill a prompt
    alike: its job is the first's, as built one by one, the later a duplicate)."""
    found: dict[str, Any] = {}
    for text, value in zip(texts, values, strict=True):
        found.setdefault(text, value)
    return found


_CHUNK = 4096  # jobs of a compiled row made at a time


class _Estimates(dict[Any, int]):
    """A compiled row's estimate per job class, in hundredths, made once a class: indexed by the
    axis texts of the row's class axes (None: a row of one class)."""

    def __init__(self, fast: FastRow) -> None:
        super().__init__()
        self.fast = fast

    def __missing__(self, texts: Any) -> int:
        found = self[texts] = estimate_hundredths(self.fast.class_info(texts)[0])
        return found


def _compiled(fast: FastRow, plan: RowPlan, seen: set[int], meta: dict[str, Any]) -> Iterator[JobRow]:
    """A compiled row's distinct jobs (those not in `seen`, which they join), takes innermost;
    their keys as `check` kept them, else hashed now."""
    data_of = _row_data(fast, plan, meta)
    keys = iter(fast.keys) if fast.keys is not None else (key for key, _ in row_keys(fast.text))
    seedless, stored = fast.text.seedless, fast.text.stored
    row, origin, label, model = plan.row.index, plan.row.origin, row_label(plan.row), plan.model.api_id
    takes = range(1, fast.text.repeat + 1)
    estimates = _Estimates(fast)
    pick = operator.itemgetter(*fast.class_axes) if fast.class_axes else (lambda combo: None)
    new_row = tuple.__new__  # a JobRow without the call of its class (a third of the time per job)
    if seedless is None:
        # Every take of a request shares its parameters: each request's columns made once, its
        # jobs a chunk at a time in one comprehension (no statement run per job in Python).
        if fast.class_axes:
            requests = ((stored.format(*named), estimates[pick(combo)], data_of(combo))
                        for combo, named in _combos(fast))
        else:
            one = estimates[None]
            requests = ((stored.format(*named), one, data_of(combo)) for combo, named in _combos(fast))
        each = (((r, take) for r in requests for take in takes) if len(takes) > 1
                else zip(requests, itertools.repeat(1)))  # (one take: no inner loop a request)
        jobs = zip(keys, each, strict=False)  # (as many keys as jobs: `check` kept or hashes one a job)
        while part := list(itertools.islice(jobs, _CHUNK)):
            yield from [new_row(JobRow, (key_text(key), row, take, origin, label, params, estimate, model, data))
                        for key, ((params, estimate, data), take) in part
                        # (None: a duplicate, as `check` found; `seen.add` is None: a new key joins)
                        if key is not None and key not in seen and not seen.add(key)]  # type: ignore[func-returns-value]
        return
    for combo, named in _combos(fast):
        estimate, without, data = estimates[pick(combo)], seedless.format(*combo), data_of(combo)
        for take in takes:
            key = next(keys)
            if key is None or key in seen:  # (None: a duplicate, as `check` found)
                continue
            seen.add(key)
            params = stored.format(*named, derived_seed(without, take))
            yield new_row(JobRow, (key_text(key), row, take, origin, label, params, estimate, model, data))
