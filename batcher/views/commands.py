"""What the commands print for people: a plan, a batch's status, its rows, one job's history."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..manifest import Manifest
from ..models import ModelSpec
from ..money import estimate_hundredths, from_hundredths
from ..plan import JobSpec, PlanSummary
from ..states import JobState
from ..text import format_seconds, iso, state_counts

if TYPE_CHECKING:  # rows of the ledger, named only: plan lines load no database package
    from ..ledger import Event, Figures, Job, Ledger, Orphans
from ..text import format_credits


@dataclass
class ModelShare:
    """One model's part of a plan that mixes models."""

    jobs: int = 0
    hundredths: int = 0  # the model's estimates, summed exactly
    seconds_of_video: int = 0
    guessed: dict[str, str] = field(default_factory=dict)  # a value its price depends on -> why a guess


class ModelShares:
    """A mixed plan's jobs, credits and guessed prices per model, added job by job."""

    def __init__(self, m: Manifest):
        self.specs = m.models
        self.default = m.model
        self.shares: dict[str, ModelShare] = {}

    def spec(self, api_id: str) -> ModelSpec:
        return self.specs.get(api_id, self.default)

    def add(self, job: JobSpec) -> None:
        share = self.shares.setdefault(job.model, ModelShare())
        spec = self.spec(job.model)
        share.jobs += 1
        share.hundredths += estimate_hundredths(job.estimate)
        share.seconds_of_video += int(job.params.get(spec.seconds_param, 0) or 0) if spec.seconds_param else 0
        if job.estimate_is_guess:
            value = str(job.params.get(spec.rate_param, spec.defaults().get(spec.rate_param)))
            share.guessed.setdefault(value, f"{value} at {spec.rate({spec.rate_param: value}):g} credits/s is "
                                            "unpublished" if spec.price_known else
                                     f"no price known (estimated 0; a budgeted run needs --rate {spec.api_id}=N)")

    def to_json(self) -> dict[str, Any]:
        return {api_id: {"jobs": s.jobs, "credits": from_hundredths(s.hundredths),
                         "seconds_of_video": s.seconds_of_video,
                         "credits_include_guessed_rates": bool(s.guessed), "guessed": sorted(s.guessed.values()),
                         "typical_render_seconds": self.spec(api_id).expected_render_seconds}
                for api_id, s in self.shares.items()}


def plan_lines(m: Manifest, summary: PlanSummary, overrides: dict[str, float], data: dict[str, Any],
               jobs: list[JobSpec]) -> list[str]:
    """`batcher plan`: the batch's figures, wall time, every job if asked, the rows, the ledger.
    A batch that mixes models (`data["models"]`) gets a line per model and a model column."""
    mixed: dict[str, Any] | None = data.get("models") if len(summary.by_model) > 1 else None
    guess = ""
    if summary.credits_are_guess and mixed is not None:
        guess = " (partly a guess: see the models below; set --rate to change it)"
    elif summary.credits_are_guess:
        guessed = sorted(r for r in m.model.guessed_rates if r in summary.by_resolution and r not in overrides)
        guess = " (an upper estimate: " + ", ".join(
            f"{r} at {m.model.credits_per_second[r]:g} credits/s is unpublished" for r in guessed) + \
            "; set --rate to change it)"
    wall = data["wall_time"]
    lines = _left_lines(data["ledger"], summary.jobs, wall["concurrency"]) if data.get("ledger", {}).get(
        "in_ledger") else []
    lines.append(f"batch {m.batch!r}: {summary.jobs} job(s), {summary.seconds_of_video} s of video, "
                 f"estimated {format_credits(summary.credits)} credits{guess}")
    if summary.duplicates:
        lines.append(f"{summary.duplicates} duplicate job(s) merged: identical requests are rendered once")
    if mixed is None:
        lines.append(f"wall time at --concurrency {wall['concurrency']}: about {format_seconds(wall['seconds'])} "
                     f"(renders of {m.model.api_id} typically take {wall['typical_render_seconds']:g} s)")
    else:
        lines += _mixed_plan_lines(mixed, wall)
    for j in jobs:
        extra = {k: v for k, v in j.params.items() if k not in ("prompt", "references")}
        prompt = " ".join(str(j.params.get("prompt", "")).split())
        model = f"  {j.model}" if mixed is not None else ""
        lines.append(f"  {j.key}  {j.label} t{j.take}{model}  {format_credits(j.estimate):>7}  {prompt!r}  "
                     f"{json.dumps(extra, ensure_ascii=False)}  refs: {len(j.params.get('references', []))}")
    lines += _row_table(summary, data["rows"] if mixed is not None else None)
    if "ledger" in data:
        led = data["ledger"]
        lines.append(f"ledger {led['path']}: holds {led['in_ledger']} of these jobs, {led['completed']} completed")
        lines += orphan_lines(led["orphans"], apart="not in this plan") if led.get("orphans") else []
    return lines


