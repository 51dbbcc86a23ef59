"""Rows into what their jobs are made of: each row's axes, takes and checked values.

Every value is checked once, where it is written, and every problem of every row is reported:
a row that cannot expand (no prompt, a broken `vary`) still has its other values checked.
`plan` builds or counts the jobs of the rows planned here.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..manifest import (
    MAX_REPEAT,
    Diagnostics,
    LineDict,
    Located,
    Manifest,
    Row,
    Template,
    as_list,
    compile_template,
    is_template_value,
    nearest,
    scalar_problem,
    sexagesimal_problem,
    suggest,
    variables_in,
)
from ..models import DEFAULT_MODEL, ModelSpec, Param, get_model
from ..references import rule_view
from ..text import short, type_name
from .references import resolve_references

_LABEL_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def row_label(row: Row) -> str:
    name = row.fields.get("name")
    if name is not None and isinstance(name.value, str) and name.value.strip():
        cleaned = _LABEL_UNSAFE.sub("-", name.value.strip()).strip("-.")[:40]
        if cleaned:
            return cleaned
    return f"row{row.index + 1:04d}"


@dataclass
class Dimension:
    """One axis of a row's expansion: a parameter or variable and its located values."""

    name: str
    is_param: bool
    values: list[Located]


def _kind(value: Any) -> str:
    """type_name, for LineDict and LineList too."""
    return "a mapping" if isinstance(value, dict) else "a list" if isinstance(value, list) else type_name(value)


def _vary_value_rule(value: Any) -> str:
    """What a YAML value that cannot fill a {variable} must be instead."""
    scalar = scalar_problem(value)
    if scalar is None:
        return f"text or a number, not {_kind(value)} {short(value)}"
    if isinstance(value, bool):
        return scalar + " (unquoted, YAML reads yes, no, on, off, true and false as true/false: write it in quotes)"
    return scalar


def vary_variables(row: Row, model: ModelSpec) -> list[str]:
    """The row's vary names that are not API parameters: the {variables} it means to fill."""
    vary = row.fields.get("vary")
    if vary is None or not isinstance(vary.value, dict):
        return []
    return [key for key in vary.value if isinstance(key, str) and model.param(key) is None]


def _row_dimensions(row: Row, model: ModelSpec, diags: Diagnostics) -> tuple[list[Dimension], bool]:
    """The row's axes, and whether they are all usable; every problem is reported, not only the first."""
    dims, usable = _vary_dimensions(row, model, diags)
    seeds = row.fields.get("seeds")
    if seeds is not None:
        if "seed" in row.fields:
            diags.add(seeds.file, seeds.line, "give 'seed' or 'seeds', not both")
            usable = False
        elif not isinstance(seeds.value, list) or not seeds.value:
            diags.add(seeds.file, seeds.line, "seeds must be a non-empty list of integers")
            usable = False
        elif model.param("seed") is None:
            diags.add(seeds.file, seeds.line, f"seeds: {model.api_id} takes no seed")
            usable = False
        else:
            dims.append(Dimension("seed", True, as_list(seeds)))
    return dims, usable


def _vary_dimensions(row: Row, model: ModelSpec, diags: Diagnostics) -> tuple[list[Dimension], bool]:
    dims: list[Dimension] = []
    invalid = False
    vary = row.fields.get("vary")
    if vary is not None and (not isinstance(vary.value, dict) or not vary.value):
        diags.add(vary.file, vary.line, "vary must be a mapping of names to lists of values")
        invalid = True
    elif vary is not None:
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
            located = as_list(Located(values, vary.file, value_line))
            if p is not None:
                dims.append(Dimension(p.name, True, located))
            elif not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                diags.add(vary.file, key_line, f"vary {short(key)} is neither an API parameter nor a variable name")
            elif key not in used:
                # A misspelt name: the closest API parameter or {variable} nothing fills yet.
                meant = nearest(key, model.names(), sorted(used - set(raw)))
                hint = f" (did you mean '{meant}'?)" if meant else ""
                if meant is not None and meant not in model.names():
                    diags.add(vary.file, key_line,
                              f"vary {short(key)} is not an API parameter and the prompt has no {{{key}}}{hint}")
                else:
                    diags.add(vary.file, key_line,
                              f"vary {short(key)} is not an API parameter{hint} and the prompt has no {{{key}}}")
            else:
                # str() of a list or mapping is not a prompt, and through aliases it can be huge.
                bad = [loc for loc in located if not is_template_value(loc.value)]
                if bad:
                    # The first one, and how many more: a list can hold 500,000 of them.
                    more = f" ({len(bad) - 1:,} more in this list)" if len(bad) > 1 else ""
                    rule = _vary_value_rule(bad[0].value)
                    diags.add(bad[0].file, bad[0].line,
                              f"vary {short(key)}: a value for {{{key}}} must be {rule}{more}")
                    invalid = True
                    continue
                dims.append(Dimension(key, False, located))
    return dims, not invalid


