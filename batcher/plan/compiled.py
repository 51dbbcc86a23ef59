"""Rows whose every job is known valid, compiled: their keys and stored parameters as text to fill
(`keys`), with what the plan's figures need of each job, its estimate class.

A row with a value some job may break (a template too long for some values, a reference that
fails to resolve) is not compiled: the job-by-job path reports the problem, in its order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..manifest import Diagnostics, Manifest, Template, compile_template
from ..models import Param
from .expansion import (
    AUTO,
    TEMPLATED,
    RowPlan,
    check_value,
    param_sources,
    template_always_fits,
)
from .keys import STORED, RowText, Slot, Spliced, compile_row, encode, escape


@dataclass
class FastRow:
    """A row every job of which is known valid, compiled to its jobs' texts (`keys.RowText`), with
    what the plan's figures need of each job: its estimate class."""

    text: RowText
    class_axes: tuple[int, ...]  # the axes the estimate, seconds and resolution depend on
    class_info: Any  # axis texts (of class_axes) -> (estimate, is_guess, seconds, resolution)
    keys: list[int | None] | None = None  # each job's key as `check` found it, None for a duplicate


def _spliced(p: Param, template: Template, plan: RowPlan, variable_axis: dict[str, int],
             axes: list[list[str]]) -> Spliced | None:
    """A fixed template as literal parts and variable axes, or None when some job's text would
    break the parameter's rule (the job-by-job path then says which)."""
    row_values = {k: v.value for k, v in plan.row.variables.items()}
    if any(name not in variable_axis and name not in row_values for name, _ in template.counts):
        return None
    if not template_always_fits(p, template, plan, variable_axis):
        return None
    parts: list[str | int] = [template.parts[0]]
    for name, part in zip(template.names, template.parts[1:], strict=True):
        parts.append(variable_axis[name] if name in variable_axis else str(row_values[name]))
        parts.append(part)
    for name, i in variable_axis.items():
        if name in template.names:
            axes[i] = [escape(str(loc.value)) for loc in plan.dims[i].values]
    return Spliced(tuple(parts))


def fast_row(plan: RowPlan, manifest: Manifest, rate_overrides: dict[str, float] | None) -> FastRow | None:
    """The row compiled for counting its jobs' keys, or None when some job may be invalid or the
    row has a shape only the job-by-job path handles (a varied template, such as a varied
    negative prompt)."""
    model = plan.model
    scratch = Diagnostics()  # the job-by-job path reports problems, in its order
    variable_axis = {dim.name: i for i, dim in enumerate(plan.dims) if not dim.is_param}
    axes: list[list[str]] = [[""] * len(dim.values) for dim in plan.dims]  # "" where no slot reads it
    wire: dict[str, Any] = {}  # wire name -> a fixed value, Slot or Spliced
    stored: dict[str, Any] = {}  # manifest name -> the same, in the job's order
    auto_wire: str | None = None
    values: dict[str, tuple[int | None, Any]] = {}  # parameter -> (axis, None) or (None, value)
    axis_values: dict[int, list[Any]] = {}
    for p, axis, fixed in param_sources(plan, model):
        if axis is not None:
            if p.name in TEMPLATED and any(isinstance(loc.value, str) for loc in plan.dims[axis].values):
                return None
            outcomes = [check_value(p, loc, manifest, scratch) for loc in plan.dims[axis].values]
            if not all(good and value is not AUTO for good, value in outcomes):
                return None
            axis_values[axis] = [value for _, value in outcomes]
            axes[axis] = [encode(value) for value in axis_values[axis]]
            wire[p.wire] = stored[p.name] = Slot(axis)
            values[p.name] = (axis, None)
            continue
        assert fixed is not None
        if p.name in TEMPLATED and isinstance(fixed.value, str):
            spliced = _spliced(p, compile_template(fixed.value), plan, variable_axis, axes)
            if spliced is None:
                return None
            wire[p.wire] = stored[p.name] = spliced
            continue
        good, value = check_value(p, fixed, manifest, scratch)
        if not good:
            return None
        if value is AUTO:
            auto_wire = p.wire
            continue
        wire[p.wire] = stored[p.name] = value
        values[p.name] = (None, value)
    # A variable's values are escaped text, the same in both; a parameter's differ for lists.
    stored_axes = [[STORED.encode(v) for v in axis_values[i]] if i in axis_values else texts
                   for i, texts in enumerate(axes)]
    text = compile_row(model.api_id, wire, stored, axes, stored_axes, plan.repeat, auto_wire)
    class_names = [n for n in dict.fromkeys((model.rate_param, model.seconds_param)) if n in values]
    class_axes = tuple(dict.fromkeys(axis for n in class_names if (axis := values[n][0]) is not None))
    by_text = {i: dict(zip(axes[i], axis_values[i], strict=True)) for i in class_axes}

    def class_info(texts: Any) -> tuple[float, bool, int, str]:
        chosen = texts if isinstance(texts, tuple) else (texts,)
        at = dict(zip(class_axes, chosen, strict=False))  # `chosen` may hold more axes than the class needs
        params = {}
        for n in class_names:
            axis, fixed = values[n]
            params[n] = by_text[axis][at[axis]] if axis is not None else fixed
        return (model.estimate(params, rate_overrides), model.is_guess(params, rate_overrides),
                int(params.get(model.seconds_param, 0)), str(params.get(model.rate_param)))
    return FastRow(text, class_axes, class_info)
