"""Values as people read them in messages (type names, short reprs, credits, durations, times,
jobs per state), and numbers as an answer from outside may give them."""

from __future__ import annotations

import enum
import math
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any


class Word(str, enum.Enum):
    """An enum whose members are the words people and the ledger see (`str(x)` is the word)."""

    def __str__(self) -> str:
        return str(self.value)


def type_name(value: Any) -> str:
    """A user-facing name for a YAML/JSON value's type."""
    if value is None:
        return "nothing"
    names: dict[type, str] = {dict: "a mapping", list: "a list", str: "text", bool: "true/false", int: "a number",
                              float: "a decimal number"}
    # YAML's line-keeping lists and mappings (and any other subclass) read as what they are.
    return next((name for kind, name in names.items() if type(value) is kind), None) or next(
        (name for kind, name in names.items() if isinstance(value, kind) and kind in (dict, list, str)),
        type(value).__name__)


def lone_surrogate(value: Any) -> str | None:
    """The first lone surrogate (`\\ud800`: half of a UTF-16 pair, which JSON's escapes can name
    but no text holds) in a value's texts, keys included, as its escape; None when there is none.
    Such a text cannot be written anywhere (a hash, the ledger, the console): it is refused where
    it is read. Walked without recursion: a value may be nested as deep as its parser allowed."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not item.isascii():
                found = next((c for c in item if "\ud800" <= c <= "\udfff"), None)
                if found is not None:
                    return f"\\u{ord(found):04x}"
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def short(value: Any, depth: int = 2) -> str:
    """A repr for messages that stays short whatever the value (a huge list, a long string)."""
    if isinstance(value, list):
        if depth <= 0:
            return "[...]"
        items = [short(v, depth - 1) for v in value[:4]]
        return "[" + ", ".join(items + (["..."] if len(value) > 4 else [])) + "]"
    if isinstance(value, dict):
        if depth <= 0:
            return "{...}"
        items = [f"{short(k, 0)}: {short(v, depth - 1)}" for k, v in list(value.items())[:4]]
        return "{" + ", ".join(items + (["..."] if len(value) > 4 else [])) + "}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def format_credits(value: float | Decimal) -> str:
    """1234.5 -> '1,234.5'; whole numbers without decimals."""
    return f"{value:,.2f}".rstrip("0").rstrip(".")


# The order states are listed in, people first wanting what is done.
STATE_ORDER = ["completed", "rendered", "submitted", "submitting", "pending", "unknown", "failed", "expired",
               "cancelled"]


def state_counts(counts: dict[str, int]) -> str:
    """`3 completed, 1 failed`: jobs per state, in STATE_ORDER (then any state it does not name),
    states without jobs left out."""
    order = [*STATE_ORDER, *(s for s in counts if s not in STATE_ORDER)]
    return ", ".join(f"{counts[s]} {s}" for s in order if counts.get(s))


def format_seconds(s: float) -> str:
    """A duration as people read it: 42s, 3m07s, 2h05m."""
    s = int(s)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def iso(epoch: float | None) -> str | None:
    """A wall-clock time as ISO 8601 in UTC, or None."""
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat() if epoch else None


def as_number(value: Any) -> float | None:
    """A JSON number as a finite float, or None (text, true/false, NaN, infinity, or an integer too
    large for a float: an answer cannot crash us by being absurd)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None
