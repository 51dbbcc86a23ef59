"""The ledger's one write convention: every write is an Operation, committed by `Ledger.write`
(or `write_many`, which the run's group writer calls); no other method commits, and no caller
drops an operation uncommitted."""
from __future__ import annotations

import ast
import inspect
import re
import textwrap
from pathlib import Path

import pytest

import batcher
from batcher.ledger import Ledger, Operation

# Commit by themselves, by design: the schema's upgrade (opening a ledger), and the answer journal,
# whose file is emptied only after its records commit, under the file's lock.
COMMITTING = {"write", "write_many", "upgrade", "apply_journal"}
_WRITE_SQL = re.compile(r"\b(INSERT|UPDATE|DELETE)\b")
ROOT = Path(batcher.__file__).parent
TESTS = Path(__file__).parent


def public_methods() -> dict[str, object]:
    return {name: fn for name, fn in inspect.getmembers(Ledger, inspect.isfunction)
            if not name.startswith("_") and fn.__module__.startswith("batcher.ledger")}


def returns_operation(fn: object) -> bool:
    return str(inspect.signature(fn).return_annotation).startswith("Operation[")  # type: ignore[arg-type]


def operation_methods() -> set[str]:
    return {name for name, fn in public_methods().items() if returns_operation(fn)}


def body(fn: object) -> ast.AST:
    return ast.parse(textwrap.dedent(inspect.getsource(fn)))  # type: ignore[arg-type]


def commits(tree: ast.AST) -> bool:
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in ("write", "write_many")
               and isinstance(n.func.value, ast.Name) and n.func.value.id == "self" for n in ast.walk(tree))


def writes_sql(tree: ast.AST) -> bool:
    return any(isinstance(n, ast.Constant) and isinstance(n.value, str) and _WRITE_SQL.search(n.value)
               for n in ast.walk(tree))


def takes_connection(fn: object) -> bool:
    return "conn" in inspect.signature(fn).parameters  # type: ignore[arg-type]


def test_every_write_method_returns_an_operation_and_only_the_committing_few_commit():
    methods = public_methods()
    assert len(operation_methods()) >= 20  # the convention is read from the annotations: they are there
    for name, fn in methods.items():
        tree = body(fn)
        if name in COMMITTING:
            continue
        assert not commits(tree), f"Ledger.{name} commits by itself: return an Operation instead"
        if writes_sql(tree) and not takes_connection(fn):
            assert returns_operation(fn), f"Ledger.{name} writes: it must return an Operation"


def test_nothing_in_the_ledger_commits_but_the_committing_few():
    for path in sorted((ROOT / "ledger").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name not in COMMITTING:
                assert not commits(node), f"{path.name}: {node.name} commits by itself"


def dropped_operations(source: str, names: set[str], receivers: re.Pattern[str]) -> list[int]:
    """Lines of statements that build an operation of the ledger and do nothing with it (but
    within `pytest.raises`: an operation built only to see the building refuse)."""
    tree = ast.parse(source)
    refusing = {id(n) for w in ast.walk(tree) if isinstance(w, ast.With)
                and any("raises" in ast.unparse(item.context_expr) for item in w.items)
                for statement in w.body for n in ast.walk(statement)}
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) and id(node) not in refusing:
            func = node.value.func
            if isinstance(func, ast.Attribute) and func.attr in names and receivers.search(ast.unparse(func.value)):
                lines.append(node.lineno)
    return lines


LEDGERS = re.compile(r"(^|\.)(led|ledger|\w*_ledger)$")
INSIDE_THE_LEDGER = re.compile(r"^self$")


def test_no_caller_drops_an_operation_uncommitted():
    names = operation_methods()
    dropped = [f"{path.relative_to(ROOT.parent)}:{line}"
               for path in sorted([*ROOT.rglob("*.py"), *TESTS.rglob("*.py")])
               for line in dropped_operations(path.read_text(), names, LEDGERS)]
    dropped += [f"{path.name}:{line}" for path in sorted((ROOT / "ledger").glob("*.py"))
                for line in dropped_operations(path.read_text(), names, INSIDE_THE_LEDGER)]
    assert dropped == []


def test_the_check_finds_a_dropped_operation():
    source = ("def f(ledger, ctx):\n    ledger.release('b', 'me')\n    ctx.note('x')\n"
              "    ledger.write(ledger.claim())\n    with pytest.raises(E):\n        ledger.claim()\n")
    assert dropped_operations(source, {"release", "note", "claim"}, LEDGERS) == [2]


def test_an_operation_with_nothing_to_write_opens_no_transaction(tmp_path, monkeypatch):
    ledger = Ledger(tmp_path / "l.db")
    try:
        op = ledger.release_jobs([], "me")
        assert isinstance(op, Operation)
        monkeypatch.setattr(ledger.engine, "connect", lambda *a, **k: pytest.fail("a transaction was opened"))
        assert ledger.write(op) == 0
        assert ledger.write(ledger.remember_stored([])) is None
    finally:
        monkeypatch.undo()
        ledger.close()
