"""Webhooks against polling, whole process, as users meet them (`batcher bench webhooks`).

Four runs of the same batch, each its own process against its own fresh `batcher simulator`
process over loopback (same render times and seed): the oracle poller (the best fixed polling
schedule, told the true render times: `bench.oracle`), `batcher run` polling, `batcher run
--webhook-listen 127.0.0.1:0` with every webhook delivered (after `--webhook-delay`), and the same
with a share of webhooks lost (`--webhook-loss`). Efficiency as everywhere in the bench: the ideal
time (sum of render seconds / concurrency) over the whole-process wall time. Targets: webhooks at
least 1.05 x the oracle's efficiency at no more than 1.2 status requests a job; with webhooks lost,
every job still done and efficiency above polling's.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from .whole import DEFINITION, whole_batcher, whole_oracle

TARGET_RATIO = 1.05
TARGET_POLLS = 1.2


def bench_webhooks(jobs: int, concurrency: int, render: float, jitter: float, *, loss: float = 0.2,
                   delay: float = 0.02, max_polls: float = 2.5, seed: int = 1) -> dict[str, Any]:
    """The four runs, in turn; their figures and the ratios the targets are about."""
    listen = ["--webhook-listen", "127.0.0.1:0"]
    delayed = ["--webhook-delay", str(delay)]
    with tempfile.TemporaryDirectory(prefix="batcher-bench-hooks-") as tmp:
        work = Path(tmp)
        for name in ("o", "p", "w", "l"):
            (work / name).mkdir()
        oracle = whole_oracle(jobs, concurrency, render, jitter, seed, work / "o", max_polls)
        polled = whole_batcher(jobs, concurrency, render, jitter, seed, work / "p")
        hooked = whole_batcher(jobs, concurrency, render, jitter, seed, work / "w", listen, delayed)
        lossy = whole_batcher(jobs, concurrency, render, jitter, seed, work / "l", listen,
                              [*delayed, "--webhook-loss", str(loss)])
    best = oracle["efficiency"] or 1e-9
    return {"definition": DEFINITION, "jobs": jobs, "concurrency": concurrency, "render": render, "jitter": jitter,
            "loss": loss, "delay": delay, "oracle": oracle, "polling": polled, "webhooks": hooked,
            "webhooks_lossy": lossy, "ratio_to_oracle": hooked["efficiency"] / best,
            "lossy_ratio_to_polling": lossy["efficiency"] / (polled["efficiency"] or 1e-9)}


def _line(label: str, f: dict[str, Any]) -> str:
    hooks = f.get("webhooks") or {}
    said = (f"; {hooks.get('announced', 0)} announced by a webhook, {hooks.get('missed', 0)} found by safety polls"
            if hooks else "")
    exited = f"; EXIT {f['exit_code']}: {'; '.join(f['messages'])[:200]}" if f.get("exit_code") else ""
    return (f"  {label:<17} efficiency {f['efficiency']:.3f}, {f['polls_per_job']:.2f} status requests/job, wall "
            f"{f['wall']:.2f}s ({f['completed']} of {f['jobs']} completed{said}{exited})")


def describe_webhooks(r: dict[str, Any]) -> list[str]:
    """The lines `batcher bench` prints for the webhooks section."""
    lossy = r["webhooks_lossy"]
    all_done = lossy["completed"] == r["jobs"]
    return [
        f"webhooks     whole process (each its own process against `batcher simulator` over loopback), "
        f"{r['jobs']} jobs, concurrency {r['concurrency']}, renders {r['render']:g}s +/- {r['jitter']:.0%}, "
        f"webhooks {r['delay'] * 1000:.0f} ms after each render's end; {DEFINITION}",
        _line("oracle (polling)", r["oracle"]),
        _line("batcher polling", r["polling"]),
        _line("batcher webhooks", r["webhooks"]),
        _line(f"webhooks {r['loss']:.0%} lost", lossy),
        f"  webhooks / oracle {r['ratio_to_oracle']:.3f} at {r['webhooks']['polls_per_job']:.2f} status requests/job "
        f"(target >= {TARGET_RATIO} at <= {TARGET_POLLS}); {r['loss']:.0%} lost: "
        f"{'every job done' if all_done else 'NOT every job done'}, efficiency {r['lossy_ratio_to_polling']:.3f} x "
        f"batcher polling's (target > 1)",
    ]
