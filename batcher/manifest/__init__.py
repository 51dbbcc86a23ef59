"""The manifest: a YAML document and its row files read into checked values, every problem a
`FILE:LINE: message` diagnostic.

    diagnostics collecting problems, deduplicated and capped; '(did you mean X?)'
    textfiles   reading text files safely (regular, capped, UTF-8)
    yamlfile    YAML to values that remember their lines, within limits
    template    prompt templates
    rowfields   a row before expansion: located values, its fields and their names
    rowfiles    rows from CSV and JSONL files (`from:`)
    stores      `reference_store:` and `outputs:`, the buckets a manifest names
    document    the manifest's top-level structure: `load_manifest`
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..faces import lazy

if TYPE_CHECKING:
    from .diagnostics import Diagnostics, nearest, suggest
    from .document import MAX_REPEAT, Manifest, is_safe_batch_name, load_manifest, looks_like_local_file
    from .rowfields import META_FIELD, Located, Row, as_list
    from .template import Template, compile_template, is_template_value, render, scalar_problem, variables_in
    from .yamlfile import MAX_YAML_VALUES, LineDict, sexagesimal_problem

__getattr__ = lazy(__name__)

__all__ = [
    "MAX_REPEAT",
    "MAX_YAML_VALUES",
    "META_FIELD",
    "Diagnostics",
    "LineDict",
    "Located",
    "Manifest",
    "Row",
    "Template",
    "as_list",
    "compile_template",
    "is_safe_batch_name",
    "is_template_value",
    "load_manifest",
    "looks_like_local_file",
    "nearest",
    "render",
    "scalar_problem",
    "sexagesimal_problem",
    "suggest",
    "variables_in",
]
