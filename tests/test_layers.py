"""Data flows one way: each module imports only from modules upstream of it, and only cli.py
imports click."""
from __future__ import annotations

import ast
from pathlib import Path

import batcher

ORDER = ["errors", "models", "template", "states", "policy", "manifest", "plan", "files", "media", "ledger", "client", "simulator",
         "pool", "export", "report", "display", "api", "bench", "cli", "__main__"]
PACKAGE = Path(batcher.__file__).parent


def imports_of(path: Path) -> tuple[set[str], set[str]]:
    tree = ast.parse(path.read_text())
    local, external = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                if node.module:
                    local.add(node.module.split(".")[0])
                else:
                    local.update(alias.name for alias in node.names)
            elif node.module:
                external.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            external.update(alias.name.split(".")[0] for alias in node.names)
    return local, external


def test_every_module_has_a_place_in_the_order():
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert modules == set(ORDER)


def test_modules_import_only_upstream():
    for name in ORDER:
        local, _ = imports_of(PACKAGE / f"{name}.py")
        for dep in local - {"__init__"}:
            if dep == "batcher" or dep not in ORDER:
                continue
            assert ORDER.index(dep) < ORDER.index(name), f"{name} imports {dep}, which is downstream of it"


def test_only_the_cli_imports_click_or_exits():
    for path in PACKAGE.glob("*.py"):
        _, external = imports_of(path)
        if path.stem != "cli":
            assert "click" not in external, path.name
            assert "sys.exit(" not in path.read_text(), path.name