def _left_lines(led: dict[str, Any], jobs: int, concurrency: int) -> list[str]:
    """What is left of a batch the ledger holds, before the whole plan: the jobs a rerun would
    still send, their credits and time; those it would follow up, and those it leaves held."""
    left = led["to_run"]
    lines = [f"{led['completed']} of {jobs} job(s) completed in {led['path']}; {left['jobs']} to run: "
             f"{format_credits(left['credits'])} credits, about {format_seconds(left['seconds'])} at "
             f"--concurrency {concurrency}"]
    if led["in_flight"]:
        lines.append(f"{led['in_flight']} already sent (paid): a rerun follows them to their videos")
    if led["held"]:
        lines.append(f"{led['held']} held (failed, unknown, expired or cancelled): `batcher retry` or "
                     "`batcher resume` sends them again")
    return [*lines, "the whole batch:"]


def _mixed_plan_lines(models: dict[str, Any], wall: dict[str, Any]) -> list[str]:
    """A mixed plan's wall time (from each model's typical render, weighted by its jobs) and its
    figures per model."""
    each = ", ".join(f"{s['typical_render_seconds']:g} s with {api_id}" for api_id, s in models.items())
    lines = [f"wall time at --concurrency {wall['concurrency']}: about {format_seconds(wall['seconds'])} "
             f"(renders typically take {each}: {wall['typical_render_seconds']:g} s a job on average, "
             "weighted by each model's jobs)"]
    width = max(len(api_id) for api_id in models)
    lines.append(f"  {'model':<{width}}  {'jobs':>7} {'credits':>10}  price")
    for api_id, s in models.items():
        price = "a guess: " + "; ".join(s["guessed"]) if s["guessed"] else "known"
        lines.append(f"  {api_id:<{width}}  {s['jobs']:>7} {format_credits(s['credits']):>10}  {price}")
    return lines


def _row_table(summary: PlanSummary, rows: list[dict[str, Any]] | None) -> list[str]:
    """The plan's rows (the first 50), with each row's model when the batch mixes them (`rows`)."""
    width = max([len(r.origin) for r in summary.rows] + [6])
    models = [str(r.get("model", "")) for r in rows] if rows is not None else []
    mw = max([len(x) for x in models] + [5])
    head = f"{'model':<{mw}} " if models else ""
    lines = [f"  {'row':<{width}}  {'label':<12} {head}{'jobs':>7} {'credits':>10}"]
    shown = summary.rows[:50]
    lines += [f"  {r.origin:<{width}}  {r.label:<12} {(models[i] + ' ').ljust(mw + 1) if models else ''}"
              f"{r.jobs:>7} {format_credits(r.credits):>10}" for i, r in enumerate(shown)]
    if len(summary.rows) > len(shown):
        lines.append(f"  ... and {len(summary.rows) - len(shown)} more row(s) (--json lists them all)")
    return lines


