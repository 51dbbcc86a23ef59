"""A batch polled on virtual time: the poll planner as a run uses it (probes, wake-ups, the next
job submitted as one is seen done), or a fixed schedule (the bench's oracle), with no clock, no
network and no simulator. Efficiency as in the bench: the sum of render seconds over concurrency
x wall seconds."""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field

from batcher.policy import PollPlanner

CLS = ("model", 5, "720p")
ROUND_TRIP = 0.002  # seconds from sending a request to its answer
TURNAROUND = 0.01  # seconds from seeing a job done to submitting the next


@dataclass
class Trial:
    """What one batch cost: wall seconds, render seconds, polls, and followers woken to re-plan."""

    concurrency: int
    wall: float = 0.0
    rendered: float = 0.0
    polls: int = 0
    jobs: int = 0
    woken: int = 0
    first_wave_delay: list[float] = field(default_factory=list)

    @property
    def efficiency(self) -> float:
        return self.rendered / (self.concurrency * self.wall)

    @property
    def polls_per_job(self) -> float:
        return self.polls / self.jobs


@dataclass
class _Job:
    submitted: float
    ends: float
    probe: int | None
    polls: int = 0
    last: float = 0.0
    due: float = 0.0
    version: int = 0  # a re-planned poll replaces the one queued before (lazy deletion)


def renders(jobs: int, mean: float, spread: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [max(0.01, rng.gauss(mean, spread * mean)) for _ in range(jobs)]


def run_planner(planner: PollPlanner, times: list[float], concurrency: int) -> Trial:
    """The batch `times` through `planner` with `concurrency` jobs in flight."""
    trial = Trial(concurrency, jobs=len(times), rendered=sum(times))
    queue: list[tuple[float, int, int]] = []  # (time, job, version)
    jobs: dict[int, _Job] = {}
    waiting = iter(range(len(times)))

    def submit(at: float) -> None:
        index = next(waiting, None)
        if index is None:
            return
        sub = at + ROUND_TRIP
        job = jobs[index] = _Job(sub, sub + times[index], planner.enlist(CLS))
        job.due = sub + planner.next_poll(CLS, 0.0, 0, probe=job.probe)
        heapq.heappush(queue, (job.due, index, 0))

    for _ in range(concurrency):
        submit(0.0)
    while queue:
        at, index, version = heapq.heappop(queue)
        job = jobs.get(index)
        if job is None or version != job.version:
            continue
        trial.polls += 1
        seen = at + ROUND_TRIP
        elapsed = seen - job.submitted
        if seen < job.ends:
            job.polls += 1
            job.last = elapsed
            job.due = max(seen, job.submitted + planner.next_poll(CLS, elapsed, job.polls, probe=job.probe))
            job.version += 1
            heapq.heappush(queue, (job.due, index, job.version))
            continue
        del jobs[index]
        if index < concurrency:
            trial.first_wave_delay.append(seen - job.ends)
        trial.wall = max(trial.wall, seen)
        if planner.observe(CLS, job.last, elapsed):
            for other_index, other in jobs.items():  # every follower of the model plans again
                trial.woken += 1
                due = max(seen, other.submitted + planner.due(CLS, other.last, other.polls, probe=other.probe))
                if due < other.due:
                    other.due, other.version = due, other.version + 1
                    heapq.heappush(queue, (due, other_index, other.version))
        submit(seen + TURNAROUND)
    return trial


def run_schedule(t0: float, d: float, times: list[float], concurrency: int) -> Trial:
    """The same batch polled first at `t0`, then every `d` (the oracle's way)."""
    trial = Trial(concurrency, jobs=len(times), rendered=sum(times))
    free = [0.0] * concurrency
    heapq.heapify(free)
    for render in times:
        sub = heapq.heappop(free) + ROUND_TRIP
        k = 0
        while sub + t0 + k * d + ROUND_TRIP < sub + render:
            k += 1
        seen = sub + t0 + k * d + ROUND_TRIP
        trial.polls += k + 1
        trial.wall = max(trial.wall, seen)
        heapq.heappush(free, seen + TURNAROUND)
    return trial
