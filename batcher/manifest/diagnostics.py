"""Diagnostics: collecting a check's `FILE:LINE: message` problems, deduplicated and capped, and
the '(did you mean X?)' hint many of them carry."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

from ..errors import Diagnostic, ManifestError

MAX_DIAGNOSTICS = 50


class Diagnostics:
    """Collects diagnostics, deduplicated and capped."""

    def __init__(self) -> None:
        self.items: list[Diagnostic] = []
        self._seen: set[Diagnostic] = set()
        self.dropped = 0

    def add(self, file: str, line: int, message: str) -> None:
        d = Diagnostic(file, max(1, line), " ".join(message.split()))
        if d in self._seen:
            return
        self._seen.add(d)
        if len(self.items) < MAX_DIAGNOSTICS:
            self.items.append(d)
        else:
            self.dropped += 1

    def raise_if_any(self) -> None:
        if self.items:
            items = sorted(self.items, key=lambda d: (d.file, d.line))
            if self.dropped:
                last = items[-1]
                items.append(Diagnostic(last.file, last.line,
                                        f"... and {self.dropped} more problem(s) not shown"))
            raise ManifestError(items)


def suggest(name: Any, valid: list[str] | tuple[str, ...]) -> str:
    """' (did you mean X?)' for the nearest valid name, or ''."""
    close = difflib.get_close_matches(str(name), list(valid), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def nearest(name: str, first: Sequence[str], then: Sequence[str]) -> str | None:
    """The name closest to `name` by edit distance among `first` and `then` together (of those
    close enough for `suggest`), one of `first` winning a tie; None when none is close."""
    candidates = list(dict.fromkeys([*first, *then]))
    close = difflib.get_close_matches(name, candidates, n=len(candidates), cutoff=0.6)
    preferred = set(first)
    return min(close, key=lambda c: (edit_distance(name, c), c not in preferred), default=None)


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance: the fewest one-character insertions, deletions and substitutions."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]
