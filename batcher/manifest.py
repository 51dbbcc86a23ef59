"""Reading manifests: YAML (and the CSV/JSONL files rows come from) into located values.

Every value keeps the file and line it came from, so each problem is reported as
`FILE:LINE: message`. This module checks structure (which fields exist, their shapes); the
per-job rules (templating, parameter ranges) are checked by `plan` as it expands rows.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import Diagnostic, ManifestError
from .models import (
    DEFAULT_MODEL,
    MODELS,
    ModelSpec,
    check_url,
    get_model,
    short,
    type_name,
)
from .template import is_template_value, variables_in

MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_DIAGNOSTICS = 50
MAX_REPEAT = 10_000
# Most values (scalars, lists, mappings) a YAML manifest may hold once its aliases are expanded:
# an alias counts the full size of what it names, each time it is used. Without this, a few
# hundred bytes of nested aliases stand for billions of values (a "billion laughs" file). A
# plain file under 1 MB holds at most about 500,000 values, so only aliases reach the limit.
MAX_YAML_VALUES = 1_000_000
MAX_BATCH_NAME = 100

TOP_FIELDS = ("version", "batch", "model", "defaults", "reference_sets", "rows")
# Row fields that are not API parameters.
ROW_EXTRAS = ("seeds", "vary", "repeat", "name")
FROM_FIELD = "from"


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

    @property
    def origin(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass
class Manifest:
    """A loaded manifest: structure checked, rows not yet expanded."""

    path: Path
    display: str  # how the path is written in messages
    batch: str
    model: ModelSpec
    defaults: dict[str, Located]
    reference_sets: dict[str, Located]
    rows: list[Row]
    # Structural problems found while loading; `plan.check` reports them with the rest.
    problems: list[Diagnostic] = field(default_factory=list)


class _Diagnostics:
    """Collects diagnostics, deduplicated and capped."""

    def __init__(self) -> None:
        self.items: list[Diagnostic] = []
        self._seen: set[Diagnostic] = set()
        self.dropped = 0

    def add(self, file: str, line: int, message: str) -> None:
        d = Diagnostic(file, max(1, line), " ".join(message.split()))
        if d in self._seen:
            return
        self._seen.add(d)
        if len(self.items) < MAX_DIAGNOSTICS:
            self.items.append(d)
        else:
            self.dropped += 1

    def raise_if_any(self) -> None:
        if self.items:
            items = sorted(self.items, key=lambda d: (d.file, d.line))
            if self.dropped:
                last = items[-1]
                items.append(Diagnostic(last.file, last.line,
                                        f"... and {self.dropped} more problem(s) not shown"))
            raise ManifestError(items)


# --- batch names -----------------------------------------------------------------------------

_SAFE_BATCH = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_BATCH_NAME - 1}}}")
# Names Windows gives to devices, whatever the extension: a folder "nul" is no folder there.
_WINDOWS_DEVICES = re.compile(r"(con|prn|aux|nul|com[0-9¹²³]|lpt[0-9¹²³])(\..*)?", re.IGNORECASE)
BATCH_NAME_RULE = (f"1 to {MAX_BATCH_NAME} letters, digits, '.', '_' or '-', starting with a letter or digit, "
                   "with no '..' and not ending in '.'")


def is_safe_batch_name(name: object) -> bool:
    """Whether `name` is safe as one folder name under an output folder: it can never name a
    parent, an absolute path, a hidden file or a device (see BATCH_NAME_RULE)."""
    return (isinstance(name, str) and _SAFE_BATCH.fullmatch(name) is not None and ".." not in name
            and not name.endswith(".") and _WINDOWS_DEVICES.fullmatch(name) is None)


def _safe_batch_like(name: str) -> str:
    """A safe batch name close to `name`, to suggest (or to stand in while the manifest is refused)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", name)
    cleaned = re.sub(r"\.{2,}", ".", cleaned).strip("._-")[:MAX_BATCH_NAME].rstrip("._-")
    return cleaned if is_safe_batch_name(cleaned) else "batch"


# --- YAML with line numbers -------------------------------------------------------------------

class LineDict(dict):
    """A mapping that remembers the line of each key and value."""

    __slots__ = ("key_lines", "line", "value_lines")  # no __dict__: a manifest can hold 500,000 of these
    line: int
    key_lines: dict[Any, int]
    value_lines: dict[Any, int]


class LineList(list):
    """A list that remembers the line of each item."""

    __slots__ = ("item_lines", "line")
    line: int
    item_lines: list[int]


