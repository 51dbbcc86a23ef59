"""The manifest's top-level structure: `load_manifest` reads a YAML manifest into a `Manifest`,
checking its fields (version, batch, model, defaults, reference_sets, reference_store, outputs,
rows) one by one.

Every value keeps the file and line it came from, so each problem is reported as
`FILE:LINE: message`. This module checks structure (which fields exist, their shapes); the
per-job rules (templating, parameter ranges) are checked by `plan` as it expands rows. Reading
files, YAML and row files live in `textfiles`, `yamlfile` and `rowfiles`; the names other
modules imported from here before are re-exported.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import Diagnostic
from ..models import DEFAULT_MODEL, MODELS, ModelSpec, check_url, get_model
from ..references import LocalFile, StoreSettings, looks_like_local, resolve_local
from ..text import lone_surrogate, short, type_name
from .diagnostics import MAX_DIAGNOSTICS, Diagnostics, suggest
from .rowfields import (
    FROM_FIELD,
    META_FIELD,
    ROW_EXTRAS,
    Located,
    Row,
    canonical_field,
    meta_field,
    row_field_names,
    row_fields,
)
from .rowfiles import rows_from_file
from .stores import outputs_of, reference_store_of
from .textfiles import MAX_FILE_BYTES, read_text
from .yamlfile import (
    MAX_YAML_VALUES,
    LineDict,
    LineList,
    SexagesimalInt,
    key_line,
    parse_yaml,
    sexagesimal_problem,
    value_line,
)

MAX_REPEAT = 10_000
MAX_BATCH_NAME = 100

_MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # an id that is safe in an API path
TOP_FIELDS = ("version", "batch", "model", "defaults", "reference_sets", "reference_store", "outputs", "rows")

__all__ = [
    "BATCH_NAME_RULE", "FROM_FIELD", "MAX_BATCH_NAME", "MAX_DIAGNOSTICS", "MAX_FILE_BYTES",
    "MAX_REPEAT", "MAX_YAML_VALUES", "ROW_EXTRAS", "TOP_FIELDS", "LineDict", "LineList", "Located", "Manifest", "Row",
    "SexagesimalInt", "canonical_field", "is_safe_batch_name", "load_manifest", "looks_like_local_file", "parse_yaml",
    "row_field_names", "sexagesimal_problem", "suggest",
]


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
    # Local reference images the rows use: content address -> the first file found with it.
    # Filled as rows are checked (`expansion`); nothing is uploaded or sent.
    local_files: dict[str, LocalFile] = field(default_factory=dict)
    set_files: dict[str, LocalFile] = field(default_factory=dict)  # the reference sets' local images
    reference_store: StoreSettings | None = None  # where local images are uploaded (`reference_store:`)
    outputs: str | None = None  # the output store a run writes clips to (`outputs: s3://BUCKET/PREFIX`)
    # Every model the manifest names (top-level `model:` and rows' own), by API id; those no
    # description was given for, with where they were named (`catalog` fetches them).
    models: dict[str, ModelSpec] = field(default_factory=dict)
    unknown_models: dict[str, str] = field(default_factory=dict)

    def model_of(self, row: Row) -> ModelSpec:
        """The model a row renders with: its own `model:`, else the manifest's."""
        return row.model or self.model

    @property
    def base(self) -> Path:
        """The folder local references are relative to: the manifest's."""
        return self.path.parent


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


# --- references --------------------------------------------------------------------------------

def looks_like_local_file(text: str) -> bool:
    """Whether a reference that is no URL reads as a path on this machine (see `references.local`)."""
    return looks_like_local(text)


# --- the manifest ----------------------------------------------------------------------------

def load_manifest(path: str | Path, models: Mapping[str, ModelSpec] | None = None,
                  missing: Mapping[str, str] | None = None) -> Manifest:
    """Read and structurally check a manifest; raise ManifestError listing every problem. `models`
    adds descriptions of models batcher has no table for (`catalog` fetches them); `missing`
    says why a model could not be described."""
    path = Path(path)
    display = str(path)
    diags = Diagnostics()
    if lone_surrogate(str(path.absolute())) is not None:
        # A name of bytes that are not UTF-8 (Python keeps them as lone surrogates): it could be
        # read, but never written as text into the ledger, where every job names its origin.
        diags.add(display, 1, "the path of this file (its name or a folder's) is not UTF-8 text; rename it")
    text = None if diags.items else read_text(path, display, diags)
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
    return _check_top(doc, path, display, diags, {**MODELS, **(models or {})}, missing or {})