def figures_info(f: Figures) -> dict[str, Any]:
    """What `batcher status --json` says of a batch (of one model's jobs, for `--model`)."""
    return {
        "counts": f.counts, "jobs": f.jobs, "credits_spent": round(f.spend.spent, 2),
        "credits_held": round(f.spend.held, 2), "credits_refunded": round(f.spend.refunded, 2),
        "held_unknown": f.held, "lost_after_payment": f.lost, "resubmit_cost": round(f.held_cost, 2),
        "videos": f.videos, "bytes": f.bytes, "average_render_seconds": f.average_render,
        "simulated": bool(f.batch and f.batch.simulated), "untrusted_costs": f.untrusted_costs,
        # What the latest run was given; every runner keeps to its own --budget.
        "budget": f.batch.budget if f.batch else None, "credits_committed": round(f.committed, 2),
        "orphans": f.orphans,
    }


def status_info(ledger: Ledger, batch: str | None = None) -> dict[str, Any]:
    """What `status` says of a batch (`figures_info`), or of every batch of the ledger if None,
    with their totals (`api.status`; here, so the command imports no run to say it)."""
    out: dict[str, Any] = {"batches": {name: figures_info(ledger.figures(name))
                                       for name in ([batch] if batch else [b.name for b in ledger.batches()])}}
    if batch:
        return {"batch": batch, **out["batches"][batch]}
    totals = {s.value: 0 for s in JobState}
    for data in out["batches"].values():
        for state, n in data["counts"].items():
            totals[state] += n
    out["counts"] = totals
    out["credits_spent"] = round(sum(d["credits_spent"] for d in out["batches"].values()), 2)
    return out


def orphans_info(o: Orphans) -> dict[str, Any]:
    """A batch's orphans for `--json`: jobs per state, how many were paid, the rows they came from."""
    return {"jobs": o.jobs, "counts": o.counts, "paid": o.paid,
            "rows": [{"origin": r.origin, "label": r.label, "counts": r.counts} for r in o.rows]}


def orphan_lines(info: dict[str, Any], shown: int = 5,
                 apart: str = "left out of the counts above, of watch and of exports") -> list[str]:
    """The orphans of a batch (`orphans_info`): apart from its jobs, with the rows they came from
    (the first `shown`) and what `batcher prune` would do with them."""
    if not info["jobs"]:
        return []
    rows = [f"{r['origin']} {r['label']} ({sum(r['counts'].values())})" for r in info["rows"][:shown]]
    more = f", and {len(info['rows']) - shown} more row(s)" if len(info["rows"]) > shown else ""
    paid = f"; {info['paid']} of them paid for (prune keeps those)" if info["paid"] else ""
    return [f"  orphans: {info['jobs']} job(s) no row of the current manifest produces ({state_counts(info['counts'])})"
            f", {apart}{paid}",
            f"    from rows that went or changed: {', '.join(rows)}{more}",
            "    `batcher prune MANIFEST` cancels the unpaid ones (--forget removes them from the ledger)"]


def by_model_info(counts: dict[str, tuple[dict[str, int], float]]) -> dict[str, Any]:
    """A mixed batch's jobs per state and credits spent, per model (`status --json`'s `by_model`)."""
    return {model: {"jobs": sum(states.values()), "counts": states, "credits_spent": round(spent, 2)}
            for model, (states, spent) in counts.items()}