class SexagesimalInt(int):
    """An integer YAML 1.1 read from `a:b` digits (unquoted 16:9 is 969), keeping the text so a
    message can say what happened; it behaves as the plain int everywhere else (keys included)."""

    text: str


def _construct_int(loader: Any, node: yaml.ScalarNode) -> int:
    value = loader.construct_yaml_int(node)
    if isinstance(node.value, str) and ":" in node.value:
        out = SexagesimalInt(value)
        out.text = node.value
        return out
    return value


def sexagesimal_problem(name: str, value: Any) -> str | None:
    """For an enum parameter given an unquoted `a:b` number: what to write instead."""
    if isinstance(value, SexagesimalInt):
        return (f'{name}: write "{value.text}" in quotes (unquoted, YAML reads {value.text} as the number '
                f'{int(value)})')
    return None


_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".avif", ".heic")


def looks_like_local_file(text: str) -> bool:
    """Whether a reference that is no URL reads as a path on this machine (./a.png, ~/b.jpg, c.webp)."""
    if text.lower().startswith("file:"):
        return True
    if "://" in text:
        return False
    # A set name never needs a slash; a path (./a, C:\\a, dir/a) always has one.
    return text.startswith("~") or "/" in text or "\\" in text or text.lower().endswith(_IMAGE_SUFFIXES)


LOCAL_FILES_UNSUPPORTED = "(local files are not supported yet)"


class _TooLarge(yaml.MarkedYAMLError):
    """The document, aliases expanded, is past MAX_YAML_VALUES (or an alias names itself)."""


def _check_size(root: yaml.Node, limit: int) -> None:
    """Raise _TooLarge where the document's expanded size first passes `limit`.

    Walks the composed node graph once: a node reached again through an alias is not walked
    again but adds its remembered size, so the walk is linear in the file however much the
    aliases would expand.
    """
    sizes: dict[int, int] = {}
    total = 0

    def add(node: yaml.Node, where: yaml.Mark | None) -> None:
        nonlocal total
        known = sizes.get(id(node))
        if known is not None:
            if known < 0:
                raise _TooLarge(None, None, "this alias names a value that contains it", where or node.start_mark)
            total += known
            if total > limit:
                raise _TooLarge(None, None, f"the aliases here expand the manifest past {limit:,} values "
                                f"(the most batcher reads); write the values out or use fewer aliases",
                                where or node.start_mark)
            return
        sizes[id(node)] = -1  # being walked: reaching it again means a cycle
        before = total
        total += 1
        if total > limit:
            raise _TooLarge(None, None, f"the manifest holds more than {limit:,} values (the most batcher "
                            f"reads)", node.start_mark)
        if isinstance(node, yaml.SequenceNode):
            for child in node.value:
                # An alias has no mark of its own: the sequence's line is the nearest we know.
                add(child, node.start_mark if id(child) in sizes else child.start_mark)
        elif isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                add(key, key.start_mark)
                add(value, key.start_mark if id(value) in sizes else value.start_mark)
        sizes[id(node)] = total - before

    add(root, None)


# libyaml when PyYAML has it: the pure-Python parser takes seconds and hundreds of MB for a
# dense 1 MB file. Both give the same marks and the same values.
_BaseLoader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_BaseLoader):  # type: ignore[misc,valid-type]
    def construct_document(self, node: yaml.Node) -> Any:
        _check_size(node, MAX_YAML_VALUES)
        return super().construct_document(node)


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LineDict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
            if key_node.value in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {short(key_node.value)} (first at line {seen[key_node.value]})",
                    key_node.start_mark)
            seen[key_node.value] = key_node.start_mark.line + 1
    loader.flatten_mapping(node)
    out = LineDict()
    out.line = node.start_mark.line + 1
    out.key_lines, out.value_lines = {}, {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "a key must be plain text, not a list or mapping", key_node.start_mark
            ) from None
        out[key] = loader.construct_object(value_node, deep=True)
        out.key_lines[key] = key_node.start_mark.line + 1
        out.value_lines[key] = value_node.start_mark.line + 1
    return out


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> LineList:
    out = LineList(loader.construct_object(child, deep=True) for child in node.value)
    out.line = node.start_mark.line + 1
    out.item_lines = [child.start_mark.line + 1 for child in node.value]
    return out


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_sequence)
_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def _decode(data: bytes, display: str, diags: _Diagnostics) -> str | None:
    if b"\x00" in data:
        line = data[: data.index(b"\x00")].count(b"\n") + 1
        diags.add(display, line, "this is a binary file, not a text manifest")
        return None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        diags.add(display, line, f"not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})")
        return None
    return text


def _file_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


