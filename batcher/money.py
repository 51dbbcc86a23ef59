"""Exact credits: every amount batcher counts (estimates, charges, budgets, running totals) is a
Decimal of whole hundredths of a credit, made once where it comes in, never a running float.

The ledger stores amounts as integer hundredths (`to_hundredths`, `from_hundredths`); messages
print them as people write them (`show`: 40, 0.1, 1234.56); JSON gets plain numbers
(`json_safe`), never NaN or infinity. A charge is counted as it is believed (`count_charge`):
one no clip could cost counts the ceiling (`charge_ceiling`), one far below the price the
estimate; the ledger never counts less than the job may have cost.
"""

from __future__ import annotations

import enum
import math
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from .errors import UsageError

CENT = Decimal("0.01")
# The largest amount batcher counts: a trillion credits (the ledger's 64-bit hundredths hold
# 92 quadrillion; a budget or a sum beyond this is a typo, not money).
MAX_CREDITS = Decimal(10) ** 12
ZERO = Decimal(0)
# A charge is believed up to this many times the most a job of its model could cost (its price
# at the longest duration, or the job's estimate): the API's prices move, but not tenfold.
CEILING_MARGIN = Decimal(10)
# The ceiling for a job whose model has no known price and no estimate (a model the API listed
# without a price, under no budget).
FIXED_CEILING = Decimal(10_000)
# A charge below this share of the job's estimate is not believed for the budget: a price does not
# halve unannounced, and a creditCost of 0 would otherwise let a run spend without end.
TRUST_FLOOR = Decimal("0.5")


def _canonical(value: Decimal) -> Decimal:
    """Whole credits without decimals, others without trailing zeros: `str` prints 40, 0.1, 12.5."""
    if value == value.to_integral_value():
        return Decimal(int(value))
    return value.normalize()


