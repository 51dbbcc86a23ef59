"""The public Python API is what `batcher.__all__` names (as httpx checks its own): every name there
exists, and every public name `batcher/__init__.py` binds is there. Its names are imported when
first used, so `import batcher` alone stays light, and the package says it is typed (py.typed)."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import tomllib

import batcher

INCLUDED_PRIVATE_MEMBERS = {"__version__"}


def bound_at_top() -> set[str]:
    """The public names batcher/__init__.py binds: imported (for type checkers too), defined or assigned."""
    names: set[str] = set()
    body = list(ast.parse(Path(batcher.__file__).read_text()).body)
    while body:
        node = body.pop(0)
        if isinstance(node, ast.If):  # `if TYPE_CHECKING:` imports
            body.extend(node.body)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return {n for n in names if not n.startswith("_") or n in INCLUDED_PRIVATE_MEMBERS} - {"annotations",
                                                                                          "TYPE_CHECKING"}


def test_all_imports_are_exported():
    assert batcher.__all__ == sorted(bound_at_top())


def test_every_exported_name_exists_and_is_batchers():
    for name in batcher.__all__:
        value = getattr(batcher, name)
        module = value.__name__ if name == "api" else getattr(value, "__module__", "batcher")
        assert module.startswith("batcher"), (name, module)
    assert set(batcher.__all__) <= set(dir(batcher))


def test_an_unknown_name_is_an_attribute_error():
    try:
        batcher.no_such_name  # noqa: B018 - the access is the test
    except AttributeError as e:
        assert "no_such_name" in str(e)
    else:
        raise AssertionError("batcher.no_such_name exists")


def test_importing_batcher_imports_no_database_package():
    probe = "import sys, batcher; print('sqlalchemy' in sys.modules, 'sqlmodel' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.split() == ["False", "False"]


def test_the_package_says_it_is_typed():
    root = Path(batcher.__file__).parent
    assert (root / "py.typed").is_file()
    config = tomllib.loads((root.parent / "pyproject.toml").read_text())
    assert "py.typed" in config["tool"]["setuptools"]["package-data"]["batcher"]


def test_every_package_face_exports_what_it_names_and_nothing_else():
    """A package's face names its exports once, under `if TYPE_CHECKING:`; each is there when used."""
    import importlib

    from batcher.faces import typed_imports
    root = Path(batcher.__file__).parent
    for face in sorted(root.glob("*/__init__.py")):
        package = importlib.import_module(f"batcher.{face.parent.name}")
        named = typed_imports(str(face))
        if not named:
            continue  # an eager face (ledger, run, cli) imports what it exports
        assert sorted(package.__all__) == sorted(named), face.parent.name  # once each, all of them
        for name in package.__all__:
            assert getattr(package, name) is not None, (face.parent.name, name)