def _repeat(row: Row, diags: Diagnostics) -> int | None:
    loc = row.fields.get("repeat")
    if loc is None:
        return 1
    value = loc.value
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_REPEAT:
        diags.add(loc.file, loc.line, f"repeat must be an integer from 1 to {MAX_REPEAT}, got {short(value)}")
        return None
    return value


@dataclass
class RowPlan:
    """A row ready to expand: its axes, takes and fixed fields, and how many jobs it makes.

    A row that cannot expand (no prompt, a broken vary) is planned too, `usable` false, so its
    values are still checked: every problem of every row shows in one run."""

    row: Row
    dims: list[Dimension]
    repeat: int
    fields: dict[str, Located]
    jobs: int
    usable: bool = True
    model: ModelSpec = field(default_factory=lambda: _default_model())  # the row's own, else the manifest's
    # The names a misspelt {variable} may have meant: vary names that are not parameters,
    # the row's file columns.
    names: list[str] = field(default_factory=list)


def count_text(n: int) -> str:
    return f"{n:,}" if n < 10**15 else f"about {n:.1e}"


def plan_rows(manifest: Manifest, diags: Diagnostics, max_jobs: int) -> list[RowPlan] | None:
    """Every row's shape and job count, before any job is built; None (with a diagnostic at
    the row that crosses it) when the manifest expands to more than `max_jobs`."""
    bases: dict[str, dict[str, Located]] = {}
    plans: list[RowPlan] = []
    total = 0
    for row in manifest.rows:
        model = manifest.model_of(row)
        base = bases.get(model.api_id)
        if base is None:
            base = bases[model.api_id] = _defaults_for(model, manifest)
        dims, usable = _row_dimensions(row, model, diags)
        repeat = _repeat(row, diags)
        fields = dict(base)
        fields.update({k: v for k, v in row.fields.items() if model.param(k) is not None})
        for required in (p.name for p in model.params if p.required):
            if required not in fields:
                diags.add(row.file, row.line, f"this row has no {required}" + (
                    f" (required by {model.api_id})" if model is not manifest.model else ""))
                usable = False
        names = sorted(set(vary_variables(row, model)) | set(row.variables) | set(row.columns))
        if not usable or repeat is None:
            plans.append(RowPlan(row, dims, repeat or 1, fields, 0, usable=False, names=names, model=model))
            continue
        count = repeat
        for dim in dims:
            count *= len(dim.values)
        total += count
        if total > max_jobs:
            diags.add(row.file, row.line,
                      f"the manifest expands to more than {max_jobs:,} jobs: with this row's {count_text(count)} "
                      f"it reaches {count_text(total)} (counted before identical requests merge); split it "
                      f"into smaller manifests or raise the limit with --max-jobs")
            return None
        plans.append(RowPlan(row, dims, repeat, fields, count, names=names, model=model))
    return plans


def _defaults_for(model: ModelSpec, manifest: Manifest) -> dict[str, Located]:
    """What a row of `model` starts from: the model's defaults, then the manifest's `defaults:`
    that this model takes (by its own name for them)."""
    filled = {p.name for p in model.params if model.fill_defaults or p.required}
    base = {name: Located(value, manifest.display, 0) for name, value in model.defaults().items() if name in filled}
    for name, loc in manifest.defaults.items():
        p = model.param(name)
        if p is not None:
            base[p.name] = loc
    return base


def _default_model() -> ModelSpec:
    found = get_model(DEFAULT_MODEL)
    assert found is not None
    return found


TEMPLATED = ("prompt", "negative_prompt")
AUTO = object()  # a checked `seed: auto`, derived per take


def param_sources(plan: RowPlan, model: ModelSpec) -> list[tuple[Param, int | None, Located | None]]:
    """Where each parameter comes from: an axis of the expansion (the last one naming it wins)
    or the row's fields and defaults."""
    axis_of = {dim.name: i for i, dim in enumerate(plan.dims) if dim.is_param}
    return [(p, axis_of.get(p.name), plan.fields.get(p.name)) for p in model.params
            if p.name in axis_of or p.name in plan.fields]


