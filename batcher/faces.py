"""Package faces that stay light: a package names what it exports, and each name is imported from
its module when first used, so `import batcher` or one light module never pulls in the ledger's
database packages (see tests/test_startup.py)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy(package: str, where: dict[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` for `package`: `where` maps each exported name to its module (a name
    mapped to itself is that module)."""
    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        found = importlib.import_module(f"{package}.{module}")
        return found if module == name else getattr(found, name)
    return __getattr__
