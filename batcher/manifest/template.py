"""Prompt templates: `{name}` is a variable, `{{` and `}}` are literal braces.

Any other brace text (`{ }`, `{"a": 1}`) is left as written, so prompts that happen to contain
braces need no escaping.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

_TOKEN = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")


def variables_in(template: str) -> set[str]:
    """The variable names a template uses."""
    return {m.group(1) for m in _TOKEN.finditer(template) if m.group(1)}


def is_template_value(value: Any) -> bool:
    """Whether a value may fill a `{variable}`: text or a finite number, not a list or mapping
    (see `scalar_problem` for the numbers that are not)."""
    return not isinstance(value, (list, tuple, dict, set)) and scalar_problem(value) is None


def scalar_problem(value: Any) -> str | None:
    """For true/false, NaN or an infinity, what a `{variable}` value must be instead: they would
    render as `True`, `nan` or `inf`, text no prompt means (YAML reads unquoted `yes` as true)."""
    if isinstance(value, bool):
        return "text or a number, not true/false"
    if isinstance(value, float) and not math.isfinite(value):
        return f"text or a finite number, not {value!r}"
    return None


@dataclass(frozen=True)
class Template:
    """A parsed template: literal text around each variable, so a row parses its prompt once
    and each job only joins pieces."""

    parts: tuple[str, ...]  # literal text; one more than `names`
    names: tuple[str, ...]  # the variable at each gap, in order
    counts: tuple[tuple[str, int], ...]  # each distinct variable and how often it appears

    def missing(self, variables: dict[str, Any]) -> list[str]:
        """Distinct names the template uses but `variables` lacks, in order of first use."""
        return [name for name, _ in self.counts if name not in variables]

    def length(self, variables: dict[str, Any]) -> int:
        """The length `render` would return, without building the text (a missing variable
        stays as written)."""
        n = sum(len(part) for part in self.parts)
        for name, count in self.counts:
            n += count * (len(str(variables[name])) if name in variables else len(name) + 2)
        return n

    def render(self, variables: dict[str, Any]) -> str:
        """The filled-in text; a missing variable stays as written."""
        out = [self.parts[0]]
        for name, part in zip(self.names, self.parts[1:], strict=True):
            out.append(str(variables[name]) if name in variables else "{" + name + "}")
            out.append(part)
        return "".join(out)


def compile_template(template: str) -> Template:
    """Parse a template once, for rendering it many times."""
    parts: list[str] = []
    names: list[str] = []
    literal: list[str] = []
    pos = 0
    for m in _TOKEN.finditer(template):
        literal.append(template[pos:m.start()])
        pos = m.end()
        token = m.group(0)
        if token in ("{{", "}}"):
            literal.append(token[0])
            continue
        parts.append("".join(literal))
        literal = []
        names.append(m.group(1))
    literal.append(template[pos:])
    parts.append("".join(literal))
    return Template(tuple(parts), tuple(names), tuple(Counter(names).items()))


def render(template: str, variables: dict[str, Any]) -> tuple[str, list[str]]:
    """Fill in a template; returns the text and the names it used but `variables` lacks."""
    t = compile_template(template)
    return t.render(variables), [name for name in t.names if name not in variables]
