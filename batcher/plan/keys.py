"""The job key and the stored parameters: their one implementation, job by job and a row at once.

A job's key is the first 80 bits of the SHA-256 of its canonical request (the JSON of
`{"model": api id, "params": wire parameters}`, keys sorted, compact separators, text not escaped
to ASCII) followed by `#take=<take>`, as 20 hex digits. `seed: auto` derives a take's seed from
the request without it, hashed with `#seed-for-take=<take>`. The ledger stores a job's parameters
as `json.dumps(params, ensure_ascii=False)` (manifest names, in the job's order, a derived seed
last). Ledgers hold these keys and texts: they must never change.

A row whose every job is valid is compiled once: the same encoders write its request and its
stored parameters with a marker where each job's own value goes, and the markers become the
slots of a format string. Each job then costs one `str.format` and one SHA-256, not a dict and a
run of the JSON encoder, and its text is the one `canonical_request` would build.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ..models import MAX_INT32, ModelSpec

# What json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False) builds on each call,
# built once.
CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
# What json.dumps(params, ensure_ascii=False) builds: the ledger's text of a job's parameters.
STORED = json.JSONEncoder(ensure_ascii=False)
KEY_BYTES = 10  # a key is 20 hex digits
SEED_BYTES = 4


def encode(value: Any) -> str:
    """A value's canonical JSON text."""
    return CANONICAL.encode(value)


def escape(text: str) -> str:
    """Text as it appears inside a JSON string (canonical or stored: both escape alike). JSON
    escapes character by character, so escaped pieces join into the escaped whole."""
    return CANONICAL.encode(text)[1:-1]


def canonical_request(api_id: str, wire: Mapping[str, Any]) -> str:
    """The canonical JSON text of a request: what a job key hashes."""
    return CANONICAL.encode({"model": api_id, "params": wire})


def stored_params(params: Mapping[str, Any]) -> str:
    """A job's parameters (manifest names, in the job's order) as the ledger stores them."""
    return STORED.encode(params)


# A row's dataset columns: its template variables and `meta:` as the ledger stores them (text any
# YAML value gives: a date is written as its text).
ROW_DATA = json.JSONEncoder(ensure_ascii=False, default=str)


def row_data(variables: Mapping[str, Any], meta: Mapping[str, Any] | None) -> str:
    """A job's template variables and its row's `meta:` as the ledger stores them (JSON)."""
    return ROW_DATA.encode({"vars": dict(variables), "meta": dict(meta or {})})


def row_data_value(value: Any) -> str:
    """A template variable's value as `row_data` writes it (an int without a call of the encoder)."""
    return int.__repr__(value) if type(value) is int else ROW_DATA.encode(value)


def take_suffix(take: int) -> str:
    """What follows a request's text in what its take's key hashes."""
    return f"#take={take}"


def hashed_key(text: str, sha256: Callable[[bytes], Any] = hashlib.sha256) -> int:
    """The key of a request's canonical text followed by its take's suffix, as an int of 80 bits:
    what a set of seen keys holds (a third of the memory of the hex text, no hex formatting per job)."""
    return int.from_bytes(sha256(text.encode()).digest()[:KEY_BYTES], "big")


_KEY_TEXT = f"%0{KEY_BYTES * 2}x"


def key_text(key: int) -> str:
    """A key int as the 20 hex digits jobs carry."""
    return _KEY_TEXT % key


def derived_seed(seedless_request: str, take: int) -> int:
    """`seed: auto` for one take: the request without its seed (canonical text), hashed with the take."""
    digest = hashlib.sha256(f"{seedless_request}#seed-for-take={take}".encode()).digest()
    return int.from_bytes(digest[:SEED_BYTES], "big") % (MAX_INT32 + 1)


def job_key(model: ModelSpec, wire: Mapping[str, Any], take: int) -> str:
    """A stable key for one take of one request."""
    return key_text(hashed_key(canonical_request(model.api_id, wire) + take_suffix(take)))


def auto_seed(model: ModelSpec, wire_without_seed: Mapping[str, Any], take: int) -> int:
    """A seed derived from the request and take, so a rerender reproduces the same clip."""
    return derived_seed(canonical_request(model.api_id, wire_without_seed), take)


# --- a row at once ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Slot:
    """Where each job of a row puts its value of axis `axis`, whole."""

    axis: int


