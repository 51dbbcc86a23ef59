"""Package faces that stay light: a face imports the names it exports under `if TYPE_CHECKING:`
(type checkers see them there), and each is imported from its module when first used, so
`import batcher` or one light module never pulls in the ledger's database packages (see
tests/test_startup.py)."""

from __future__ import annotations

import ast
import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def lazy(package: str) -> Callable[[str], Any]:
    """The module `__getattr__` of `package`'s face: a name it imports under `if TYPE_CHECKING:`
    (`from .module import name`, or `from . import module`) comes from that module when first used."""
    where: dict[str, tuple[str, str | None]] = {}

    def __getattr__(name: str) -> Any:
        if not where:
            where.update(typed_imports(sys.modules[package].__file__ or ""))
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, attribute = where[name]
        found = importlib.import_module(f"{package}.{module}")
        value = found if attribute is None else getattr(found, attribute)
        setattr(sys.modules[package], name, value)  # found once: the next use is a plain attribute
        return value
    return __getattr__


def typed_imports(path: str) -> dict[str, tuple[str, str | None]]:
    """Name -> (module, its name there; None: the module itself) for what the face at `path`
    imports from its own modules under `if TYPE_CHECKING:`."""
    found: dict[str, tuple[str, str | None]] = {}
    for node in ast.parse(Path(path).read_text(encoding="utf-8")).body:
        if not (isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
            continue
        for imp in node.body:
            if isinstance(imp, ast.ImportFrom) and imp.level == 1:
                for alias in imp.names:
                    if imp.module:
                        found[alias.asname or alias.name] = (imp.module, alias.name)
                    else:
                        found[alias.asname or alias.name] = (alias.name, None)
    return found
