"""The yardstick for `batcher bench efficiency`: an oracle poller.

It is *told* the true render-time distribution (normal, mean and standard deviation) and polls
every job on the best fixed schedule for it: first poll `t0` after the submission's answer, then
every `d`, the pair chosen to maximise the expected efficiency with at most `max_polls` status
polls per job (`best_schedule`, a pure function). It keeps no ledger and takes no care: plain
asyncio and one httpx.AsyncClient, `concurrency` workers each submitting the next job, polling it
on the schedule and handing the finished job's video to a download task (no fsync) before
submitting the next. It is run as its own process (`python -m batcher.bench.oracle`) so that the
bench times it exactly as it times `batcher run`: from process start to exit.

Efficiency of a schedule, per job: mean render / mean time to detection (field notes: mean render
/ (mean render + mean delay)). In standard units (z = (T - mean) / sd, a = (t0 - mean) / sd,
b = d / sd) the polls come at a, a + b, a + 2b, ...; with S = sum over k >= 0 of P(Z > a + k b),
the expected polls per job are 1 + S and the expected detection time is mean + sd (a + b S). The
best (a, b) does not depend on the mean or the spread (renders below zero, which the simulator
clips, are ignored), so it is found once in standard units and scaled.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

MODEL = "happyhorse-1.0-r2v"
REFERENCE = "https://example.com/hero.png"
_TOP = 8.5  # P(Z > 8.5) < 1e-16: later polls add nothing


@dataclass(frozen=True)
class Schedule:
    t0: float  # seconds from the submission's answer to the first poll
    d: float  # seconds between later polls
    efficiency: float  # expected mean render / mean time to detection
    polls_per_job: float  # expected status polls per job


def _tail_sum(a: float, b: float, cap: float = math.inf) -> float:
    """S = sum_k P(Z > a + k b); stops early (returning a value > cap) once it exceeds cap."""
    total, k = 0.0, 0
    while a + k * b < _TOP:
        total += 0.5 * math.erfc((a + k * b) / math.sqrt(2))
        if total > cap:
            return total
        k += 1
    return total


def expected(t0: float, d: float, mean: float, sd: float) -> tuple[float, float]:
    """(efficiency, polls per job) of the schedule (t0, d) for renders N(mean, sd)."""
    if mean <= 0 or d <= 0 or sd < 0:
        raise ValueError("need mean > 0, d > 0 and sd >= 0")
    if sd == 0:
        k = max(0, math.ceil((mean - t0) / d - 1e-12))
        return mean / (t0 + k * d), 1.0 + k
    s = _tail_sum((t0 - mean) / sd, d / sd)
    return mean / (t0 + d * s), 1.0 + s


def _delay(a: float, b: float, max_polls: float) -> float:
    """Expected detection delay in standard units, or inf when over the polls budget."""
    s = _tail_sum(a, b, cap=max_polls - 1.0 + 1e-9)
    return a + b * s if 1.0 + s <= max_polls + 1e-9 else math.inf


def _grid_best(points: list[tuple[float, float]], max_polls: float, lowest: float) -> tuple[float, float, float]:
    """(delay, a, b) of the best point with a >= lowest (no poll before the submission)."""
    return min((_delay(a, b, max_polls), a, b) for a, b in points if a >= lowest)


def best_schedule(mean: float, sd: float, max_polls: float = 2.5) -> Schedule:
    """The (t0, d) that maximises the expected efficiency for renders N(mean, sd) with at most
    `max_polls` polls per job: a coarse grid in standard units, then two finer ones around its best."""
    if not (mean > 0 and sd >= 0 and max_polls >= 1) or not all(map(math.isfinite, (mean, sd, max_polls))):
        raise ValueError("need mean > 0, sd >= 0 and max_polls >= 1 (all finite)")
    if sd == 0 or sd / mean < 1e-9:
        return Schedule(mean, mean, 1.0, 1.0)  # one poll, exactly at the end of every render
    lowest = -mean / sd  # t0 >= 0
    bs = [0.02 * (600 ** (i / 59)) for i in range(60)]  # 0.02 .. 12 standard deviations
    coarse = [(max(lowest, -5.0 + 0.1 * i), b) for i in range(136) for b in bs]  # a: -5 .. 8.5 (1 poll fits at 6)
    best, a, b = _grid_best(coarse, max_polls, lowest)
    for step in (0.01, 0.001):
        fine = [(a + step * i, b * (1 + step * j)) for i in range(-12, 13) for j in range(-12, 13)]
        best, a, b = _grid_best(fine, max_polls, lowest)
    t0, d = mean + sd * a, sd * b
    s = _tail_sum(a, b)
    return Schedule(t0, d, mean / (mean + sd * best), 1.0 + s)


# --- the bench's jobs: the manifest batcher runs, and the same requests as the oracle sends them --

def manifest_text(jobs: int, batch: str = "bench", duration: int = 5) -> str:
    """A manifest expanding to `jobs` jobs (one row with a vary list, so it stays small on disk)."""
    per = 1000 if jobs >= 1000 else jobs
    rows = []
    left = jobs
    row = 0
    while left > 0:
        n = min(per, left)
        values = ", ".join(str(i) for i in range(n))
        rows.append(f"  - prompt: 'bench row {row} shot {{n}}'\n    references: hero\n    vary:\n      n: [{values}]\n")
        left -= n
        row += 1
    return (f"version: 1\nbatch: {batch}\ndefaults:\n  duration: {duration}\n"
            f"reference_sets:\n  hero: [https://example.com/hero.png]\nrows:\n" + "".join(rows))


def bench_body(index: int, jobs: int) -> dict[str, Any]:
    """The wire body of job `index` of the bench manifest (`manifest_text`)."""
    per = 1000 if jobs >= 1000 else jobs
    return {"prompt": f"bench row {index // per} shot {index % per}", "reference_urls": [REFERENCE],
            "duration": 5, "resolution": "720p", "aspectRatio": "16:9"}


# --- the poller ---------------------------------------------------------------------------------

@dataclass
class OracleResult:
    jobs: int
    concurrency: int
    schedule: Schedule
    completed: int = 0
    failed: int = 0
    polls: int = 0
    downloaded: int = 0
    bytes: int = 0
    late: float = 0.0  # seconds, summed over polls, between a poll's time on the schedule and its sending
    answered: float = 0.0  # seconds, summed over polls, between sending a poll and reading its answer
    wall: float = 0.0  # inside the event loop (the bench times the whole process itself)


async def _download(http: httpx.AsyncClient, url: str, dest: Path | None, result: OracleResult) -> None:
    response = await http.get(url)
    response.raise_for_status()
    if dest is not None:
        dest.write_bytes(response.content)
    result.downloaded += 1
    result.bytes += len(response.content)


async def _one_job(http: httpx.AsyncClient, base: str, index: int, result: OracleResult,
                   ) -> tuple[str, str] | None:
    """Submit job `index`, poll it on the schedule until it ends: (job id, video URL), or None if it failed."""
    sched = result.schedule
    answer = await http.post(f"{base}/api/v1/models/{MODEL}/run", json=bench_body(index, result.jobs))
    answer.raise_for_status()
    submitted = time.monotonic()
    job = answer.json()
    job_id, status_url = job["jobId"], job["statusUrl"]
    k = 0
    while True:
        due = submitted + sched.t0 + k * sched.d
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        sent = time.monotonic()
        result.polls += 1
        result.late += sent - due
        status = await http.get(status_url)
        result.answered += time.monotonic() - sent
        status.raise_for_status()
        data = status.json()
        if data["status"] == "completed":
            return job_id, data["output"]["video"]
        if data["status"] == "failed":
            return None
        k += 1


async def _open_connections(http: httpx.AsyncClient, base: str, n: int, at_once: int = 4) -> None:
    """Fill the pool with `n` idle connections, at most `at_once` being opened at a time: `batcher
    simulator` listens with http.server's backlog of 5, and Linux resets connections beyond it (a
    first wave of 40 submissions on 40 new connections loses some after a second). Each is opened
    by `GET /api/v1/models` (not a status poll), held until all are open, then read to its end."""
    held: list[httpx.Response] = []
    try:
        for start in range(0, n, at_once):
            requests = [http.build_request("GET", f"{base}/api/v1/models") for _ in range(min(at_once, n - start))]
            held += await asyncio.gather(*(http.send(r, stream=True) for r in requests))
    finally:
        for response in held:
            await response.aread()  # read to the end: the connection goes back to the pool, open


async def run_oracle(api_base: str, api_key: str, jobs: int, concurrency: int, schedule: Schedule,
                     out_dir: Path | None = None) -> OracleResult:
    """Render `jobs` bench jobs with `concurrency` in flight, polling on `schedule`."""
    result = OracleResult(jobs, concurrency, schedule)
    base = api_base.rstrip("/")
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    counter = iter(range(jobs))
    downloads: set[asyncio.Task[None]] = set()
    started = time.monotonic()
    # A fixed pool, opened before the first submission and never let go (no keep-alive expiry):
    # a request in flight per worker, and room for downloads beside them.
    pool = concurrency + max(4, concurrency // 4)
    limits = httpx.Limits(max_connections=pool, max_keepalive_connections=pool, keepalive_expiry=None)
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {api_key}"}, timeout=60.0, limits=limits) as http:
        await _open_connections(http, base, pool)

        async def worker() -> None:
            for index in counter:
                done = await _one_job(http, base, index, result)
                if done is None:
                    result.failed += 1
                    continue
                result.completed += 1
                dest = out_dir / f"{done[0]}.mp4" if out_dir is not None else None
                task = asyncio.create_task(_download(http, done[1], dest, result))
                downloads.add(task)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        await asyncio.gather(*downloads)
    result.wall = time.monotonic() - started
    return result


def main(argv: list[str] | None = None) -> None:
    """`python -m batcher.bench.oracle`: run the oracle, print its result as one JSON line."""
    p = argparse.ArgumentParser(prog="python -m batcher.bench.oracle", description=__doc__.split("\n")[0])
    p.add_argument("--api-base", required=True)
    p.add_argument("--api-key", default="sim-key")
    p.add_argument("--jobs", type=int, required=True)
    p.add_argument("--concurrency", type=int, default=40)
    p.add_argument("--mean", type=float, required=True, help="true mean render seconds")
    p.add_argument("--sd", type=float, required=True, help="true standard deviation of render seconds")
    p.add_argument("--max-polls", type=float, default=2.5)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    schedule = best_schedule(args.mean, args.sd, args.max_polls)
    result = asyncio.run(run_oracle(args.api_base, args.api_key, args.jobs, args.concurrency, schedule, args.out))
    print(json.dumps(asdict(result)), flush=True)


if __name__ == "__main__":
    main()
