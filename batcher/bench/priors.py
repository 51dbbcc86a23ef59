"""Wrong guesses of the render time, whole process (`batcher bench priors`): what a run costs when
its `--expected-render` is wrong, beside the oracle poller told the truth.

For each batch (by default the efficiency sections' two: 800 x 1 s and 240 x 8 s), the oracle runs
once and batcher three times, each its own process against its own `batcher simulator` (as in
`bench.whole`): told the true mean, 5x it (too high) and a third of it (too low). On the first
batch batcher also runs told nothing (`--expected-render` left out: it starts from the model's
typical render time). A wrong guess may cost minutes, so those runs are killed after a multiple
of the oracle's wall time (`timeout_factor`): the target needs far less, and such a run is
reported as not finished with the best efficiency it could have had.

Targets (issue 28): a wrong guess, either way, at least 0.9 x the oracle's efficiency; the right
one as the efficiency sections' (`whole.EFFICIENCY_TARGET` at no more than `max_polls` a job).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..models import get_model
from .oracle import MODEL
from .whole import DEFINITION, EFFICIENCY_TARGET, Batch, Runs, Target, outcome, ratio, verdict

WRONG_TARGET = Target(0.9)
TIMEOUT_FACTOR = 2.0  # a wrong guess's run is killed after this many times the oracle's wall (0.9 x needs 1.11 x)


@dataclass(frozen=True)
class Prior:
    """A guess of the render time as a multiple of the true mean (None: no guess given)."""

    name: str
    factor: float | None

    def expected(self, batch: Batch) -> float | None:
        """The `--expected-render` batcher is told for `batch` (None: the option left out)."""
        return None if self.factor is None else batch.render * self.factor

    def describe(self, batch: Batch) -> str:
        told = self.expected(batch)
        if told is None:
            model = get_model(MODEL)
            return f"none (the model's {model.expected_render_seconds:g}s)" if model else "none"
        return f"{self.name} ({told:.3g}s)"


RIGHT = Prior("right", 1.0)
HIGH = Prior("5x too high", 5.0)
LOW = Prior("3x too low", 1 / 3)
NONE = Prior("none", None)


def wrong_prior_timeout(oracle: dict[str, Any], factor: float) -> float:
    """Seconds after which a run with a wrong guess is killed: `factor` x the oracle's wall."""
    return factor * oracle["wall"]


def judge(prior: Prior, batch: Batch, ours: dict[str, Any], oracle: dict[str, Any], target: Target
          ) -> dict[str, Any]:
    """One case's figures beside the oracle's, its target and whether it is met."""
    r = ratio(ours, oracle)
    return {"prior": prior.name, "told": prior.describe(batch), "expected_render": prior.expected(batch),
            "jobs": batch.jobs, "render": batch.render, "finished": ours["finished"], "wall": ours["wall"],
            "efficiency": ours["efficiency"], "polls_per_job": ours["polls_per_job"], "ratio": r,
            "target": str(target), "met": target.met(r, ours["polls_per_job"]), "batcher": ours}


def bench_priors(batches: list[Batch], *, max_polls: float = 2.5, timeout_factor: float = TIMEOUT_FACTOR,
                 runs: Runs | None = None) -> dict[str, Any]:
    """Every batch's oracle and its cases (the first batch's with no guess too); their figures and judgements."""
    made = runs or Runs()
    sizes: list[dict[str, Any]] = []
    for n, batch in enumerate(batches):
        oracle = made.oracle(batch, max_polls)
        cap = wrong_prior_timeout(oracle, timeout_factor)
        cases = [judge(RIGHT, batch, made.batcher(batch, batch.render), oracle, Target(EFFICIENCY_TARGET, max_polls))]
        wrong: tuple[Prior, ...] = (HIGH, LOW, NONE) if n == 0 else (HIGH, LOW)
        for prior in wrong:
            ours = made.batcher(batch, prior.expected(batch), timeout=cap)
            cases.append(judge(prior, batch, ours, oracle, WRONG_TARGET))
        sizes.append({"jobs": batch.jobs, "concurrency": batch.concurrency, "render": batch.render,
                      "jitter": batch.jitter, "timeout": cap, "oracle": oracle, "cases": cases})
    return {"definition": DEFINITION, "max_polls": max_polls, "timeout_factor": timeout_factor, "sizes": sizes,
            "met": all(c["met"] for size in sizes for c in size["cases"])}


def case_line(case: dict[str, Any]) -> str:
    """One case's line: batcher's figures, its ratio to the oracle, the target and the verdict."""
    told = f"{case['told']:<24}"
    versus = f"{case['ratio']:.3f} x oracle" if case["ratio"] is not None else "no ratio"
    return f"    {told}{outcome(case['batcher'])}: {versus}; target {case['target']}: {verdict(case['met'])}"


def describe_priors(r: dict[str, Any]) -> list[str]:
    """The lines `batcher bench` prints for the priors section."""
    lines = [f"priors       whole process, batcher told a right, a wrong or no render time (`--expected-render`) "
             f"beside the oracle told the truth; a wrong guess's run killed after {r['timeout_factor']:g} x the "
             f"oracle's wall; {DEFINITION}"]
    for size in r["sizes"]:
        o = size["oracle"]
        lines.append(f"  {size['jobs']} jobs, concurrency {size['concurrency']}, renders {size['render']:g}s +/- "
                     f"{size['jitter']:.0%}: oracle {outcome(o)} (its polls sent {o['mean_poll_lateness'] * 1000:.1f} "
                     f"ms late, answered in {o['mean_poll_round_trip'] * 1000:.1f} ms: more is a busy machine)")
        lines += [case_line(c) for c in size["cases"]]
    return lines
