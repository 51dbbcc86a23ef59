"""Webhooks against polling, whole process, as users meet them (`batcher bench webhooks`).

Runs of the same batch, each its own process against its own fresh `batcher simulator` process
over loopback (same render times and seed): the oracle poller (the best fixed polling schedule,
told the true render times: `bench.oracle`), `batcher run` polling, `batcher run --webhook-listen
127.0.0.1:0` with every webhook delivered (after `--webhook-delay`), and the same with a share of
webhooks lost (`--webhook-loss`); then, told a render time 5x too high (`priors.HIGH`), batcher
polling and batcher with that share of webhooks lost, both killed after a multiple of the oracle's
wall. Efficiency as everywhere in the bench: the ideal time (sum of render seconds / concurrency)
over the whole-process wall time.

Targets (issue 28): webhooks at least 1.05 x the oracle's efficiency at no more than 1.2 status
requests a job; webhook mode never slower than polling mode: with webhooks lost, every job done in
no more wall time than polling, told the true render time and told one 5x too high. The default
share lost is the issue's 30%, in both lossy runs, so that the pair differs in the guess alone.
"""

from __future__ import annotations

from typing import Any

from .priors import HIGH, TIMEOUT_FACTOR, wrong_prior_timeout
from .whole import DEFINITION, Batch, Runs, Target, outcome, ratio, verdict

TARGET = Target(1.05, 1.2, "status requests/job")
LOSS = 0.3


def never_slower(hooked: dict[str, Any], polled: dict[str, Any]) -> bool:
    """Whether a webhook run did every job in no more wall time than a polling run (one killed at its
    timeout did not; a polling run killed while the webhook run finished was slower)."""
    if not hooked.get("finished", True) or hooked["completed"] < hooked["jobs"]:
        return False
    return not polled.get("finished", True) or hooked["wall"] <= polled["wall"]


def bench_webhooks(batch: Batch, *, loss: float = LOSS, delay: float = 0.02, max_polls: float = 2.5,
                   timeout_factor: float = TIMEOUT_FACTOR, runs: Runs | None = None) -> dict[str, Any]:
    """The runs, in turn; their figures, the ratios the targets are about and whether each is met."""
    made = runs or Runs()
    listen = ["--webhook-listen", "127.0.0.1:0"]
    delayed = ["--webhook-delay", str(delay)]
    lost = [*delayed, "--webhook-loss", str(loss)]
    oracle = made.oracle(batch, max_polls)
    polled = made.batcher(batch, batch.render)
    hooked = made.batcher(batch, batch.render, listen, delayed)
    lossy = made.batcher(batch, batch.render, listen, lost)
    cap, wrong = wrong_prior_timeout(oracle, timeout_factor), HIGH.expected(batch)
    polled_wrong = made.batcher(batch, wrong, timeout=cap)
    lossy_wrong = made.batcher(batch, wrong, listen, lost, timeout=cap)
    to_oracle = ratio(hooked, oracle)
    targets = {"webhooks_vs_oracle": {"target": str(TARGET), "met": TARGET.met(to_oracle, hooked["polls_per_job"])},
               "lossy_vs_polling": {"target": "every job done, wall <= polling's", "met": never_slower(lossy, polled)},
               "lossy_vs_polling_wrong_prior": {"target": "every job done, wall <= polling's",
                                                "met": never_slower(lossy_wrong, polled_wrong)}}
    return {"definition": DEFINITION, "jobs": batch.jobs, "concurrency": batch.concurrency, "render": batch.render,
            "jitter": batch.jitter, "loss": loss, "delay": delay, "wrong_prior": wrong, "timeout": cap,
            "oracle": oracle, "polling": polled, "webhooks": hooked, "webhooks_lossy": lossy,
            "polling_wrong_prior": polled_wrong, "webhooks_lossy_wrong_prior": lossy_wrong,
            "ratio_to_oracle": to_oracle, "lossy_ratio_to_polling": ratio(lossy, polled), "targets": targets,
            "met": all(t["met"] for t in targets.values())}


def _line(label: str, f: dict[str, Any]) -> str:
    hooks = f.get("webhooks") or {}
    said = (f"; {hooks.get('announced', 0)} announced by a webhook, {hooks.get('missed', 0)} found by safety polls"
            if hooks else "")
    exited = f"; EXIT {f['exit_code']}: {'; '.join(f['messages'])[:200]}" if f.get("exit_code") else ""
    return (f"  {label:<30} {outcome(f, 'status requests/job')} ({f['completed']} of {f['jobs']} "
            f"completed{said}{exited})")


def _walls(hooked: dict[str, Any], polled: dict[str, Any]) -> str:
    def wall(f: dict[str, Any]) -> str:
        return f"{f['wall']:.2f}s" if f.get("finished", True) else f"over {f['timeout']:.0f}s"
    return f"webhooks {wall(hooked)} against polling {wall(polled)}"


def describe_webhooks(r: dict[str, Any]) -> list[str]:
    """The lines `batcher bench` prints for the webhooks section."""
    t, loss = r["targets"], f"{r['loss']:.0%} lost"
    told = f"told {r['wrong_prior']:g}s"
    versus = f"{r['ratio_to_oracle']:.3f}" if r["ratio_to_oracle"] is not None else "no ratio"
    return [
        f"webhooks     whole process (each its own process against `batcher simulator` over loopback), "
        f"{r['jobs']} jobs, concurrency {r['concurrency']}, renders {r['render']:g}s +/- {r['jitter']:.0%}, "
        f"webhooks {r['delay'] * 1000:.0f} ms after each render's end; runs told {r['wrong_prior']:g}s (5x too "
        f"high) killed after {r['timeout']:.0f}s; {DEFINITION}",
        _line("oracle (polling)", r["oracle"]),
        _line("batcher polling", r["polling"]),
        _line("batcher webhooks", r["webhooks"]),
        _line(f"webhooks {loss}", r["webhooks_lossy"]),
        _line(f"polling, {told}", r["polling_wrong_prior"]),
        _line(f"webhooks {loss}, {told}", r["webhooks_lossy_wrong_prior"]),
        f"  webhooks / oracle {versus} at {r['webhooks']['polls_per_job']:.2f} status requests/job; target "
        f"{t['webhooks_vs_oracle']['target']}: {verdict(t['webhooks_vs_oracle']['met'])}",
        f"  webhooks never slower than polling, {loss}, target every job done in no more wall time: told the "
        f"true mean, {_walls(r['webhooks_lossy'], r['polling'])}: {verdict(t['lossy_vs_polling']['met'])}; {told}, "
        f"{_walls(r['webhooks_lossy_wrong_prior'], r['polling_wrong_prior'])}: "
        f"{verdict(t['lossy_vs_polling_wrong_prior']['met'])}",
    ]
