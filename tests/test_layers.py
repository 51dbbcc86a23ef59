"""Data flows one way: each module (or package) imports only from modules upstream of it, and
only the cli package imports click or exits the process."""
from __future__ import annotations

import ast
from pathlib import Path

import batcher

ORDER = ["errors", "defaults", "text",
         "redaction", "money", "patterns", "schemarules", "imagefacts", "models", "modelschema",
         "template",
         "states", "renderfit", "safetynet", "policy", "webhooks", "diagnostics", "textfiles", "yamlfile", "rowfields",
         "localrefs", "rowfiles", "manifest",
         "rowrefs", "expansion", "rowkeys", "plan", "jobrows", "files", "media", "ledger", "answers",
         "transfers", "client", "catalog",
         "simimages", "simrefs", "simmodels", "simwebhooks", "simulator", "preflight", "refstore", "run", "export",
         "report", "display", "views", "watchview", "api", "benchoracle", "benchbreakdown", "benchwhole", "benchhooks",
         "benchshared", "benchstage", "bench", "cli", "__main__"]
PACKAGE = Path(batcher.__file__).parent


def files_of(name: str) -> list[Path]:
    """The source files of a top-level module or package."""
    folder = PACKAGE / name
    return sorted(folder.glob("*.py")) if folder.is_dir() else [PACKAGE / f"{name}.py"]


def imports_of(path: Path) -> tuple[set[str], set[str]]:
    """(batcher modules, external packages) a file imports; a package's files name their siblings
    with one dot and the rest of batcher with two."""
    in_package = path.parent != PACKAGE
    tree = ast.parse(path.read_text())
    local, external = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            top_level = node.level == (2 if in_package else 1)
            if top_level:
                if node.module:
                    local.add(node.module.split(".")[0])
                else:
                    local.update(alias.name for alias in node.names)
            elif node.level == 0 and node.module:
                external.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            external.update(alias.name.split(".")[0] for alias in node.names)
    return local, external


def test_every_module_has_a_place_in_the_order():
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert modules | packages == set(ORDER)


def test_modules_import_only_upstream():
    for name in ORDER:
        for path in files_of(name):
            local, _ = imports_of(path)
            for dep in local - {"__init__"}:
                if dep == "batcher" or dep not in ORDER:
                    continue
                assert ORDER.index(dep) < ORDER.index(name), f"{path.name} of {name} imports {dep}, downstream"


def test_only_the_cli_imports_click_or_exits():
    for path in PACKAGE.rglob("*.py"):
        _, external = imports_of(path)
        if "cli" not in (path.stem, path.parent.name):
            assert "click" not in external, path.name
            assert "sys.exit(" not in path.read_text(), path.name


def test_no_module_is_crowded():
    """Rooms of one job: no module over 400 lines, no class over 250, no function over 60 (the
    simulator, a fake server, may exceed where splitting would hurt reading)."""
    crowded = []
    for path in PACKAGE.rglob("*.py"):
        if path.stem == "simulator":
            continue
        text = path.read_text()
        if text.count("\n") > 400:
            crowded.append(f"{path.name}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            size = (node.end_lineno or node.lineno) - node.lineno + 1
            if isinstance(node, ast.ClassDef) and size > 250:
                crowded.append(f"{path.name}: class {node.name} {size} lines")
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and size > 60:
                crowded.append(f"{path.name}: {node.name}() {size} lines")
    assert not crowded, crowded
