"""Job keys of a whole row at once: the row's canonical request text compiled once, filled per job.

A job's key hashes the canonical JSON of its request (sorted keys, compact separators, text not
escaped to ASCII) and its take. Within a row only the varied values change, so the text is
compiled once into a format string whose slots take each axis value's JSON text, encoded once:
every job then costs one `str.format` and one SHA-256, not a dict and a run of the JSON encoder.
The bytes hashed are exactly those `canonical_request` builds, so the keys are the same. A row's
parameters as the ledger stores them (`json.dumps(params, ensure_ascii=False)`: manifest names in
the job's order, default separators) are compiled the same way, for staging.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..manifest import Diagnostics, Manifest, Template, compile_template
from ..models import MAX_INT32, Param
from .expansion import (
    AUTO,
    TEMPLATED,
    RowPlan,
    check_value,
    param_sources,
    template_always_fits,
)

# What json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False) builds on each call,
# built once. Keys hash its output: it must never change.
CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
# What json.dumps(params, ensure_ascii=False) builds: the ledger's text of a job's parameters.
STORED = json.JSONEncoder(ensure_ascii=False)
KEY_BYTES = 10  # a key is 20 hex digits

# A piece of a parameter's canonical text: literal text, or the index of the axis whose value's
# text goes there.
Piece = str | int


def encode(value: Any) -> str:
    """A value's canonical JSON text."""
    return CANONICAL.encode(value)


def escape(text: str) -> str:
    """Text as it appears inside a canonical JSON string. JSON escapes character by character,
    so escaped pieces join into the escaped whole: a template's parts and values escape apart."""
    return CANONICAL.encode(text)[1:-1]