def status_lines(name: str | None, info: dict[str, Any]) -> list[str]:
    """`batcher status`: one batch's jobs, credits, videos, and what needs the user; a line per
    model when the batch mixes them (`by_model`); one model's jobs when `model` is given."""
    sim = " (SIMULATED: clips from --simulate, not real renders)" if info["simulated"] else ""
    budget = (f" of a budget of {format_credits(info['budget'])} (the latest run's --budget)"
              if info["budget"] is not None else " (no budget set)")
    model = f", model {info['model']}" if info.get("model") else ""
    if model:
        budget = f" by this model; the batch: {format_credits(info['batch_credits_committed'])} committed{budget}"
    lines = [f"batch {name!r}{model}{sim}: {info['jobs']} job(s): {state_counts(info['counts']) or 'none'}",
             f"  credits: {format_credits(info['credits_spent'])} spent, {format_credits(info['credits_held'])} "
             f"held for unknown outcomes, {format_credits(info['credits_refunded'])} refunded; "
             f"{format_credits(info['credits_committed'])} committed{budget}",
             f"  videos: {info['videos']} downloaded, {info['bytes']:,} bytes"]
    for api_id, share in info.get("by_model", {}).items():
        lines.append(f"  {api_id}: {share['jobs']} job(s): {state_counts(share['counts']) or 'none'}; "
                     f"{format_credits(share['credits_spent'])} credits spent")
    lines += _control_lines(info)
    lines += orphan_lines(info["orphan_jobs"]) if info.get("orphan_jobs") else []
    if info["untrusted_costs"]:
        lines.append(f"  warning: {info['untrusted_costs']} job(s) were answered with a creditCost that cannot be "
                     f"believed (negative, not a number, below half the job's estimate, or more than any clip "
                     f"could cost); their estimates (above the ceiling: the ceiling) are counted instead. "
                     f"`batcher status --job KEY` shows the answer")
    if info["held_unknown"]:
        lost = info["lost_after_payment"]
        lost_text = (f" ({lost} of them paid, then no longer known to the API: their cost is counted as spent)"
                     if lost else "")
        lines.append(f"  {info['held_unknown']} job(s) held as unknown{lost_text}; `batcher status --job KEY` shows "
                     f"why; `batcher retry --unknown MANIFEST` resubmits them (up to "
                     f"{format_credits(info['resubmit_cost'])} credits, maybe paid twice)")
    return lines


def rerun_line(counts: dict[str, int], resubmit_unknown: bool = False) -> str:
    """What a run does with the jobs it found in the ledger (`counts`: jobs per state): polls the
    paid ones not finished (never sending them again), downloads the rendered, sends the pending,
    and holds the rest (unknown, failed, expired, cancelled) until `batcher retry` or `resume`;
    --resubmit-unknown sends the unknown ones too."""
    held = {s: counts.get(s, 0) for s in ("unknown", "failed", "expired", "cancelled")}
    send = counts.get("pending", 0)
    if resubmit_unknown:
        send += held.pop("unknown")
    doing = [f"polls {counts.get('submitted', 0)} paid job(s) not finished (not sent again)",
             f"downloads {counts.get('rendered', 0)} rendered",
             f"sends {send} pending" + (" or unknown (--resubmit-unknown)" if resubmit_unknown else "")]
    if counts.get("submitting"):
        doing.append(f"settles {counts['submitting']} caught mid-submission (held as unknown if stale)")
    kept = sum(held.values())
    doing.append(f"holds {kept}" + (f" ({state_counts(held)})" if kept else ""))
    return f"this run: {', '.join(doing)}; {counts.get('completed', 0)} already completed"


def _control_lines(info: dict[str, Any]) -> list[str]:
    """What the operator asked of the batch's runners, unless it is the usual (running)."""
    control = info.get("control") or "running"
    since = f" since {info['control_at']}" if info.get("control_at") else ""
    if control == "paused":
        return [f"  control: paused{since} (`batcher pause`): runners submit nothing new and wait; jobs in "
                f"flight are polled and downloaded; `batcher resume` goes on"]
    if control == "cancelled":
        return [f"  control: cancelled{since} (`batcher cancel`): nothing more is submitted; `batcher resume` puts "
                f"its cancelled jobs back to pending"]
    return [] if control == "running" else [f"  control: {control}{since}"]


