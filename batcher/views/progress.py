"""Human-readable progress lines and summaries (plain text; the CLI decides where they go)."""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from collections.abc import Callable
from typing import IO, Any

from ..money import json_safe
from ..policy import Learned
from ..run import Progress, RunReport
from ..text import STATE_ORDER as ORDER
from ..text import format_credits, format_seconds, state_counts
from .commands import printable

SHORT = {"completed": "done", "rendered": "rendered", "submitted": "rendering", "submitting": "sending",
         "pending": "waiting", "unknown": "held", "failed": "failed", "expired": "expired", "cancelled": "cancelled"}


def _eta(p: Progress) -> str:
    """Time left for the jobs that can still finish: when the budget will stop the run, only for
    those it covers, and the line says so. While the batch is paused, none can be told."""
    if p.paused:
        return "ETA paused"
    done = p.counts.get("completed", 0)
    rate = p.completed_this_run / p.elapsed if p.elapsed > 0 else 0.0
    ended = done + sum(p.counts.get(s, 0) for s in ("failed", "expired", "unknown", "cancelled"))
    goal = p.total if p.covered is None else min(p.total, p.covered)
    left = goal - ended
    note = f" (budget stops at ~{goal:,} of {p.total:,})" if p.covered is not None else ""
    if rate <= 0 or left <= 0:
        return f"ETA -{note}" if note else ""
    return f"ETA {format_seconds(left / rate)}{note}"


def _credits(p: Progress) -> str:
    """`640/1,000 cr`: what this run spent (of the budget); when others spent too (other runners,
    earlier runs), the batch's figure follows: `390 cr, batch 780/1,000`."""
    budget = f"/{format_credits(p.budget)}" if p.budget is not None else ""
    if p.run_spent is None or p.run_spent == p.spent:
        return f"{format_credits(p.spent)}{budget} cr"
    return f"{format_credits(p.run_spent)} cr, batch {format_credits(p.spent)}{budget}"


def progress_line(p: Progress, width: int = 120) -> str:
    """One line that fits `width` columns: a bar, jobs per state, credits of the budget, rate, ETA.
    Parts are dropped, least useful first, until the line fits; it never wraps."""
    done = p.counts.get("completed", 0)
    rate = p.completed_this_run / p.elapsed * 60 if p.elapsed > 0 else 0.0
    states = " ".join(f"{p.counts[s]} {SHORT[s]}" for s in ORDER if p.counts.get(s) and s != "completed")
    # (text, priority): higher priority survives longer when the terminal is narrow
    parts = [(f"{done}/{p.total}", 9), (_eta(p), 8), (_credits(p), 7),
             (f"{rate:.1f}/min", 5), (states, 4), (f"[{p.batch}]", 2)]
    parts = [(text, prio) for text, prio in parts if text]
    limit = max(10, width - 1)  # the last column stays empty: some terminals wrap when it is written

    def render(chosen: list[str], bar_width: int) -> str:
        bar = ""
        if bar_width >= 5:
            filled = round(bar_width * done / p.total) if p.total else 0
            bar = "[" + "#" * filled + "." * (bar_width - filled) + "] "
        return bar + " | ".join(chosen)

    chosen = list(parts)
    while True:
        text = render([t for t, _ in chosen], 0)
        spare = limit - len(text) - 3
        if spare >= 10 or len(chosen) <= 1:
            return render([t for t, _ in chosen], min(40, spare))[:limit]
        chosen.remove(min(chosen, key=lambda tp: tp[1]))


class ProgressPrinter:
    """Live on a terminal (one line redrawn), a plain line at intervals otherwise."""

    def __init__(self, stream: IO[str], live: bool, interval: float = 30.0, width: int | None = None):
        self.stream = stream
        self.live = live
        self.interval = interval
        self.width = width  # None: the terminal's width, read at each redraw
        self._last = 0.0

    def __call__(self, p: Progress) -> None:
        if self.live:
            # Asked at every redraw: the terminal may have been resized.
            width = self.width or shutil.get_terminal_size((80, 24)).columns
            self.stream.write("\r\x1b[2K" + progress_line(p, width))
            self.stream.flush()
        elif time.monotonic() - self._last >= self.interval:
            self._last = time.monotonic()
            self.stream.write(progress_line(p, 200) + "\n")
            self.stream.flush()

    def clear(self) -> None:
        """Make way for a message: on a terminal, the line is erased and the cursor left at its start."""
        if self.live:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()

    def end(self) -> None:
        self.clear()


