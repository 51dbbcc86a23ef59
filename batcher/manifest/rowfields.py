"""A manifest row before expansion: located values, the fields a row may have (the model's
parameters and the expansion fields) and their canonical names."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..models import ROW_WORDS, ModelSpec
from ..text import short, type_name
from .diagnostics import Diagnostics, suggest
from .yamlfile import LineDict, LineList, key_line, value_line

# Row fields that are not API parameters.
FROM_FIELD = "from"
# A free-form mapping a row (or the defaults) carries into every export record of its jobs.
META_FIELD = "meta"
ROW_EXTRAS = tuple(w for w in ROW_WORDS if w != FROM_FIELD)


@dataclass(frozen=True)
class Located:
    """A value with the place it was written."""

    value: Any
    file: str
    line: int


@dataclass
class Row:
    """One manifest row (or one line of a `from:` file), before expansion."""

    index: int  # position among all rows, from 0; CSV/JSONL lines count one each
    file: str
    line: int
    fields: dict[str, Located]  # canonical field name -> value
    variables: dict[str, Located] = field(default_factory=dict)  # template variables
    # For rows from a file: its columns that are not row fields, the names a misspelt
    # {variable} may have meant.
    columns: tuple[str, ...] = ()
    # For rows from a file: columns left empty (or JSON null) on this line -> "empty"/"null",
    # so a {variable} they leave unfilled is reported as such, not as undefined.
    blank: dict[str, str] = field(default_factory=dict)
    model: ModelSpec | None = None  # its own `model:`, when it names one (else the manifest's)

    @property
    def origin(self) -> str:
        return f"{self.file}:{self.line}"


def row_field_names(model: ModelSpec) -> list[str]:
    """Every field a row may have."""
    return model.names() + list(ROW_EXTRAS)


def canonical_field(model: ModelSpec, key: Any) -> str | None:
    """A row key to its canonical name (aliases resolved), or None if unknown."""
    if not isinstance(key, str):
        return None
    p = model.param(key)
    if p is not None:
        return p.name
    return key if key in ROW_EXTRAS else None


def row_fields(raw: LineDict, display: str, model: ModelSpec, diags: Diagnostics, allow_from: bool
               ) -> dict[str, Located]:
    """A YAML row's fields by canonical name; unknown and repeated fields are reported."""
    fields: dict[str, Located] = {}
    valid = row_field_names(model) + ([FROM_FIELD] if allow_from else [])
    for key, value in raw.items():
        if allow_from and key == FROM_FIELD:
            continue
        if key == META_FIELD:
            meta = meta_field(raw, display, diags)
            if meta is not None:
                fields[META_FIELD] = meta
            continue
        name = canonical_field(model, key)
        if name is None:
            diags.add(display, key_line(raw, key, raw.line), f"unknown row field {short(key)}{suggest(key, valid)}")
            continue
        if name in fields:
            diags.add(display, key_line(raw, key, raw.line),
                      f"{short(key)} repeats field {short(name)} under another name")
            continue
        fields[name] = Located(value, display, value_line(raw, key, raw.line))
    return fields


def meta_field(raw: dict[Any, Any], display: str, diags: Diagnostics) -> Located | None:
    """A `meta:` mapping (of a row or the defaults) as a located value; anything else is reported (None)."""
    value = raw[META_FIELD]
    line = value_line(raw, META_FIELD, getattr(raw, "line", 1))
    if not isinstance(value, dict):
        diags.add(display, line, f"meta must be a mapping of names to values, not {type_name(value)}")
        return None
    return Located(value, display, line)


def as_list(loc: Located) -> list[Located]:
    """A located list as its items, each at its own line; anything else as itself."""
    value = loc.value
    if isinstance(value, list):
        lines = value.item_lines if isinstance(value, LineList) else [loc.line] * len(value)
        return [Located(v, loc.file, line) for v, line in zip(value, lines, strict=True)]
    return [loc]
