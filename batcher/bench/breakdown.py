"""Where a whole-process bench run's slot-seconds go (concurrency x wall): rendering, detection
delay, turnaround between jobs, start-up, the last wave, and what is left over.

Pure functions over the simulator's record (`GET /_sim/record`: each job's `submitted`, its
`render_seconds` and `seen_done`, when a status answer first said it ended, on the simulator's
clock, and `clock`, that clock when the record was read) and the bench's own readings of its
clock: when the process started and exited, and when the record was asked for and answered.
time.monotonic() is system-wide on Linux, so the two clocks are one; `clock_offset` checks that
and falls back to the midpoint of the request when they differ.

A slot is busy from a job's submission until the answer that says it ended (rendering, then
detection delay) and idle otherwise: before the first submission (start-up), while the first
wave is being submitted (ramp), between a job's end being seen and the next submission
(turnaround), after the last submission while the batch drains (last wave) and after the last
job's end is seen until the process exits (shutdown: the last downloads, the summary, exit).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

LABELS = {"rendering": "rendering", "detection_first_wave": "detection delay, first wave",
          "detection_rest": "detection delay, the rest", "startup": "start-up before the first submission",
          "ramp": "first wave being submitted", "turnaround": "turnaround (end seen -> next submission)",
          "last_wave": "last wave draining", "shutdown": "after the last end seen, to exit",
          "left_over": "left over"}
PARTS = tuple(LABELS)


@dataclass(frozen=True)
class Breakdown:
    """Slot-seconds of one run by where they went (their sum is `concurrency * wall`), and the
    per-job means behind them."""

    concurrency: int
    wall: float
    jobs: int
    first_wave: int  # jobs in the first wave (the first `concurrency` submitted)
    unseen: int  # jobs no status answer saw end (counted as busy until their render ended)
    rendering: float
    detection_first_wave: float
    detection_rest: float
    startup: float
    ramp: float
    turnaround: float
    last_wave: float
    shutdown: float
    left_over: float

    @property
    def slot_seconds(self) -> float:
        return self.concurrency * self.wall

    def share(self, part: str) -> float:
        """A part as a fraction of all slot-seconds."""
        return float(getattr(self, part)) / self.slot_seconds if self.slot_seconds > 0 else 0.0

    def per_job(self) -> dict[str, float]:
        """Mean seconds per job: detection delay in the first wave and after it, turnaround."""
        rest = max(1, self.jobs - self.first_wave)
        return {"detection_first_wave": self.detection_first_wave / max(1, self.first_wave),
                "detection_rest": self.detection_rest / rest, "turnaround": self.turnaround / rest}

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"slot_seconds": self.slot_seconds, "per_job": self.per_job()}

    @classmethod
    def of(cls, d: Mapping[str, Any]) -> Breakdown:
        """Back from `as_dict` (what the bench's JSON holds)."""
        return cls(**{f.name: d[f.name] for f in fields(cls)})


def clock_offset(sim_clock: float, asked: float, answered: float) -> float:
    """Seconds to add to a bench time to get the simulator's: 0 when the simulator's reading
    falls within the request (one clock), else its distance from the request's midpoint."""
    if asked <= sim_clock <= answered:
        return 0.0
    return sim_clock - (asked + answered) / 2


def idle_slot_seconds(busy: Iterable[tuple[float, float]], concurrency: int, start: float, end: float) -> float:
    """Integral over [start, end] of the slots not busy (never below zero): `busy` is each job's
    (from, to)."""
    if end <= start:
        return 0.0
    events = sorted([(a, 1) for a, _ in busy] + [(b, -1) for _, b in busy])
    idle, in_flight, at = 0.0, 0, start
    for t, change in events:
        if t > at:
            stop = min(t, end)
            if stop > at:
                idle += max(0, concurrency - in_flight) * (stop - at)
                at = stop
        in_flight += change
        if at >= end:
            break
    if at < end:
        idle += max(0, concurrency - in_flight) * (end - at)
    return idle


def breakdown(record: Mapping[str, Any], concurrency: int, started: float, exited: float,
              offset: float = 0.0) -> Breakdown:
    """Where the slot-seconds of a run went. `started` and `exited` are the process's start and
    exit on the bench's clock; `offset` turns them into the simulator's (`clock_offset`)."""
    jobs = sorted(record["jobs"], key=lambda j: float(j["submitted"]))
    start, end = started + offset, exited + offset
    wall = exited - started
    if not jobs:
        return Breakdown(concurrency, wall, 0, 0, 0, rendering=0.0, detection_first_wave=0.0, detection_rest=0.0,
                         startup=0.0, ramp=0.0, turnaround=0.0, last_wave=0.0, shutdown=0.0,
                         left_over=concurrency * wall)
    busy, detection, unseen = [], [0.0, 0.0], 0
    for i, j in enumerate(jobs):
        sub, render = float(j["submitted"]), float(j["render_seconds"])
        seen = j.get("seen_done")
        if seen is None:
            unseen += 1
            busy.append((sub, sub + render))
            continue
        busy.append((sub, float(seen)))
        detection[0 if i < concurrency else 1] += max(0.0, float(seen) - (sub + render))
    first_sub, last_sub = busy[0][0], busy[-1][0]
    wave_sub = busy[min(concurrency, len(busy)) - 1][0]
    last_end = max(b for _, b in busy)
    rendering = sum(float(j["render_seconds"]) for j in jobs)
    parts = {"rendering": rendering, "detection_first_wave": detection[0], "detection_rest": detection[1],
             "startup": concurrency * max(0.0, first_sub - start),
             "ramp": idle_slot_seconds(busy, concurrency, first_sub, wave_sub),
             "turnaround": idle_slot_seconds(busy, concurrency, wave_sub, last_sub),
             "last_wave": idle_slot_seconds(busy, concurrency, last_sub, min(last_end, end)),
             "shutdown": concurrency * max(0.0, end - last_end)}
    left = concurrency * wall - sum(parts.values())
    return Breakdown(concurrency, wall, len(jobs), min(concurrency, len(jobs)), unseen, left_over=left, **parts)


def describe_side_by_side(ours: Breakdown, oracle: Breakdown) -> list[str]:
    """The lines `batcher bench` prints: each part's share of the slot-seconds for both sides."""
    lines = [f"  {'where the slot-seconds go (concurrency x wall)':<48}{'batcher':>18}{'oracle':>18}"]
    for part in PARTS:
        lines.append(f"    {LABELS[part]:<46}{_cell(ours, part):>18}{_cell(oracle, part):>18}")
    a, b = ours.per_job(), oracle.per_job()
    lines.append(f"    {'per job: detection first wave / rest, turnaround':<46}"
                 f"{_ms(a):>18}{_ms(b):>18}")
    if ours.unseen or oracle.unseen:
        lines.append(f"    jobs never seen ended: batcher {ours.unseen}, oracle {oracle.unseen}")
    return lines


def _cell(b: Breakdown, part: str) -> str:
    return f"{getattr(b, part):.1f}s {b.share(part):6.1%}"


def _ms(per_job: Mapping[str, float]) -> str:
    keys = ("detection_first_wave", "detection_rest", "turnaround")
    return "/".join(f"{per_job[k] * 1000:.0f}" for k in keys) + " ms"
