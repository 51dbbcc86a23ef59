"""Which regular expressions from outside (a live schema's `pattern`) batcher will run: Python's
`re` has no time limit, so a pattern with a repetition inside a repetition (`(a+)+$`, `(a|aa)*b`),
which can backtrack for ever on a value made to fail, is refused rather than run."""

from __future__ import annotations

from typing import Any

try:  # the standard library's own parser (named sre_parse before Python 3.11)
    from re import _parser as _sre  # type: ignore[attr-defined,unused-ignore]
except ImportError:  # pragma: no cover - Python 3.10
    import sre_parse as _sre  # type: ignore[no-redef,unused-ignore]

_REPEATS = {"MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"}
MAX_NODES = 10_000


def backtracks(pattern: str) -> bool:
    """Whether running `pattern` could take exponential time: a repetition of anything that
    itself repeats, or of alternatives (the usual shapes of catastrophic backtracking). A pattern
    the parser cannot read is not one (compiling it fails, and says so)."""
    try:
        parsed = _sre.parse(pattern)
    except Exception:
        return False
    budget = [MAX_NODES]
    return _walk(parsed, inside_repeat=False, budget=budget)


def _walk(items: Any, inside_repeat: bool, budget: list[int]) -> bool:
    for op, arg in items:
        budget[0] -= 1
        if budget[0] < 0:
            return True
        name = str(op)
        if name in _REPEATS:
            _, high, sub = arg
            if inside_repeat and high != 1:
                return True
            if _walk(sub, inside_repeat or high > 1, budget):
                return True
        elif name == "BRANCH":
            if inside_repeat:
                return True
            if any(_walk(branch, inside_repeat, budget) for branch in arg[1]):
                return True
        elif name == "SUBPATTERN":
            if _walk(arg[-1], inside_repeat, budget):
                return True
        elif name in ("ASSERT", "ASSERT_NOT") and _walk(arg[1], inside_repeat, budget):
            return True
    return False