def credits(value: Any, *, up: bool = False, down: bool = False) -> Decimal:
    """An amount as exact credits, rounded to hundredths (half up; `up`: to the next hundredth,
    as estimates are, so a reservation is never below the price; `down`: to the one below, as
    budgets are, so a run never spends past the budget it was given). A float is read by its
    shortest repr (0.1 is 0.1, not 0.1000000000000000055...). Raises ValueError for what is not
    a finite number (NaN, infinity, text, true/false) or lies beyond MAX_CREDITS either way."""
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal, str)):
        raise ValueError(f"not an amount of credits: {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"not a finite amount of credits: {value!r}")
    try:
        exact = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    except InvalidOperation:
        raise ValueError(f"not an amount of credits: {value!r}") from None
    if not exact.is_finite() or abs(exact) > MAX_CREDITS:
        raise ValueError(f"not an amount of credits batcher counts: {value!r}")
    rounding = ROUND_CEILING if up else ROUND_FLOOR if down else ROUND_HALF_UP
    return _canonical(exact.quantize(CENT, rounding=rounding))


def estimate_hundredths(estimate: Any) -> int:
    """A job's estimate as the ledger holds it and plans sum it: whole hundredths of a credit,
    rounded up. Raises UsageError for one beyond any amount batcher counts (a --rate of 1e300)."""
    try:
        return int(credits(estimate, up=True) * 100)
    except ValueError:
        raise UsageError(f"a job's estimate of {estimate!r} credits is beyond any amount batcher counts: "
                         f"check --rate and the model's price") from None


def to_hundredths(value: Decimal | int | float | None) -> int | None:
    """What the ledger stores: whole hundredths of a credit (None stays None)."""
    if value is None:
        return None
    return int(credits(value) * 100)


def from_hundredths(value: int | float | None) -> Decimal | None:
    """Credits from what the ledger stores (None stays None; SQLite may hand a sum back as a float
    of whole hundredths, which is exact)."""
    if value is None:
        return None
    return _canonical(Decimal(int(value)) / 100)


def show(value: Decimal | int | float | None) -> str:
    """An amount as people write it in a message: 40, 0.1, 1234.56 (no grouping)."""
    if value is None:
        return "none"
    return str(_canonical(Decimal(value).quantize(CENT, rounding=ROUND_HALF_UP)))


def json_number(value: Decimal) -> int | float:
    """A JSON number for an amount: an int when whole, else the float that prints the same digits."""
    exact = _canonical(value)
    return int(exact) if exact == exact.to_integral_value() else float(exact)


def json_safe(value: Any) -> Any:
    """`value` with every amount (Decimal) a plain JSON number and every float that is not finite
    None: what `json.dumps(..., allow_nan=False)` writes as strict JSON (`Infinity` and `NaN` are
    not JSON, and a reader that meets them fails)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Decimal):
        return json_number(value) if value.is_finite() else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def budget(value: Any, name: str = "budget") -> Decimal | None:
    """A budget as exact credits (None: no budget). Refused (UsageError, one line) unless it is a
    finite number of credits, 0 or more: `nan` would compare false with everything and let a run
    spend without end; `inf` is no budget, and says so by being left out."""
    if value is None:
        return None
    try:
        amount = credits(value if not isinstance(value, str) else value.strip(), down=True)
    except ValueError:
        amount = None
    if amount is None or amount < 0:
        raise UsageError(f"{name} {str(value)[:40]!r}: give a number of credits, 0 or more (at most "
                         f"{MAX_CREDITS:,}); leave it out for no budget")
    return amount


def charge_ceiling(most_per_job: Decimal, estimate: Decimal) -> Decimal:
    """The largest charge believed for one job: CEILING_MARGIN times the most a job of its model
    costs (its price at its longest duration) or its own estimate, whichever is larger; with
    neither known, FIXED_CEILING."""
    base = max(most_per_job, estimate)
    return base * CEILING_MARGIN if base > 0 else FIXED_CEILING


class ChargeVerdict(enum.Enum):
    """How the budget counts what a submission's answer says it charged."""

    BELIEVED = "believed"  # the charge itself
    UNBELIEVABLE = "unbelievable"  # negative or not a number: the estimate
    TOO_LOW = "too-low"  # below TRUST_FLOOR of the job's estimate (0, say): the estimate
    OVER_CEILING = "over-ceiling"  # more than any clip could cost: the ceiling (a lie or a price rise)


def count_charge(claimed: float | None, estimate: Decimal, priced: Decimal, ceiling: Decimal,
                 room: Decimal | None) -> tuple[Decimal, ChargeVerdict]:
    """What the budget counts for a submission answered with `claimed` credits (None: the client
    found no believable number), and why. `estimate`: what was reserved for it; `priced`: the job's
    own estimate (0: its model has no known price, and any charge up to the ceiling is believed);
    `room`: what the budget has left with this reservation back (None: no budget).

    A believed charge is rounded up to the hundredth, as estimates are: the ledger never counts
    less than was spent, and a refund takes back exactly what was counted. Above the ceiling the
    ceiling counts, not the estimate: if the price really rose, counting the estimate would spend
    without bound. A claim beyond any amount batcher counts (1e308) is no price at all: it counts
    the ceiling, at most what the budget has left (at least the estimate)."""
    if claimed is None:
        return estimate, ChargeVerdict.UNBELIEVABLE
    try:
        charge = credits(claimed, up=True)
    except ValueError:
        if isinstance(claimed, (int, float, Decimal)) and not isinstance(claimed, bool) and claimed > 0:
            counted = ceiling if room is None else max(estimate, min(ceiling, room))
            return counted, ChargeVerdict.OVER_CEILING
        return estimate, ChargeVerdict.UNBELIEVABLE
    if charge < 0:
        return estimate, ChargeVerdict.UNBELIEVABLE
    if charge > ceiling:
        return ceiling, ChargeVerdict.OVER_CEILING
    if charge < priced * TRUST_FLOOR:
        return estimate, ChargeVerdict.TOO_LOW
    return charge, ChargeVerdict.BELIEVED
