"""Rows from files (`from:`): CSV and JSONL lines into rows, each value located at its file and
line, the `from` entry's other fields the defaults of every line."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from ..models import ModelSpec
from ..text import lone_surrogate, short, type_name
from .diagnostics import Diagnostics, suggest
from .rowfields import FROM_FIELD, Located, Row, canonical_field, row_field_names, row_fields
from .template import is_template_value, scalar_problem, variables_in
from .textfiles import read_text
from .yamlfile import LineDict, value_line

SUFFIXES = (".csv", ".jsonl", ".ndjson")


def rows_from_file(entry: LineDict, manifest_path: Path, display: str, first_index: int, model: ModelSpec,
                   diags: Diagnostics) -> list[Row]:
    """The rows of a `from:` entry's file, numbered from `first_index`; problems are reported at
    the line of the file they are on (or of the entry, for the file itself)."""
    source = entry[FROM_FIELD]
    line = value_line(entry, FROM_FIELD, entry.line)
    if not isinstance(source, str) or not source.strip():
        diags.add(display, line, "'from' must name a CSV or JSONL file beside the manifest")
        return []
    base_fields = row_fields(entry, display, model, diags, allow_from=True)
    file_path = Path(source) if Path(source).is_absolute() else manifest_path.parent / source
    file_display = str(file_path)
    suffix = file_path.suffix.lower()
    if suffix not in SUFFIXES:
        diags.add(display, line, f"'from' file must end in .csv or .jsonl, got {short(source)}")
        return []
    text = read_text(file_path, file_display, diags, line_for_missing=(display, line))
    if text is None:
        return []
    records = _csv_records(text, file_display, diags) if suffix == ".csv" else _jsonl_records(text, file_display, diags)
    template_names = _template_names({k: loc.value for k, loc in base_fields.items()})
    rows: list[Row] = []
    for rec_line, record in records:
        row = _record_row(record, Row(first_index + len(rows), file_display, rec_line, dict(base_fields)),
                          template_names, model, diags)
        if row is not None:
            rows.append(row)
    if not rows and not diags.items:
        diags.add(file_display, 1, "this file has no rows")
    return rows


def _record_row(record: dict[str, Any], row: Row, entry_names: set[str], model: ModelSpec, diags: Diagnostics
                ) -> Row | None:
    """Fill `row` from one line's record; None when a value can fill none of its variables (expanding
    it would only add "undefined variable" noise)."""
    file, line = row.file, row.line
    names = entry_names | _template_names(record)
    row.columns = tuple(key for key in record if canonical_field(model, key) is None)
    usable = True
    for key, value in record.items():
        name = canonical_field(model, key)
        if value is None or value == "":
            if name is None:
                row.blank[key] = "null" if value is None else "empty"
            continue  # an empty cell leaves the entry's default
        if name is None:
            # Columns named in the entry's prompt template are its variables.
            if key in names:
                if not is_template_value(value):
                    rule = _column_value_rule(value)
                    diags.add(file, line, f"column {short(key)} fills {{{key}}}: it must be {rule}")
                    usable = False
                    continue
                row.variables[key] = Located(value, file, line)
                continue
            # A misspelt column most likely meant a {variable} of the prompt no column fills.
            hint = suggest(key, sorted(names - set(record))) or suggest(key, row_field_names(model))
            diags.add(file, line, f"unknown column {short(key)}{hint}")
            continue
        if name == "vary":
            diags.add(file, line, "'vary' cannot come from a file; put it on the 'from' entry")
            continue
        row.fields[name] = Located(_coerce_cell(name, value, model), file, line)
    return row if usable else None


def _column_value_rule(value: Any) -> str:
    """What a JSON value that cannot fill a {variable} must be instead."""
    scalar = scalar_problem(value)
    if scalar is None:
        return f"text or a number, not {type_name(value)}"
    return scalar + (" (write it in quotes to use it as text)" if isinstance(value, bool) else "")


def _template_names(values: dict[str, Any]) -> set[str]:
    names: set[str] = set()
    for key in ("prompt", "negative_prompt"):
        value = values.get(key)
        if isinstance(value, str):
            names |= variables_in(value)
    return names


def _coerce_cell(name: str, value: Any, model: ModelSpec) -> Any:
    """CSV cells are text: turn numbers and lists into what the field expects."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    p = model.param(name)
    if name == "seeds" or (p is not None and p.kind == "url_list"):
        parts = [part for part in text.replace("|", " ").split() if part]
        if name == "seeds":
            return [int(part) if _is_int(part) else part for part in parts]
        return parts
    if name == "repeat" or (p is not None and p.kind == "integer"):
        if _is_int(text):
            return int(text)
        return text
    return value


def _is_int(text: str) -> bool:
    return text.lstrip("-").isdigit() and len(text) < 20


def _csv_records(text: str, display: str, diags: Diagnostics) -> list[tuple[int, dict[str, Any]]]:
    reader = csv.reader(io.StringIO(text))
    out: list[tuple[int, dict[str, Any]]] = []
    try:
        header = next(reader, None)
        if header is None:
            diags.add(display, 1, "this CSV file is empty; it needs a header row")
            return []
        header = [h.strip() for h in header]
        if len(set(header)) != len(header):
            diags.add(display, 1, "the header names a column twice")
            return []
        start = reader.line_num + 1
        for cells in reader:
            line = start
            start = reader.line_num + 1
            if not any(c.strip() for c in cells):
                continue
            if len(cells) != len(header):
                diags.add(display, line, f"this row has {len(cells)} cells; the header has {len(header)}")
                continue
            out.append((line, dict(zip(header, cells, strict=True))))
    except csv.Error as e:
        diags.add(display, reader.line_num or 1, f"invalid CSV: {e}")
    return out


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json's object hook: a key given twice is an error, as in YAML, not last-one-wins."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _jsonl_records(text: str, display: str, diags: Diagnostics) -> list[tuple[int, dict[str, Any]]]:
    out: list[tuple[int, dict[str, Any]]] = []
    # Split on "\n" only: str.splitlines also breaks at U+2028, U+2029 and U+0085, which a JSON
    # string may hold raw, and the line numbers would no longer be the file's.
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        try:
            record = json.loads(line, object_pairs_hook=_unique_pairs)
        except _DuplicateKey as e:
            diags.add(display, number, f"duplicate key {short(e.key)} in this JSON object")
            continue
        except (ValueError, RecursionError) as e:
            diags.add(display, number, f"invalid JSON: {e}")
            continue
        if not isinstance(record, dict):
            diags.add(display, number, f"each line must be a JSON object, not {type_name(record)}")
            continue
        surrogate = lone_surrogate(record)
        if surrogate is not None:
            diags.add(display, number, f"{surrogate} is half of a UTF-16 surrogate pair, not a character; write the "
                      "character itself (or both halves of its pair)")
            continue
        out.append((number, record))
    return out
