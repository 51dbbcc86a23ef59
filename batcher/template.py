"""Prompt templates: `{name}` is a variable, `{{` and `}}` are literal braces.

Any other brace text (`{ }`, `{"a": 1}`) is left as written, so prompts that happen to contain
braces need no escaping.
"""

from __future__ import annotations

import re
from typing import Any

_TOKEN = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")


def variables_in(template: str) -> set[str]:
    """The variable names a template uses."""
    return {m.group(1) for m in _TOKEN.finditer(template) if m.group(1)}


def render(template: str, variables: dict[str, Any]) -> tuple[str, list[str]]:
    """Fill in a template; returns the text and the names it used but `variables` lacks."""
    missing: list[str] = []

    def replace(m: re.Match[str]) -> str:
        token = m.group(0)
        if token == "{{":
            return "{"
        if token == "}}":
            return "}"
        name = m.group(1)
        if name in variables:
            return str(variables[name])
        missing.append(name)
        return token

    return _TOKEN.sub(replace, template), missing