def summary(report: RunReport, out_dir: str, retry_command: Callable[[str], str] | None = None) -> list[str]:
    """The end-of-run summary: where the batch stands, what it cost, and, for jobs that did not
    finish, their reasons grouped and the command that retries them (`retry_command(state)`)."""
    lines = [f"batch {report.batch!r}: {state_counts(report.counts) or 'no jobs'} "
             f"(of {report.total}) in {format_seconds(report.elapsed)}"]
    budget = f" of a {format_credits(report.budget)} budget" if report.budget is not None else ""
    spent = f"{format_credits(report.spent)} spent{budget}"
    if report.run_spent is not None and report.run_spent != report.spent:  # others spent too
        spent = f"{format_credits(report.run_spent)} spent by this run (the batch: {spent})"
    lines.append(f"credits: {spent}; {report.submitted} submitted this run, "
                 f"{report.completed} videos downloaded to {out_dir}")
    if report.uploads:
        lines.append(report.uploads)
    if report.webhooks is not None:
        lines.append(report.webhooks.line())
    if report.render_times:
        lines.append("render times learned: " + "; ".join(map(learned_line, report.render_times)))
    for state in ("failed", "expired"):
        groups = [g for g in report.failures if g[0] == state]
        if not groups:
            continue
        lines.append(f"{state} ({sum(g[2] for g in groups)}), by reason:")
        for _, reason, n, keys in groups[:5]:
            more = ", ..." if n > len(keys) else ""
            lines.append(f"  {n} x {reason} (e.g. {', '.join(k[:10] for k in keys)}{more})")
        if len(groups) > 5:
            lines.append(f"  ... and {len(groups) - 5} more reason(s): `batcher export` lists every job's error")
        if retry_command is not None:
            # An expired clip was paid for; a failed job may never have been charged (refused at
            # submission, or refunded), so its retry is a new render, not a second payment for one.
            cost = "renders again, paying again" if state == "expired" else "a new render each, paid as any other"
            lines.append(f"  to retry them ({cost}): {retry_command(state)}")
    if report.counts.get("cancelled"):
        lines.append(f"cancelled ({report.counts['cancelled']}): never sent; `batcher resume` (the same MANIFEST, "
                     f"or --batch {report.batch}) puts them back to pending, then `batcher run` renders them")
    elif report.control == "paused":
        lines.append("the batch is paused: `batcher resume` lets its runners submit again")
    lines.extend(m for m in report.messages if m not in report.told)  # (said as they happened: once)
    return lines


def learned_line(learned: Learned) -> str:
    """`happyhorse-1.0-r2v 5 s 720p: 1.02 s +- 0.21 s from 800 render(s) (guessed 5 s)`."""
    model, duration, resolution = learned.named
    if isinstance(duration, int | float) and not isinstance(duration, bool):
        duration = f"{duration:g} s"
    named = " ".join(printable(x, 60) for x in (model, duration, resolution) if x is not None)
    start = "started from earlier batches' measurement" if learned.seeded else f"guessed {learned.guess:.3g} s"
    return f"{named}: {learned.mean:.3g} s +- {learned.std:.2g} s from {learned.renders} render(s) ({start})"


def summary_json(report: RunReport, out_dir: str, retry_command: Callable[[str], str] | None = None
                 ) -> dict[str, Any]:
    """The same summary for machines (`batcher run --json`)."""
    return {
        "batch": report.batch, "exit_code": report.exit_code, "stop_reason": report.stop_reason,
        "control": report.control,
        "counts": report.counts, "jobs": report.total, "credits_spent": round(report.spent, 2),
        "credits_spent_this_run": round(report.run_spent, 2) if report.run_spent is not None else None,
        "budget": report.budget, "held_unknown": report.held_jobs, "resubmit_cost": round(report.held_cost, 2),
        "submitted_this_run": report.submitted, "downloaded_this_run": report.completed,
        "downloaded_bytes": report.downloaded_bytes, "elapsed_seconds": round(report.elapsed, 3),
        "out_dir": out_dir, "messages": report.messages, "uploads": report.uploads,
        "webhooks": report.webhooks.as_dict() if report.webhooks is not None else None,
        "render_times": [learned.as_dict() for learned in report.render_times],
        "failures": [{"state": st, "reason": reason, "count": n, "keys": keys,
                      "retry": retry_command(st) if retry_command else None}
                     for st, reason, n, keys in report.failures],
    }


class JsonLogFormatter(logging.Formatter):
    """One JSON object per log record, with the structured fields the code attached."""

    FIELDS = ("kind", "method", "path", "status", "ms", "job", "from", "to", "event")

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {"time": round(record.created, 3), "level": record.levelname.lower(),
                                "logger": record.name, "message": record.getMessage()}
        for name in self.FIELDS:
            if hasattr(record, name):
                data[name] = getattr(record, name)
        return json.dumps(json_safe(data), allow_nan=False)


class RedactFilter(logging.Filter):
    """Belt and braces: no log line may carry the API key, whatever code logged it."""

    def __init__(self, secret: str | None):
        super().__init__()
        self.secret = secret

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secret and self.secret in record.getMessage():
            record.msg, record.args = record.getMessage().replace(self.secret, "[redacted]"), ()
        return True


def setup_logging(verbose: bool, json_path: str | None, secret: str | None) -> list[logging.Handler]:
    root = logging.getLogger("batcher")
    root.setLevel(logging.INFO if (verbose or json_path) else logging.WARNING)
    handlers: list[logging.Handler] = []
    if verbose:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s", "%H:%M:%S"))
        handlers.append(h)
    if json_path:
        h2 = logging.FileHandler(json_path, encoding="utf-8")
        h2.setFormatter(JsonLogFormatter())
        handlers.append(h2)
    for handler in handlers:
        handler.addFilter(RedactFilter(secret))
        root.addHandler(handler)
    root.propagate = False
    if not handlers:
        quiet = logging.NullHandler()
        root.addHandler(quiet)
        handlers.append(quiet)
    return handlers