@dataclass(frozen=True)
class Spliced:
    """Text of literal parts and axis values (a template filled per job): each part is literal
    text, or the index of the axis whose value's text goes there."""

    parts: tuple[str | int, ...]


Shape = Mapping[str, Any]  # parameters whose values may be a Slot or Spliced


def _format_of(encoder: Callable[[Shape], str], shape: Shape) -> str:
    """`encoder(shape)` as a format string whose slot i takes axis i's value as text: a Slot's as
    that encoder writes the value, a Spliced part's as `escape` writes it."""
    # A marker no literal text holds (the encoders write it as it is: ensure_ascii=False).
    plain = encoder(_marked(shape, ""))
    mark = next(c for c in map(chr, itertools.count(0xE000)) if c not in plain)
    pieces = re.split(f'"{mark}w(\\d+){mark}"|{mark}s(\\d+){mark}', encoder(_marked(shape, mark)))
    out = []
    for i in range(0, len(pieces), 3):
        out.append(pieces[i].replace("{", "{{").replace("}", "}}"))
        if i + 1 < len(pieces):
            out.append("{" + (pieces[i + 1] or pieces[i + 2]) + "}")
    return "".join(out)


def _marked(shape: Shape, mark: str) -> dict[str, Any]:
    """The parameters with each axis value's place marked (no marks when `mark` is empty)."""
    def marked(value: Any) -> Any:
        if isinstance(value, Slot):
            return f"{mark}w{value.axis}{mark}" if mark else ""
        if isinstance(value, Spliced):
            return "".join(part if isinstance(part, str) else f"{mark}s{part}{mark}" if mark else ""
                           for part in value.parts)
        return value
    return {name: marked(value) for name, value in shape.items()}


@dataclass(frozen=True)
class RowText:
    """A row's jobs as text to fill: axes in expansion order, takes innermost. With a derived
    seed, its slot is the last index of `text` and `stored`."""

    axes: list[list[str]]  # each axis's values as canonical text, or "" where no slot uses it
    text: str  # the canonical request's format string
    seedless: str | None  # with a derived seed, the request without it: what the seed hashes
    repeat: int
    stored: str  # the stored parameters' format string
    stored_axes: list[list[str]]  # each axis's values as the stored text spells them


def compile_row(api_id: str, wire: Shape, stored: Shape, axes: list[list[str]], stored_axes: list[list[str]],
                repeat: int, auto_seed_wire: str | None = None) -> RowText:
    """Compile a row whose request parameters are `wire` and whose stored parameters are `stored`
    (in the job's order), each value fixed, a Slot or Spliced. With `auto_seed_wire`, that
    parameter is derived per take: `wire` and `stored` leave it out."""
    def request(params: Shape) -> str:
        return canonical_request(api_id, params)
    seedless = None
    if auto_seed_wire is not None:
        seed = Slot(len(axes))
        seedless = _format_of(request, wire)
        wire, stored = {**wire, auto_seed_wire: seed}, {**stored, "seed": seed}
    return RowText(axes, _format_of(request, wire), seedless, repeat, _format_of(stored_params, stored), stored_axes)


def row_data_format(variables: Mapping[str, Any], varied: list[str], meta: Mapping[str, Any] | None) -> str:
    """`row_data` of a row's jobs as a format string: slot j takes the value of the variable
    `varied[j]` as `row_data_value` writes it (the other variables are `variables`)."""
    shape = {**variables, **{name: Slot(j) for j, name in enumerate(varied)}}
    return _format_of(lambda filled: row_data(filled, meta), shape)


def row_keys(row: RowText) -> Iterator[tuple[int, tuple[str, ...]]]:
    """(key as an int, the axis values' texts) for every job of the row, in expansion order."""
    key = hashed_key
    suffixes = [take_suffix(take) for take in range(1, row.repeat + 1)]
    text, seedless = row.text, row.seedless
    for combo in itertools.product(*row.axes):
        if seedless is None:
            request = text.format(*combo)
            for suffix in suffixes:
                yield key(request + suffix), combo
        else:
            without = seedless.format(*combo)
            for take, suffix in enumerate(suffixes, start=1):
                yield key(text.format(*combo, derived_seed(without, take)) + suffix), combo
