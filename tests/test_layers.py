"""Data flows one way: each package (or shared module) imports only from those upstream of it, each
module of a package only from the modules upstream of it in that package, and only the cli package
imports click or exits the process."""
from __future__ import annotations

import ast
from pathlib import Path

import batcher

# Between packages: the shared modules at the top first, then the packages, the command line last.
ORDER = ["faces", "errors", "defaults", "text", "redaction", "money", "states",
         "models", "policy", "storage", "references", "manifest", "plan", "outputs", "ledger", "client",
         "simulator", "run", "views", "launch", "api", "bench", "cli", "__main__"]

# Within each package. A package's face (__init__) may import any of its modules; the cli's face
# also defines the command group its modules add to (and imports them last), so it comes first there.
WITHIN = {
    "models": ["patterns", "schema", "tables", "live"],
    "policy": ["renderfit", "safetynet", "memory", "polls", "budget", "costs", "decisions"],
    "storage": ["s3"],
    "references": ["facts", "local", "store"],
    "manifest": ["diagnostics", "textfiles", "yamlfile", "template", "rowfields", "rowfiles", "stores", "document"],
    "plan": ["references", "expansion", "keys", "compiled", "jobs", "staging"],
    "outputs": ["files", "media", "wholeness", "bucket"],
    "ledger": ["rows", "schema", "dialect", "migrations", "store", "jobs", "control", "curation", "orphans",
               "transitions", "answers", "journal", "leases", "figures", "fleet", "references", "modelinfo"],
    "client": ["answers", "transfers", "connections", "http", "catalog", "preflight"],
    "simulator": ["images", "references", "models", "webhooks", "clips", "config", "wire", "jobs", "server", "journal",
                  "transport"],
    "run": ["failpoints", "outcomes", "webhooks", "options", "pacer", "pauses", "threads", "writer",
            "downloads_queue", "pokes", "wakeups", "state", "context", "records", "uploads", "startup", "feeder",
            "polling", "listener", "hooks", "submission", "downloads", "control", "reporting", "runner"],
    "views": ["commands", "watch", "progress", "record", "exports", "shards", "report"],
    "bench": ["oracle", "breakdown", "whole", "priors", "hooks", "shared", "stage", "suite"],
    "cli": ["__init__", "tools", "catalog", "plans", "results", "running", "control", "watch", "batches", "reference",
            "curation"],
}
PACKAGE = Path(batcher.__file__).parent


def files_of(name: str) -> list[Path]:
    """The source files of a top-level module or package."""
    folder = PACKAGE / name
    return sorted(folder.glob("*.py")) if folder.is_dir() else [PACKAGE / f"{name}.py"]


def imports_of(path: Path) -> tuple[set[str], set[str], set[str]]:
    """(top-level batcher names, sibling modules, external packages) a file imports. A package's
    files name their siblings with one dot (`from . import x` names its face, `__init__`, unless x
    is a sibling module) and the rest of batcher with two."""
    in_package = path.parent != PACKAGE
    siblings = {p.stem for p in path.parent.glob("*.py")} if in_package else set()
    tree = ast.parse(path.read_text())
    local, sibling, external = set(), set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = node.module.split(".") if node.module else []
            if node.level == 0 and module and module[0] == "batcher":
                module, level = module[1:], (2 if in_package else 1)
            else:
                level = node.level
            if level == 0:
                external.update(module[:1])
            elif in_package and level == 1:
                if module:
                    sibling.add(module[0])
                else:
                    sibling.update(a.name if a.name in siblings else "__init__" for a in node.names)
            elif module:
                local.add(module[0])
            else:
                local.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "batcher" and len(parts) > 1:
                    local.add(parts[1])
                else:
                    external.add(parts[0])
    return local, sibling, external


def test_every_module_has_a_place_in_the_order():
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert modules | packages == set(ORDER)
    assert set(WITHIN) == packages
    for name, order in WITHIN.items():
        assert {p.stem for p in files_of(name)} - {"__init__"} == set(order) - {"__init__"}, name


def test_packages_import_only_upstream():
    for name in ORDER:
        for path in files_of(name):
            local, _, _ = imports_of(path)
            for dep in local - {name}:
                if dep not in ORDER:
                    continue  # the package's own face (`from .. import __version__`)
                assert ORDER.index(dep) < ORDER.index(name), f"{path.name} of {name} imports {dep}, downstream"


def test_modules_import_only_upstream_within_their_package():
    for name, order in WITHIN.items():
        for path in files_of(name):
            if path.stem == "__init__":
                continue  # a face may name any of its modules
            _, sibling, _ = imports_of(path)
            for dep in sibling - {path.stem}:
                assert dep in order and order.index(dep) < order.index(path.stem), \
                    f"{name}/{path.name} imports {dep}, downstream in {name}"


def test_only_the_cli_imports_click_or_exits():
    for path in PACKAGE.rglob("*.py"):
        _, _, external = imports_of(path)
        if "cli" not in (path.stem, path.parent.name):
            assert "click" not in external, path.name
            assert "sys.exit(" not in path.read_text(), path.name


def test_no_module_is_crowded():
    """Rooms of one job: no module over 400 lines, no class over 250, no function over 60."""
    crowded = []
    for path in PACKAGE.rglob("*.py"):
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


def test_every_folder_of_modules_is_a_package_the_repository_keeps():
    """A folder of modules without its __init__.py (one an ignore rule kept out of git, say) works
    in a working tree only by accident of namespace packages, and breaks a fresh clone."""
    import subprocess
    folders = {p.parent for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}
    assert all((f / "__init__.py").exists() for f in folders), sorted(map(str, folders))
    tracked = subprocess.run(["git", "ls-files", "--", str(PACKAGE)], capture_output=True, text=True,
                             cwd=PACKAGE.parent)
    if tracked.returncode == 0 and tracked.stdout:  # (an installed copy without git: nothing to compare)
        kept = set(tracked.stdout.split())
        root = PACKAGE.parent
        missing = [str((f / "__init__.py").relative_to(root)) for f in folders
                   if str((f / "__init__.py").relative_to(root)) not in kept]
        assert not missing, f"not in the repository: {missing}"