def check_unusable(plan: RowPlan, manifest: Manifest, diags: Diagnostics) -> None:
    """Check the values of a row that cannot expand, each once, so its other problems show now
    rather than one by one on each try."""
    # A column left blank on this line fills nothing, unless the entry's vary fills it.
    unfilled = set(plan.row.blank) - set(vary_variables(plan.row, plan.model))
    known = dict.fromkeys(name for name in [*plan.row.variables, *plan.names] if name not in unfilled)
    vary = plan.row.fields.get("vary")
    vary_broken = vary is not None and not isinstance(vary.value, dict)  # its names are unknown: no guessing
    for p, axis, fixed in param_sources(plan, plan.model):
        for loc in plan.dims[axis].values if axis is not None else [fixed] if fixed is not None else []:
            if p.name in TEMPLATED and isinstance(loc.value, str):
                if vary_broken:
                    continue
                for name in compile_template(loc.value).missing(known):
                    report_missing(p, loc, name, plan, diags)
            else:
                check_value(p, loc, manifest, diags)


def first_uses(dims: list[Dimension]) -> Iterator[tuple[Located, ...]]:
    """The jobs, in expansion order, where each axis value is first used: the first job, then
    those differing from it in one axis (the last axis first, as the product goes)."""
    first = [dim.values[0] for dim in dims]
    yield tuple(first)
    for a in reversed(range(len(dims))):
        for value in dims[a].values[1:]:
            yield (*first[:a], value, *first[a + 1:])


def outcomes_per_value(plan: RowPlan, model: ModelSpec) -> bool:
    """Whether every problem of the row's jobs comes from one value alone, none from how the
    values combine: then the jobs of `first_uses` report all of them, in the same order as
    every job would. Only a template's length or blankness depends on the combination."""
    variable_axis = {dim.name: i for i, dim in enumerate(plan.dims) if not dim.is_param}
    for p, axis, fixed in param_sources(plan, model):
        if p.name not in TEMPLATED:
            continue
        if axis is not None and any(isinstance(loc.value, str) for loc in plan.dims[axis].values):
            return False
        if (axis is None and fixed is not None and isinstance(fixed.value, str)
                and not template_always_fits(p, compile_template(fixed.value), plan, variable_axis)):
            return False
    return True


def template_always_fits(p: Param, template: Template, plan: RowPlan, variable_axis: dict[str, int]) -> bool:
    """Whether no job's text of this template breaks the parameter's length or non-empty rule (a
    missing variable stays as written, as `render` leaves it)."""
    row_values = {k: v.value for k, v in plan.row.variables.items()}
    longest = sum(len(part) for part in template.parts)
    blank = not "".join(template.parts).strip()  # only the variables could make it non-empty
    for name, count in template.counts:
        if name in variable_axis:
            texts = [str(loc.value) for loc in plan.dims[variable_axis[name]].values]
        elif name in row_values:
            texts = [str(row_values[name])]
        else:
            texts = ["{" + name + "}"]
        longest += count * max(map(len, texts))
        blank = blank and any(not text.strip() for text in texts)
    # A live schema's rule (a pattern, a length) is only known by checking each job's text.
    return p.rule is None and (p.max_length is None or longest <= p.max_length) and not (p.required and blank)


def report_missing(p: Param, loc: Located, name: str, plan: RowPlan, diags: Diagnostics) -> None:
    """Report a {variable} of the template at `loc` that nothing fills in `plan`'s row."""
    blank = plan.row.blank.get(name)
    if blank is not None:
        # The file has the column but this line leaves it empty: say so at that line, not as a
        # variable the template's line does not define.
        diags.add(plan.row.file, plan.row.line, f"column {short(name)} is {blank} on this line; "
                  f"{{{name}}} in the {p.name.replace('_', ' ')} needs text or a number")
        return
    # Suggested from the names meant as variables here, not only those that fill one.
    diags.add(loc.file, loc.line, f"undefined template variable {{{name}}}{suggest(name, plan.names)}")


def render_checked(p: Param, loc: Located, template: Template, variables: dict[str, Any], plan: RowPlan,
                   diags: Diagnostics) -> str | None:
    ok = True
    for name in template.missing(variables):
        report_missing(p, loc, name, plan, diags)
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


def check_value(p: Param, loc: Located, manifest: Manifest, diags: Diagnostics) -> tuple[bool, Any]:
    """(ok, value) for a parameter that is not a template: references resolved, rule checked."""
    value = loc.value
    if p.name == "references":
        value = resolve_references(loc, manifest, diags)
        if value is None:
            return False, None
    elif p.name == "seed" and value == "auto":
        return True, AUTO
    elif p.kind == "integer" and isinstance(value, float) and value.is_integer():
        value = int(value)
    ruled = rule_view(value) if p.name == "references" else value  # a local image will be a URL
    problem = (sexagesimal_problem(p.name, value) if p.kind == "enum" else None) or p.check(ruled)
    if problem:
        diags.add(loc.file, loc.line or 1, problem)
        return False, None
    return True, value
