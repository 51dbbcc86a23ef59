"""Render times remembered from earlier batches: each job class's seed for the poll planner, the
same censored fit a run makes, over the renders the ledger kept.

Pure: the ledger's history is passed in.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .renderfit import fit_censored_normal

# A class's key in the ledger (model, duration, resolution) -> (completed renders, the most recent
# ones as (render_seconds, seconds from submission until the poll that saw it done)).
History = Mapping[tuple[Any, Any, Any], tuple[int, list[tuple[float, float | None]]]]


@dataclass(frozen=True)
class RenderSeed:
    """What earlier batches measured of one job class: the fitted mean and spread of its render
    seconds, from `count` renders."""

    mean: float
    std: float
    count: int


def remembered_intervals(rows: Iterable[tuple[float, float | None]]) -> list[tuple[float, float]]:
    """Each remembered render as the interval it is known to have ended in. The ledger keeps a
    render's midpoint (between the last poll that saw it running, or its submission, and the first
    that saw it done) and, through its timestamps, the upper end: the lower end is 2*mid - upper
    (clamped at 0). Without an upper end (or with clocks that disagree) the midpoint stands alone."""
    out = []
    for mid, upper in rows:
        if mid is None or not math.isfinite(mid) or mid < 0:
            continue
        if upper is None or not math.isfinite(upper) or upper < mid:
            out.append((mid, mid))
        else:
            out.append((max(0.0, 2 * mid - upper), upper))
    return out


def seed_from(count: int, rows: Iterable[tuple[float, float | None]], min_samples: int = 3) -> RenderSeed | None:
    """A class's seed: the same censored fit a run makes, over its remembered renders; None with
    fewer than `min_samples` of them (a run would not trust fewer either)."""
    intervals = remembered_intervals(rows)
    if len(intervals) < min_samples:
        return None
    mean, std = fit_censored_normal(intervals)
    return RenderSeed(mean, std, max(count, len(intervals)))


def pooled(seeds: Iterable[RenderSeed]) -> RenderSeed | None:
    """One figure for several classes of a model: the mean and spread of their mixture, each class
    weighted by its count."""
    group = list(seeds)
    total = sum(s.count for s in group)
    if total <= 0:
        return None
    mean = sum(s.count * s.mean for s in group) / total
    second = sum(s.count * (s.std ** 2 + s.mean ** 2) for s in group) / total
    return RenderSeed(mean, math.sqrt(max(second - mean * mean, 0.0)), total)


def class_seeds(history: History, classify: Callable[[tuple[Any, Any, Any]], tuple[Any, ...] | None],
                min_samples: int = 3) -> dict[tuple[Any, ...], RenderSeed]:
    """Seeds per job class of this run from the ledger's history. `classify` names the run's class
    of a ledger key (None: a model this run does not render); keys of one class (a duration left
    to its default and the same written out) are fitted together."""
    merged: dict[tuple[Any, ...], tuple[int, list[tuple[float, float | None]]]] = {}
    for key, (count, rows) in history.items():
        cls = classify(key)
        if cls is None:
            continue
        n, kept = merged.get(cls, (0, []))
        merged[cls] = (n + count, kept + list(rows))
    seeds = {cls: seed_from(count, rows, min_samples) for cls, (count, rows) in merged.items()}
    return {cls: seed for cls, seed in seeds.items() if seed is not None}
