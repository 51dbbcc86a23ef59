"""What `batcher watch` shows: a fleet snapshot as lines that fit a terminal, and as a JSON
object. Pure: a value in, lines out (the command reads the ledger and decides where they go)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..text import STATE_ORDER, format_credits, format_seconds, iso

if TYPE_CHECKING:
    from ..ledger.fleet import Fleet, RunnerStatus


def rate_per_minute(f: Fleet) -> float:
    """Jobs completed per minute over the recent window."""
    return f.recent / f.window * 60 if f.window > 0 else 0.0


def eta_seconds(f: Fleet) -> float | None:
    """Time left at the recent rate: 0 when nothing is left, None when it cannot be told (no
    recent completion, or the batch is paused)."""
    left = f.left
    if left == 0:
        return 0.0
    rate = rate_per_minute(f)
    if f.batch.control == "paused" or rate <= 0:
        return None
    return left / rate * 60


def _age(now: float, then: float | None) -> str:
    return "-" if then is None else f"{format_seconds(max(0.0, now - then))} ago"


def _cut(text: str, width: int) -> str:
    """The text, cut to `width` columns with `...` if it is longer."""
    if len(text) <= width:
        return text
    return text[:width - 3] + "..." if width > 6 else text[:width]


def _elide(text: str, width: int) -> str:
    """The text in `width` columns, its middle replaced by `~` if it is longer (host names differ
    at both ends)."""
    if len(text) <= width:
        return text
    if width < 5:
        return text[:width]
    head = (width - 1) // 2
    return text[:head] + "~" + text[len(text) - (width - 1 - head):]


def _first_fitting(candidates: list[str], width: int) -> str:
    """The first (richest) candidate that fits; else the last one, cut."""
    for line in candidates:
        if len(line) <= width:
            return line
    return _cut(candidates[-1], width)


def _flow(head: str, items: list[str], width: int) -> list[str]:
    """`head` then the items, as many to a line as fit (later lines indented under the first
    item); an item is never split, only cut when it alone is too long."""
    indent = " " * len(head)
    lines, line, empty = [], head, True
    for item in items:
        if not empty and len(line) + 2 + len(item) > width:
            lines.append(line)
            line, empty = indent, True
        line += ("" if empty else ", ") + item
        empty = False
    lines.append(line)
    return [_cut(x, width) for x in lines]


def _title(f: Fleet, width: int) -> str:
    control = f.batch.control
    word = control if control == "running" else f"{control.upper()} {_age(f.at, f.batch.control_at)}".rstrip(" -")
    clock = time.strftime("%H:%M:%S", time.localtime(f.at))
    tail = [f" | {word}" + (" | simulated" if f.batch.simulated else "") + f" | {clock}", f" | {word} | {clock}",
            f" | {word}"]
    for rest in tail:  # the whole name, with as much beside it as fits
        if width - len(rest) >= len(f.batch.name):
            return f.batch.name + rest
    if width - len(tail[-1]) >= 12:  # else the name elided, beside the control word alone
        return _elide(f.batch.name, width - len(tail[-1])) + tail[-1]
    return _cut(word, width)


def _progress(f: Fleet, width: int) -> str:
    done, total = f.counts.get("completed", 0), f.jobs
    pct = f" ({done * 100 // total}%)" if total else ""
    text = f"{done:,}/{total:,} completed{pct}"
    bar_width = min(40, width - len(text) - 3)
    if bar_width < 5:
        return _cut(text, width)
    filled = round(bar_width * done / total) if total else 0
    return "[" + "#" * filled + "." * (bar_width - filled) + "] " + text


def _states(f: Fleet, width: int) -> list[str]:
    order = STATE_ORDER + sorted(s for s in f.counts if s not in STATE_ORDER)  # a state added later shows too
    items = [f"{f.counts[s]:,} {s}" for s in order if f.counts.get(s)]
    return _flow("jobs: ", items, width) if items else ["jobs: none"]


def _credits(f: Fleet, width: int) -> str:
    spent, committed, budget = (format_credits(f.spent), format_credits(f.batch.committed),
                                f.batch.budget)
    if budget is None:
        return _first_fitting([f"credits: {spent} spent, {committed} committed (no budget)",
                               f"credits: {spent} spent, {committed} committed", f"cr {spent}/{committed}"], width)
    share = f" ({f.batch.committed * 100 / budget:.0f}%)" if budget > 0 else ""
    of = format_credits(budget)
    return _first_fitting([f"credits: {spent} spent, {committed} committed of a {of} budget{share}",
                           f"credits: {spent} spent, {committed}/{of} committed{share}",
                           f"cr {spent} spent {committed}/{of}", f"cr {committed}/{of}"], width)


def _pace(f: Fleet, width: int) -> str:
    rate = f"{rate_per_minute(f):.1f}/min"
    window = format_seconds(f.window)
    left, eta = f.left, eta_seconds(f)
    if left == 0:
        when, short = "nothing left to run", "done"
    elif eta is not None:
        when, short = f"ETA {format_seconds(eta)} for {left:,} job(s)", f"ETA {format_seconds(eta)}"
    else:
        why = "paused" if f.batch.control == "paused" else "no recent completion"
        when, short = f"ETA - ({why}; {left:,} job(s) left)", f"ETA - ({why})"
    return _first_fitting([f"rate: {rate} over the last {window} | {when}", f"rate: {rate} | {when}",
                           f"rate: {rate} | {short}", f"{rate} {short}"], width)


def _runner_lines(f: Fleet, width: int, room: int | None) -> list[str]:
    runners = list(f.runners)
    stale = sum(r.stale(f.at) for r in runners)
    if not runners:
        return [_cut("runners: none working on this batch", width)]
    head = _first_fitting([f"runners: {len(runners)}" + (f", {stale} stale (leases lapsed)" if stale else ""),
                           f"runners: {len(runners)}" + (f", {stale} stale" if stale else "")], width)
    shown = runners if room is None or len(runners) <= max(room - 1, 1) else runners[:max(room - 2, 1)]
    lines = [head, *_runner_table(shown, f.at, width)]
    if len(shown) < len(runners):
        more = runners[len(shown):]
        hidden_stale = sum(r.stale(f.at) for r in more)
        lines.append(_cut(f"  ... and {len(more)} more" + (f" ({hidden_stale} stale)" if hidden_stale else ""), width))
    return lines


def _runner_table(runners: list[RunnerStatus], now: float, width: int) -> list[str]:
    """A line per runner, in aligned columns: `  host  pid 4121  holds 8  heartbeat 3s ago`, and
    `STALE` when its leases lapsed. The richest layout that leaves the host names room is used for
    every line; host names are elided to fit, and the marker is the last thing to go."""
    pids = [str(r.pid or "?") for r in runners]
    holds = [f"{r.holds:,}" for r in runners]
    ages = [_age(now, r.heartbeat_at) if r.heartbeat_at is not None else "" for r in runners]
    beats = [f"heartbeat {a}" if a else "no runner row" for a in ages]
    shorts = [a.removesuffix(" ago") if a else "no row" for a in ages]
    pid_w, hold_w, beat_w, short_w = (max(len(x) for x in column) for column in (pids, holds, beats, shorts))
    host_w = max(len(r.host) for r in runners)
    layouts: list[Callable[[int], str]] = [
        lambda i: f"  pid {pids[i]:>{pid_w}}  holds {holds[i]:>{hold_w}}  {beats[i]:<{beat_w}}",
        lambda i: f"  {pids[i]:>{pid_w}}  holds {holds[i]:>{hold_w}}  {shorts[i]:<{short_w}}",
        lambda i: f" {holds[i]:>{hold_w}} {shorts[i]:<{short_w}}",
        lambda i: ""]
    marks = ["  STALE" if r.stale(now) else "" for r in runners]
    mark_w = max(len(m) for m in marks)
    for least in (min(16, host_w), min(8, host_w)):
        for layout in layouts:
            room = width - 2 - max(len(layout(i)) for i in range(len(runners))) - mark_w
            if room >= least:
                column = min(host_w, room)
                return [_cut(("  " + _elide(r.host, column).ljust(column) + layout(i) + marks[i]).rstrip(), width)
                        for i, r in enumerate(runners)]
    return [_cut((m.strip() + " " + r.host).strip(), width) for r, m in zip(runners, marks, strict=True)]


def screen(f: Fleet, width: int, height: int | None = None) -> list[str]:
    """The watch screen in lines of at most `width - 1` columns (the last column stays empty: some
    terminals wrap when it is written) and, with `height`, at most `height - 1` lines (runners
    beyond are summed up in one line)."""
    w = max(1, width - 1)
    lines = [_title(f, w), _progress(f, w), *_states(f, w), _credits(f, w), _pace(f, w)]
    room = None if height is None else max(2, height - 1 - len(lines))
    lines += _runner_lines(f, w, room)
    return lines if height is None else lines[:max(1, height - 1)]


def snapshot_json(f: Fleet) -> dict[str, Any]:
    """The same snapshot for scripts (`batcher watch --json`)."""
    eta = eta_seconds(f)
    return {
        "batch": f.batch.name, "at": iso(f.at), "control": f.batch.control, "control_at": iso(f.batch.control_at),
        "simulated": bool(f.batch.simulated), "jobs": f.jobs, "counts": f.counts, "left": f.left,
        "credits": {"spent": round(f.spent, 2), "committed": round(f.batch.committed, 2), "budget": f.batch.budget},
        "rate_per_minute": round(rate_per_minute(f), 2), "rate_window_seconds": round(f.window, 1),
        "eta_seconds": round(eta, 1) if eta is not None else None,
        "runners": [{"owner": r.owner, "host": r.host, "pid": r.pid, "holds": r.holds,
                     "started_at": iso(r.started_at), "heartbeat_at": iso(r.heartbeat_at),
                     "heartbeat_age_seconds": round(f.at - r.heartbeat_at, 1) if r.heartbeat_at is not None else None,
                     "lease_until": iso(r.lease_until), "stale": r.stale(f.at), "recorded": r.heartbeat_at is not None}
                    for r in f.runners],
    }