def row_lines(rows: list[tuple[str, str, str, str, dict[str, int]]], show_model: bool = False) -> list[str]:
    """`batcher status --rows`: each row by origin, label (and model, when the batch mixes them)
    and the start of its prompt."""
    lines = []
    for origin, label, prompt, model, counts in rows:
        start = " ".join(prompt.split())
        start = start if len(start) <= 40 else start[:39] + "…"
        named = f" {model}" if show_model else ""
        lines.append(f"{origin} {label}{named} \"{start}\": {state_counts(counts)}")
    return lines


def history_lines(job: Job, events: list[Event]) -> list[str]:
    """`batcher status --job KEY`: where the job stands and everything that happened to it."""
    lines = [f"job {job.key} ({job.origin}, take {job.take}): {job.state}"]
    if job.error:
        lines.append(f"  error: {job.error}")
    lines.append(f"  created {iso(job.created_at)}")
    for e in events:
        move = f"{e.from_state} -> {e.to_state}" if e.to_state else ""
        lines.append(f"  {iso(e.at)}  {e.kind:<18} {move:<24} {e.detail or ''}".rstrip())
    return lines


def model_list_lines(listed: list[dict[str, Any]]) -> list[str]:
    """`batcher models`: each model the API offers, video models first, with its listed price."""
    from ..models import MODELS

    def price(entry: dict[str, Any]) -> str:
        cost = entry.get("creditCost")
        if not isinstance(cost, dict):
            return "price not listed"
        amount, kind = cost.get("amount"), cost.get("type")
        if isinstance(amount, (int, float)) and not isinstance(amount, bool) and abs(amount) < 1e12:
            return f"{amount:g} credits {printable(kind or '').replace('_', ' ')}".strip()
        return "price not listed"
    rows = sorted(listed, key=lambda e: (e.get("type") != "video", str(e.get("apiId"))))
    width = min(60, max((len(printable(e.get("apiId"))) for e in rows), default=10))
    # Every text is the API's: control characters (a terminal's escapes) never reach the screen.
    lines = [f"{printable(e.get('apiId')):<{width}}  {printable(e.get('type') or '?'):<6}  {price(e)}"
             f"{'  (built in)' if e.get('apiId') in MODELS else ''}" for e in rows]
    lines.append(f"{len(rows)} model(s); `batcher models APIID` shows one model's parameters")
    return lines


def model_lines(spec: Any, schema: dict[str, Any]) -> list[str]:
    """`batcher models APIID`: where the description comes from, the price, each parameter as a
    manifest writes it (with its wire name), its rule and default."""
    from ..models import describe_parameters
    facts = {f.wire: f for f in describe_parameters(schema)}
    by = spec.rate_param
    prices = ", ".join(f"{res} {spec.rate({by: res}):g}/s" + (" (a guess)" if spec.is_guess({by: res}) else "")
                       for res in spec.resolutions()) if spec.price_known else ""
    if spec.price_known and not prices:
        prices = f"{spec.rate({}):g} per {'second' if spec.seconds_param else 'job'}"
    prices = prices or "unknown: a budgeted run needs --rate"
    lines = [f"{spec.api_id}  ({spec.source})", f"price: {prices}", "parameters (as a manifest writes them):"]
    for p in spec.params:
        fact = facts.get(p.wire)
        wire = f" [{p.wire}]" if p.wire != p.name else ""
        rule = fact.rule if fact is not None and fact.rule else ""
        kind = fact.type_text if fact is not None else p.kind
        default = f", default {json.dumps(p.default)}" if p.default is not None else ""
        needed = "required" if p.required else "optional"
        lines.append(f"  {p.name}{wire}: {kind}, {needed}{default}{'; ' + rule if rule else ''}")
    return lines


def printable(value: Any, limit: int = 80) -> str:
    """An outside text made safe to print: control characters dropped, at most `limit` characters."""
    return "".join(c for c in str(value) if c.isprintable())[:limit]