def _literal(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def _stored_format(params: Sequence[tuple[str, Sequence[Piece]]], seed_slot: int | None) -> str:
    """The format string of a job's stored parameters, in the job's order; a derived seed comes
    last (the job adds it after the others), in slot `seed_slot`."""
    items = [_literal(STORED.encode(name) + ": ") + "".join(
        f"{{{piece}}}" if isinstance(piece, int) else _literal(piece) for piece in pieces) for name, pieces in params]
    if seed_slot is not None:
        items.append(_literal(STORED.encode("seed") + ": ") + f"{{{seed_slot}}}")
    return "{{" + _literal(", ").join(items) + "}}"


def _format(api_id: str, params: Mapping[str, Sequence[Piece]]) -> str:
    """The format string of `{"model":...,"params":{...}}` with each slot an axis index."""
    out = ["{{", _literal(encode("model") + ":" + encode(api_id) + "," + encode("params") + ":"), "{{"]
    for i, wire in enumerate(sorted(params)):
        out.append(_literal(("," if i else "") + encode(wire) + ":"))
        out.extend(f"{{{piece}}}" if isinstance(piece, int) else _literal(piece) for piece in params[wire])
    out.append("}}}}")
    return "".join(out)


@dataclass(frozen=True)
class RowText:
    """A row's jobs as text to fill: axes in expansion order, takes innermost."""

    axes: list[list[str]]  # each axis's values as canonical text, or "" where no slot uses it
    text: str  # the request's format string; with a derived seed, its slot is the last index
    seedless: str | None  # with a derived seed, the request without it: what the seed hashes
    repeat: int


def compile_row(api_id: str, params: Mapping[str, Sequence[Piece]], axes: list[list[str]], repeat: int,
                auto_seed_wire: str | None = None) -> RowText:
    """Compile a row whose wire parameters are `params` (pieces; with `auto_seed_wire`, that
    parameter is derived per take and needs no pieces)."""
    seedless = None
    if auto_seed_wire is not None:
        without = {w: pieces for w, pieces in params.items() if w != auto_seed_wire}
        seedless = _format(api_id, without)
        params = {**without, auto_seed_wire: [len(axes)]}
    return RowText(axes, _format(api_id, params), seedless, repeat)


def derived_seed(seedless_request: str, take: int) -> int:
    """`seed: auto` for one take: the request without its seed, hashed with the take."""
    digest = hashlib.sha256(f"{seedless_request}#seed-for-take={take}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % (MAX_INT32 + 1)


def row_keys(row: RowText) -> Iterator[tuple[int, tuple[str, ...]]]:
    """(key as an int, the axis values' texts) for every job of the row, in expansion order.

    An int of the key's 80 bits is what a set of seen keys needs: a third of the memory of the
    hex text, and no hex formatting per job."""
    sha256 = hashlib.sha256
    takes = [f"#take={take}" for take in range(1, row.repeat + 1)]
    text, seedless = row.text, row.seedless
    for combo in itertools.product(*row.axes):
        if seedless is None:
            request = text.format(*combo)
            for suffix in takes:
                yield int.from_bytes(sha256((request + suffix).encode()).digest()[:KEY_BYTES], "big"), combo
        else:
            without = seedless.format(*combo)
            for take, suffix in enumerate(takes, start=1):
                request = text.format(*combo, derived_seed(without, take))
                yield int.from_bytes(sha256((request + suffix).encode()).digest()[:KEY_BYTES], "big"), combo


def key_text(key: int) -> str:
    """A key int as the 20 hex digits jobs carry."""
    return f"{key:0{KEY_BYTES * 2}x}"


# --- a row whose every job is valid, compiled ----------------------------------------------------

@dataclass
class FastRow:
    """A row every job of which is known valid, compiled to its key text (see `expansion`), with
    what the plan's figures need of each job: its estimate class."""

    text: RowText
    class_axes: tuple[int, ...]  # the axes the estimate, seconds and resolution depend on
    class_info: Any  # axis texts (of class_axes) -> (estimate, is_guess, seconds, resolution)
    # The stored parameters' format string (a derived seed in the last slot, as in `text`), and
    # each axis's values as that text spells them: the same as `text.axes` but for lists and mappings.
    stored: str = ""
    stored_axes: list[list[str]] = field(default_factory=list)
    keys: list[int | None] | None = None  # each job's key as `check` found it, None for a duplicate


def _template_pieces(p: Param, template: Template, plan: RowPlan, variable_axis: dict[str, int],
                     axes: list[list[str]]) -> list[str | int] | None:
    """A fixed template's canonical text as pieces, or None when some job's text would break the
    parameter's rule (the job-by-job path then says which)."""
    row_values = {k: v.value for k, v in plan.row.variables.items()}
    if any(name not in variable_axis and name not in row_values for name, _ in template.counts):
        return None
    if not template_always_fits(p, template, plan, variable_axis):
        return None
    pieces: list[str | int] = ['"' + escape(template.parts[0])]
    for name, part in zip(template.names, template.parts[1:], strict=True):
        pieces.append(variable_axis[name] if name in variable_axis else escape(str(row_values[name])))
        pieces.append(escape(part))
    pieces.append('"')
    for name, i in variable_axis.items():
        if name in template.names:
            axes[i] = [escape(str(loc.value)) for loc in plan.dims[i].values]
    return pieces


def fast_row(plan: RowPlan, manifest: Manifest, rate_overrides: dict[str, float] | None) -> FastRow | None:
    """The row compiled for counting its jobs' keys, or None when some job may be invalid or the
    row has a shape only the job-by-job path handles (a varied negative prompt or `seed: auto`)."""
    model = plan.model
    scratch = Diagnostics()  # the job-by-job path reports problems, in its order
    variable_axis = {dim.name: i for i, dim in enumerate(plan.dims) if not dim.is_param}
    axes: list[list[str]] = [[""] * len(dim.values) for dim in plan.dims]  # "" where no slot reads it
    wire: dict[str, list[str | int]] = {}
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
            wire[p.wire] = [axis]
            values[p.name] = (axis, None)
            continue
        assert fixed is not None
        if p.name in TEMPLATED and isinstance(fixed.value, str):
            pieces = _template_pieces(p, compile_template(fixed.value), plan, variable_axis, axes)
            if pieces is None:
                return None
            wire[p.wire] = pieces
            continue
        good, value = check_value(p, fixed, manifest, scratch)
        if not good:
            return None
        if value is AUTO:
            auto_wire = p.wire
            continue
        wire[p.wire] = [encode(value)]
        values[p.name] = (None, value)
    text = compile_row(model.api_id, wire, axes, plan.repeat, auto_wire)
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
    stored = _stored_format(_stored_pieces(plan, wire, values, auto_wire), len(axes) if auto_wire else None)
    # A variable's values are escaped text, the same in both; a parameter's differ for lists.
    stored_axes = [[STORED.encode(v) for v in axis_values[i]] if i in axis_values else texts
                   for i, texts in enumerate(axes)]
    return FastRow(text, class_axes, class_info, stored, stored_axes)


def _stored_pieces(plan: RowPlan, wire: dict[str, list[str | int]], values: dict[str, tuple[int | None, Any]],
                   auto_wire: str | None) -> list[tuple[str, Sequence[Piece]]]:
    """Each stored parameter's pieces, in the job's order (a derived seed is added last, apart):
    a fixed value as `STORED` spells it; an axis's slot, or a template's pieces, as the key's
    text has them (JSON escapes text alike whatever its separators)."""
    out: list[tuple[str, Sequence[Piece]]] = []
    for p, _, _ in param_sources(plan, plan.model):
        if p.wire == auto_wire:
            continue
        axis, fixed = values.get(p.name, (None, None))
        fixed_value = p.name in values and axis is None
        out.append((p.name, [STORED.encode(fixed)] if fixed_value else wire[p.wire]))
    return out