def _check_top(doc: LineDict, path: Path, display: str, diags: Diagnostics, known: Mapping[str, ModelSpec],
               missing: Mapping[str, str]) -> Manifest:
    for key in doc:
        if key not in TOP_FIELDS:
            diags.add(display, key_line(doc, key, 1), f"unknown field {short(key)}{suggest(key, TOP_FIELDS)}")
    _check_version(doc, display, diags)
    batch = _batch(doc, path, display, diags)
    models = ModelNames(known, display, diags, missing)
    model = models.top(doc)
    row_models = [models.of(raw, model) for raw in _raw_rows(doc)]
    defaults = _defaults(doc, [model, *models.used.values()], display, diags)
    set_files: dict[str, LocalFile] = {}
    sets = _reference_sets(doc, path.parent, display, diags, set_files)
    store = reference_store_of(doc, display, diags)
    outputs = outputs_of(doc, display, diags)
    rows = _rows(doc, path, display, model, diags, row_models)
    if not rows and not models.unknown:  # (rows of models not described yet come back once they are)
        diags.raise_if_any()
    return Manifest(path=path, display=display, batch=batch, model=model, defaults=defaults,
                    reference_sets=sets, rows=rows, problems=list(diags.items), set_files=set_files,
                    reference_store=store, outputs=outputs, models={model.api_id: model, **models.used},
                    unknown_models=models.unknown)


def _check_version(doc: LineDict, display: str, diags: Diagnostics) -> None:
    version = doc.get("version")
    if "version" not in doc:
        diags.add(display, doc.line, "missing field 'version' (write 'version: 1')")
    elif version != 1 or isinstance(version, bool):
        diags.add(display, value_line(doc, "version", 1), f"version must be 1, got {short(version)}")


def _batch(doc: LineDict, path: Path, display: str, diags: Diagnostics) -> str:
    """The batch name, or a safe stand-in when it is refused: it names the output folder, so it
    must stay one plain folder name inside --out."""
    if "batch" not in doc:
        batch = path.stem
        if not is_safe_batch_name(batch):
            suggestion = _safe_batch_like(batch)
            diags.add(display, 1, f"the batch name defaults to the file name {short(batch)}, which cannot be a "
                      f"folder name; add 'batch: {suggestion}' (the rule: {BATCH_NAME_RULE})")
            batch = suggestion
        return batch
    batch = doc["batch"]
    line = value_line(doc, "batch", 1)
    if not isinstance(batch, str) or not batch.strip():
        diags.add(display, line, f"batch must be non-empty text, got {short(batch)}")
        return _safe_batch_like(path.stem)
    if not is_safe_batch_name(batch):
        diags.add(display, line, f"batch {short(batch)} cannot be a folder name: use {BATCH_NAME_RULE} "
                  f"(e.g. {_safe_batch_like(batch)!r})")
        return _safe_batch_like(batch)
    return batch


class ModelNames:
    """The models a manifest names, each looked up once among those described (`known`); an
    unknown one is reported where it is named, and remembered for `catalog` to fetch."""

    def __init__(self, known: Mapping[str, ModelSpec], display: str, diags: Diagnostics,
                 missing: Mapping[str, str]):
        self.known, self.display, self.diags, self.missing = known, display, diags, missing
        self.used: dict[str, ModelSpec] = {}
        self.unknown: dict[str, str] = {}

    def top(self, doc: LineDict) -> ModelSpec:
        found = self._look_up(doc.get("model", DEFAULT_MODEL), value_line(doc, "model", 1))
        default = self.known.get(DEFAULT_MODEL) or get_model(DEFAULT_MODEL)
        assert default is not None
        return found or default  # (to go on checking the rest)

    def of(self, raw: Any, top: ModelSpec) -> ModelSpec | None:
        """A row's own model (None when it names none, or one that is not known)."""
        if not isinstance(raw, LineDict) or raw.get("model") is None:
            return None
        return self._look_up(raw["model"], value_line(raw, "model", raw.line))

    def _look_up(self, name: Any, line: int) -> ModelSpec | None:
        spec = self.known.get(name) if isinstance(name, str) else None
        if spec is not None:
            self.used.setdefault(spec.api_id, spec)
            return spec
        if isinstance(name, str) and name in self.missing:
            self.diags.add(self.display, line, f"model {short(name)}: {self.missing[name]}"
                           f"{suggest(name, list(self.known))}")
        elif isinstance(name, str) and _MODEL_ID.fullmatch(name):
            self.unknown.setdefault(name, f"{self.display}:{line}")
            self.diags.add(self.display, line, f"unknown model {short(name)}{suggest(name, list(self.known))}: "
                           f"batcher knows {', '.join(self.known)}; `batcher models {name}` fetches its "
                           "description from the API (a run does it itself)")
        else:
            self.diags.add(self.display, line, f"model must be a PixelDojo model id such as {DEFAULT_MODEL}, "
                           f"got {short(name)}")
        return None


def _raw_rows(doc: LineDict) -> list[Any]:
    rows = doc.get("rows")
    return list(rows) if isinstance(rows, list) else []


def _mapping(doc: LineDict, name: str, what: str, display: str, diags: Diagnostics) -> dict[Any, Any]:
    """An optional top-level mapping field (empty when absent or wrong, the problem reported)."""
    raw = doc.get(name, {})
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        diags.add(display, value_line(doc, name, 1), f"{name} must {what}, not {type_name(raw)}")
        return {}
    return raw