# Opening a FIFO without O_NONBLOCK waits for a writer; stat before opening already refuses it,
# this covers a file swapped for one in between.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)


def _read_text(path: Path, display: str, diags: _Diagnostics, line_for_missing: tuple[str, int] | None = None
               ) -> str | None:
    """A regular file's text, at most MAX_FILE_BYTES; anything else (a FIFO, a device) is refused
    without reading, since reading one can block or never end."""
    where = line_for_missing or (display, 1)
    too_big = f"the file is larger than {MAX_FILE_BYTES} bytes, the most batcher reads"
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            diags.add(where[0], where[1], f"{display} is a directory, not a file")
            return None
        if not stat.S_ISREG(st.st_mode):
            diags.add(where[0], where[1], f"{display} is {_file_kind(st.st_mode)}, not a regular file")
            return None
        if st.st_size > MAX_FILE_BYTES:
            diags.add(display, 1, f"the file is {st.st_size} bytes; the most batcher reads is {MAX_FILE_BYTES}")
            return None
        fd = os.open(path, _OPEN_FLAGS)
        with open(fd, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            if not stat.S_ISREG(mode):
                diags.add(where[0], where[1], f"{display} is {_file_kind(mode)}, not a regular file")
                return None
            data = f.read(MAX_FILE_BYTES + 1)  # bounded even if the file grows meanwhile
        if len(data) > MAX_FILE_BYTES:
            diags.add(display, 1, too_big)
            return None
    except FileNotFoundError:
        diags.add(where[0], where[1], f"no such file: {display}")
        return None
    except OSError as e:
        diags.add(where[0], where[1], f"cannot read {display}: {e.strerror or e}")
        return None
    except ValueError:  # a NUL character in the name
        diags.add(where[0], where[1], f"cannot read {short(display)}: the name contains a NUL character")
        return None
    return _decode(data, display, diags)


def parse_yaml(text: str, display: str, diags: _Diagnostics) -> Any:
    """YAML text to LineDict/LineList values; syntax problems become diagnostics."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except _TooLarge as e:
        mark = e.problem_mark
        diags.add(display, mark.line + 1 if mark else 1, e.problem or "the manifest is too large")
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else 1
        problem = e.problem or e.context or "invalid YAML"
        diags.add(display, line, f"invalid YAML: {problem}")
    except yaml.reader.ReaderError as e:
        line = text[: e.position].count("\n") + 1
        # libyaml gives the character as a number, the Python reader as text.
        char = chr(e.character) if isinstance(e.character, int) else e.character
        diags.add(display, line, f"invalid YAML: character {short(char)} is not allowed in YAML")
    except yaml.YAMLError as e:
        diags.add(display, 1, f"invalid YAML: {str(e).splitlines()[0] if str(e) else 'unreadable'}")
    except RecursionError:
        diags.add(display, 1, "the YAML is nested too deeply")
    return None


def suggest(name: Any, valid: list[str] | tuple[str, ...]) -> str:
    """' (did you mean X?)' for the nearest valid name, or ''."""
    close = difflib.get_close_matches(str(name), list(valid), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _line_of(mapping: Any, key: Any, default: int) -> int:
    lines = getattr(mapping, "value_lines", None)
    return lines.get(key, default) if lines else default


def _key_line(mapping: Any, key: Any, default: int) -> int:
    lines = getattr(mapping, "key_lines", None)
    return lines.get(key, default) if lines else default


# --- the manifest ----------------------------------------------------------------------------

def load_manifest(path: str | Path) -> Manifest:
    """Read and structurally check a manifest; raise ManifestError listing every problem."""
    path = Path(path)
    display = str(path)
    diags = _Diagnostics()
    text = _read_text(path, display, diags)
    diags.raise_if_any()
    assert text is not None
    doc = parse_yaml(text, display, diags)
    diags.raise_if_any()
    if doc is None:
        diags.add(display, 1, "the manifest is empty; it needs at least 'version: 1' and 'rows:'")
        diags.raise_if_any()
    if not isinstance(doc, dict):
        diags.add(display, getattr(doc, "line", 1),
                  f"the manifest must be a mapping of fields (version, rows, ...), not {type_name(doc)}")
        diags.raise_if_any()
    return _check_top(doc, path, display, diags)


def _check_top(doc: LineDict, path: Path, display: str, diags: _Diagnostics) -> Manifest:
    for key in doc:
        if key not in TOP_FIELDS:
            diags.add(display, _key_line(doc, key, 1), f"unknown field {short(key)}{suggest(key, TOP_FIELDS)}")

    version = doc.get("version")
    if "version" not in doc:
        diags.add(display, doc.line, "missing field 'version' (write 'version: 1')")
    elif version != 1 or isinstance(version, bool):
        diags.add(display, _line_of(doc, "version", 1), f"version must be 1, got {short(version)}")

    # The batch names the output folder: it must stay one plain folder name inside --out.
    if "batch" in doc:
        batch = doc["batch"]
        line = _line_of(doc, "batch", 1)
        if not isinstance(batch, str) or not batch.strip():
            diags.add(display, line, f"batch must be non-empty text, got {short(batch)}")
            batch = _safe_batch_like(path.stem)
        elif not is_safe_batch_name(batch):
            diags.add(display, line, f"batch {short(batch)} cannot be a folder name: use {BATCH_NAME_RULE} "
                      f"(e.g. {_safe_batch_like(batch)!r})")
            batch = _safe_batch_like(batch)
    else:
        batch = path.stem
        if not is_safe_batch_name(batch):
            suggestion = _safe_batch_like(batch)
            diags.add(display, 1, f"the batch name defaults to the file name {short(batch)}, which cannot be a "
                      f"folder name; add 'batch: {suggestion}' (the rule: {BATCH_NAME_RULE})")
            batch = suggestion

    model_id = doc.get("model", DEFAULT_MODEL)
    model = get_model(model_id) if isinstance(model_id, str) else None
    if model is None:
        diags.add(display, _line_of(doc, "model", 1),
                  f"unknown model {short(model_id)}{suggest(model_id, list(MODELS))}; known: {', '.join(MODELS)}")
        model = get_model(DEFAULT_MODEL)
    assert model is not None

    defaults: dict[str, Located] = {}
    raw_defaults = doc.get("defaults", {})
    if raw_defaults is None:
        raw_defaults = {}
    if not isinstance(raw_defaults, dict):
        diags.add(display, _line_of(doc, "defaults", 1),
                  f"defaults must be a mapping of API parameters, not {type_name(raw_defaults)}")
    else:
        for key, value in raw_defaults.items():
            p = model.param(key) if isinstance(key, str) else None
            if p is None:
                diags.add(display, _key_line(raw_defaults, key, 1),
                          f"unknown API parameter {short(key)} in defaults{suggest(key, model.names())}")
                continue
            defaults[p.name] = Located(value, display, _line_of(raw_defaults, key, 1))

    sets: dict[str, Located] = {}
    raw_sets = doc.get("reference_sets", {})
    if raw_sets is None:
        raw_sets = {}
    if not isinstance(raw_sets, dict):
        diags.add(display, _line_of(doc, "reference_sets", 1),
                  f"reference_sets must map names to lists of image URLs, not {type_name(raw_sets)}")
    else:
        for name, urls in raw_sets.items():
            line = _line_of(raw_sets, name, 1)
            if not isinstance(name, str):
                diags.add(display, _key_line(raw_sets, name, 1), f"a reference set name must be text, got {short(name)}")
                continue
            if isinstance(urls, str):
                urls = [urls]
            if not isinstance(urls, list) or not urls:
                diags.add(display, line, f"reference set {short(name)} must be a non-empty list of image URLs")
                continue
            for i, url in enumerate(urls):
                problem = check_url(url)
                if problem:
                    if isinstance(url, str) and looks_like_local_file(url):
                        problem = (f"{short(url)} looks like a local file; a reference set holds http(s) image "
                                   f"URLs {LOCAL_FILES_UNSUPPORTED}")
                    item_line = urls.item_lines[i] if isinstance(urls, LineList) else line
                    diags.add(display, item_line, f"reference set {short(name)}: {problem}")
            sets[name] = Located(list(urls), display, line)

    rows: list[Row] = []
    raw_rows = doc.get("rows")
    if "rows" not in doc:
        diags.add(display, doc.line, "missing field 'rows' (a list of prompts to render)")
    elif not isinstance(raw_rows, list) or not raw_rows:
        diags.add(display, _line_of(doc, "rows", 1), "rows must be a non-empty list of rows")
    else:
        for i, raw in enumerate(raw_rows):
            line = raw_rows.item_lines[i] if isinstance(raw_rows, LineList) else 1
            if not isinstance(raw, dict):
                diags.add(display, line, f"each row must be a mapping with a prompt, not {type_name(raw)}")
                continue
            if FROM_FIELD in raw:
                rows.extend(_rows_from_file(raw, path, display, len(rows), model, diags))
            else:
                fields = _row_fields(raw, display, model, diags, allow_from=False)
                rows.append(Row(len(rows), display, raw.line, fields))
    if not rows:
        diags.raise_if_any()
    return Manifest(path=path, display=display, batch=batch, model=model, defaults=defaults,
                    reference_sets=sets, rows=rows, problems=list(diags.items))


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


def _row_fields(raw: LineDict, display: str, model: ModelSpec, diags: _Diagnostics, allow_from: bool
                ) -> dict[str, Located]:
    fields: dict[str, Located] = {}
    valid = row_field_names(model) + ([FROM_FIELD] if allow_from else [])
    for key, value in raw.items():
        if allow_from and key == FROM_FIELD:
            continue
        name = canonical_field(model, key)
        if name is None:
            diags.add(display, _key_line(raw, key, raw.line), f"unknown row field {short(key)}{suggest(key, valid)}")
            continue
        if name in fields:
            diags.add(display, _key_line(raw, key, raw.line), f"{short(key)} repeats field {short(name)} under another name")
            continue
        value_line = _line_of(raw, key, raw.line)
        fields[name] = Located(value, display, value_line)
    return fields


def _rows_from_file(entry: LineDict, manifest_path: Path, display: str, first_index: int, model: ModelSpec,
                    diags: _Diagnostics) -> list[Row]:
    source = entry[FROM_FIELD]
    line = _line_of(entry, FROM_FIELD, entry.line)
    if not isinstance(source, str) or not source.strip():
        diags.add(display, line, "'from' must name a CSV or JSONL file beside the manifest")
        return []
    base_fields = _row_fields(entry, display, model, diags, allow_from=True)
    file_path = Path(source) if Path(source).is_absolute() else manifest_path.parent / source
    file_display = str(file_path)
    suffix = file_path.suffix.lower()
    if suffix not in (".csv", ".jsonl", ".ndjson"):
        diags.add(display, line, f"'from' file must end in .csv or .jsonl, got {short(source)}")
        return []
    text = _read_text(file_path, file_display, diags, line_for_missing=(display, line))
    if text is None:
        return []
    records = _csv_records(text, file_display, diags) if suffix == ".csv" else _jsonl_records(text, file_display, diags)
    template_names = _template_names(base_fields)
    rows: list[Row] = []
    valid = row_field_names(model)
    for rec_line, record in records:
        fields = dict(base_fields)
        variables: dict[str, Located] = {}
        unusable = False
        columns = tuple(key for key in record if canonical_field(model, key) is None)
        for key, value in record.items():
            if value is None or value == "":
                continue  # an empty cell leaves the entry's default
            name = canonical_field(model, key)
            if name is None:
                # Columns named in the entry's prompt template are its variables.
                if key in template_names or key in _template_names_of(record):
                    if not is_template_value(value):
                        diags.add(file_display, rec_line, f"column {short(key)} fills {{{key}}}: it must be text "
                                  f"or a number, not {type_name(value)}")
                        unusable = True  # expanding it would only add "undefined variable" noise
                        continue
                    variables[key] = Located(value, file_display, rec_line)
                    continue
                # A misspelt column most likely meant a {variable} of the prompt no column fills.
                unfilled = sorted((template_names | _template_names_of(record)) - set(record))
                hint = suggest(key, unfilled) or suggest(key, valid)
                diags.add(file_display, rec_line, f"unknown column {short(key)}{hint}")
                continue
            if name == "vary":
                diags.add(file_display, rec_line, "'vary' cannot come from a file; put it on the 'from' entry")
                continue
            fields[name] = Located(_coerce_cell(name, value, model), file_display, rec_line)
        if not unusable:
            rows.append(Row(first_index + len(rows), file_display, rec_line, fields, variables, columns))
    if not rows and not diags.items:
        diags.add(file_display, 1, "this file has no rows")
    return rows


def _template_names(fields: dict[str, Located]) -> set[str]:
    names: set[str] = set()
    for key in ("prompt", "negative_prompt"):
        loc = fields.get(key)
        if loc is not None and isinstance(loc.value, str):
            names |= variables_in(loc.value)
    return names


def _template_names_of(record: dict[str, Any]) -> set[str]:
    names: set[str] = set()
    for key in ("prompt", "negative_prompt"):
        value = record.get(key)
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


def _csv_records(text: str, display: str, diags: _Diagnostics) -> list[tuple[int, dict[str, Any]]]:
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
            out.append((line, dict(zip(header, cells))))
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


def _jsonl_records(text: str, display: str, diags: _Diagnostics) -> list[tuple[int, dict[str, Any]]]:
    out: list[tuple[int, dict[str, Any]]] = []
    for number, line in enumerate(text.splitlines(), start=1):
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
        out.append((number, record))
    return out
