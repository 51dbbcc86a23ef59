"""What the commands print for people: a plan, a batch's status, its rows, one job's history."""

from __future__ import annotations

import json
from typing import Any

from .display import format_seconds, state_counts
from .export import iso
from .ledger import Event, Job
from .manifest import Manifest
from .plan import JobSpec, PlanSummary
from .text import format_credits


def plan_lines(m: Manifest, summary: PlanSummary, overrides: dict[str, float], data: dict[str, Any],
               jobs: list[JobSpec]) -> list[str]:
    """`batcher plan`: the batch's figures, wall time, every job if asked, the rows, the ledger."""
    guess = ""
    if summary.credits_are_guess:
        guessed = sorted(r for r in m.model.guessed_rates if r in summary.by_resolution and r not in overrides)
        guess = " (an upper estimate: " + ", ".join(
            f"{r} at {m.model.credits_per_second[r]:g} credits/s is unpublished" for r in guessed) + \
            "; set --rate to change it)"
    wall = data["wall_time"]
    lines = [f"batch {m.batch!r}: {summary.jobs} job(s), {summary.seconds_of_video} s of video, "
             f"estimated {format_credits(summary.credits)} credits{guess}"]
    if summary.duplicates:
        lines.append(f"{summary.duplicates} duplicate job(s) merged: identical requests are rendered once")
    lines.append(f"wall time at --concurrency {wall['concurrency']}: about {format_seconds(wall['seconds'])} "
                 f"(renders of {m.model.api_id} typically take {wall['typical_render_seconds']:g} s)")
    for j in jobs:
        extra = {k: v for k, v in j.params.items() if k not in ("prompt", "references")}
        prompt = " ".join(str(j.params.get("prompt", "")).split())
        lines.append(f"  {j.key}  {j.label} t{j.take}  {format_credits(j.estimate):>7}  {prompt!r}  "
                     f"{json.dumps(extra, ensure_ascii=False)}  refs: {len(j.params.get('references', []))}")
    width = max([len(r.origin) for r in summary.rows] + [6])
    lines.append(f"  {'row':<{width}}  {'label':<12} {'jobs':>7} {'credits':>10}")
    shown = summary.rows[:50]
    lines += [f"  {r.origin:<{width}}  {r.label:<12} {r.jobs:>7} {format_credits(r.credits):>10}" for r in shown]
    if len(summary.rows) > len(shown):
        lines.append(f"  ... and {len(summary.rows) - len(shown)} more row(s) (--json lists them all)")
    if "ledger" in data:
        led = data["ledger"]
        lines.append(f"ledger {led['path']}: holds {led['in_ledger']} of these jobs, {led['completed']} completed")
    return lines


def status_lines(name: str | None, info: dict[str, Any]) -> list[str]:
    """`batcher status`: one batch's jobs, credits, videos, and what needs the user."""
    sim = " (SIMULATED: clips from --simulate, not real renders)" if info["simulated"] else ""
    budget = (f" of a budget of {format_credits(info['budget'])} (the latest run's --budget)"
              if info["budget"] is not None else " (no budget set)")
    lines = [f"batch {name!r}{sim}: {info['jobs']} job(s): {state_counts(info['counts']) or 'none'}",
             f"  credits: {format_credits(info['credits_spent'])} spent, {format_credits(info['credits_held'])} "
             f"held for unknown outcomes, {format_credits(info['credits_refunded'])} refunded; "
             f"{format_credits(info['credits_committed'])} committed{budget}",
             f"  videos: {info['videos']} downloaded, {info['bytes']:,} bytes"]
    if info["untrusted_costs"]:
        lines.append(f"  warning: {info['untrusted_costs']} job(s) were answered with a creditCost that cannot be "
                     f"believed (negative or not a number); their estimates are counted instead. "
                     f"`batcher status --job KEY` shows the answer")
    if info["held_unknown"]:
        lost = info["lost_after_payment"]
        lost_text = (f" ({lost} of them paid, then no longer known to the API: their cost is counted as spent)"
                     if lost else "")
        lines.append(f"  {info['held_unknown']} job(s) held as unknown{lost_text}; `batcher status --job KEY` shows "
                     f"why; `batcher retry --unknown MANIFEST` resubmits them (up to "
                     f"{format_credits(info['resubmit_cost'])} credits, maybe paid twice)")
    return lines


def row_lines(rows: list[tuple[str, str, str, dict[str, int]]]) -> list[str]:
    """`batcher status --rows`: each row by origin, label and the start of its prompt."""
    lines = []
    for origin, label, prompt, counts in rows:
        start = " ".join(prompt.split())
        start = start if len(start) <= 40 else start[:39] + "…"
        lines.append(f"{origin} {label} \"{start}\": {state_counts(counts)}")
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
    from .models import MODELS

    def price(entry: dict[str, Any]) -> str:
        cost = entry.get("creditCost")
        if not isinstance(cost, dict):
            return "price not listed"
        amount, kind = cost.get("amount"), cost.get("type")
        if isinstance(amount, (int, float)) and not isinstance(amount, bool):
            return f"{amount:g} credits {str(kind or '').replace('_', ' ')}".strip()
        return "price not listed"
    rows = sorted(listed, key=lambda e: (e.get("type") != "video", str(e.get("apiId"))))
    width = max((len(str(e.get("apiId"))) for e in rows), default=10)
    lines = [f"{e.get('apiId')!s:<{width}}  {e.get('type') or '?'!s:<6}  {price(e)}"
             f"{'  (built in)' if e.get('apiId') in MODELS else ''}" for e in rows]
    lines.append(f"{len(rows)} model(s); `batcher models APIID` shows one model's parameters")
    return lines


def model_lines(spec: Any, schema: dict[str, Any]) -> list[str]:
    """`batcher models APIID`: where the description comes from, the price, each parameter as a
    manifest writes it (with its wire name), its rule and default."""
    from .schemarules import describe_parameters
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