def _defaults(doc: LineDict, models: list[ModelSpec], display: str, diags: Diagnostics) -> dict[str, Located]:
    """Defaults by parameter name; a default any of the manifest's models takes is accepted (a
    row whose model lacks it renders without it)."""
    defaults: dict[str, Located] = {}
    raw = _mapping(doc, "defaults", "be a mapping of API parameters", display, diags)
    for key, value in raw.items():
        if key == META_FIELD:
            meta = meta_field(raw, display, diags)
            if meta is not None:
                defaults[META_FIELD] = meta
            continue
        p = next((found for m in models if (found := m.param(key)) is not None), None) \
            if isinstance(key, str) else None
        if p is None:
            names = list(dict.fromkeys(n for m in models for n in m.names()))
            diags.add(display, key_line(raw, key, 1),
                      f"unknown API parameter {short(key)} in defaults{suggest(key, names)}")
            continue
        defaults[p.name] = Located(value, display, value_line(raw, key, 1))
    return defaults


def _reference_sets(doc: LineDict, base: Path, display: str, diags: Diagnostics, found: dict[str, LocalFile]
                    ) -> dict[str, Located]:
    """Each set's references, local ones resolved to their images' content addresses (see
    `references.local`); a set with a problem keeps the offending value, which rows then refuse quietly."""
    sets: dict[str, Located] = {}
    raw = _mapping(doc, "reference_sets", "map names to lists of image URLs or local images", display, diags)
    for name, urls in raw.items():
        line = value_line(raw, name, 1)
        if not isinstance(name, str):
            diags.add(display, key_line(raw, name, 1), f"a reference set name must be text, got {short(name)}")
            continue
        if isinstance(urls, str):
            urls = [urls]
        if not isinstance(urls, list) or not urls:
            diags.add(display, line, f"reference set {short(name)} must be a non-empty list of image URLs "
                      "or local images")
            continue
        sets[name] = Located(_set_values(name, urls, base, line, display, diags, found), display, line)
    return sets


def _names_local(text: str, base: Path) -> bool:
    """Whether a set's value that is no URL names local images (reads as a path, or exists)."""
    try:
        return looks_like_local(text) or ("://" not in text and (base / text).exists())
    except (OSError, ValueError):
        return False


def _set_values(name: str, urls: list[Any], base: Path, line: int, display: str, diags: Diagnostics,
                found: dict[str, LocalFile]) -> list[Any]:
    values: list[Any] = []
    for i, url in enumerate(urls):
        item_line = urls.item_lines[i] if isinstance(urls, LineList) else line
        if isinstance(url, str) and check_url(url) and _names_local(url, base):
            files, problems = resolve_local(url, base, f"{display}:{item_line}")
            for why in problems:
                diags.add(display, item_line, f"reference set {short(name)}: {why}")
            values.extend(url for _ in problems[:1])  # a broken set: rows using it are refused
            values.extend(f.address for f in files)
            for f in files:
                found.setdefault(f.address, f)
            continue
        problem = check_url(url)
        if problem:
            diags.add(display, item_line, f"reference set {short(name)}: {problem}")
        values.append(url)
    return values


def _rows(doc: LineDict, path: Path, display: str, model: ModelSpec, diags: Diagnostics,
          row_models: list[ModelSpec | None]) -> list[Row]:
    """The rows written in the manifest and those of its `from:` files, in order."""
    rows: list[Row] = []
    raw_rows = doc.get("rows")
    if "rows" not in doc:
        diags.add(display, doc.line, "missing field 'rows' (a list of prompts to render)")
        return rows
    if not isinstance(raw_rows, list) or not raw_rows:
        diags.add(display, value_line(doc, "rows", 1), "rows must be a non-empty list of rows")
        return rows
    for i, raw in enumerate(raw_rows):
        line = raw_rows.item_lines[i] if isinstance(raw_rows, LineList) else 1
        if not isinstance(raw, LineDict):
            diags.add(display, line, f"each row must be a mapping with a prompt, not {type_name(raw)}")
            continue
        own = row_models[i] if i < len(row_models) else None
        if own is None and raw.get("model") is not None:
            continue  # its model is unknown (reported where it is named): its fields cannot be judged
        if FROM_FIELD in raw:
            found = rows_from_file(raw, path, display, len(rows), own or model, diags)
            for row in found:
                row.model = own
                named = row.fields.get("model")
                if named is not None and named.value != (own or model).api_id:
                    diags.add(named.file, named.line, "a model column is not read in rows from a file: give "
                                                      "'model:' on the entry that names the file")
            rows.extend(found)
        else:
            fields = row_fields(raw, display, own or model, diags, allow_from=False)
            rows.append(Row(len(rows), display, raw.line, fields, model=own))
    return rows
