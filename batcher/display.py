"""Human-readable progress lines and summaries (plain text; the CLI decides where they go)."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import IO, Any

from .models import format_credits
from .pool import Progress, RunReport

ORDER = ["completed", "rendered", "submitted", "submitting", "pending", "unknown", "failed", "expired"]


def state_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{counts[s]} {s}" for s in ORDER if counts.get(s))


def progress_line(p: Progress) -> str:
    done = p.counts.get("completed", 0)
    rate = p.completed_this_run / p.elapsed if p.elapsed > 0 else 0.0
    left = p.total - done - p.counts.get("failed", 0) - p.counts.get("expired", 0) - p.counts.get("unknown", 0)
    eta = f", ETA {format_seconds(left / rate)}" if rate > 0 and left > 0 else ""
    budget = f" of {format_credits(p.budget)}" if p.budget is not None else ""
    return (f"[{p.batch}] {done}/{p.total} done | {state_counts(p.counts)} | "
            f"{format_credits(p.spent)}{budget} credits | {rate * 60:.1f}/min{eta}")


def format_seconds(s: float) -> str:
    s = int(s)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


class ProgressPrinter:
    """Live on a terminal (one line redrawn), a plain line at intervals otherwise."""

    def __init__(self, stream: IO[str], live: bool, interval: float = 30.0):
        self.stream = stream
        self.live = live
        self.interval = interval
        self._last = 0.0

    def __call__(self, p: Progress) -> None:
        line = progress_line(p)
        if self.live:
            self.stream.write("\r\x1b[2K" + line[:200])
            self.stream.flush()
        elif time.monotonic() - self._last >= self.interval:
            self._last = time.monotonic()
            self.stream.write(line + "\n")
            self.stream.flush()

    def end(self) -> None:
        if self.live:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()


def summary(report: RunReport, out_dir: str) -> list[str]:
    lines = [f"batch {report.batch!r}: {state_counts(report.counts) or 'no jobs'} "
             f"(of {report.total}) in {format_seconds(report.elapsed)}"]
    budget = f" of a {format_credits(report.budget)} budget" if report.budget is not None else ""
    lines.append(f"credits: {format_credits(report.spent)} spent{budget}; {report.submitted} submitted this run, "
                 f"{report.completed} videos downloaded to {out_dir}")
    lines.extend(report.messages)
    return lines


class JsonLogFormatter(logging.Formatter):
    """One JSON object per log record, with the structured fields the code attached."""

    FIELDS = ("kind", "method", "path", "status", "ms", "job", "from", "to", "event")

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {"time": round(record.created, 3), "level": record.levelname.lower(),
                                "logger": record.name, "message": record.getMessage()}
        for name in self.FIELDS:
            if hasattr(record, name):
                data[name] = getattr(record, name)
        return json.dumps(data)


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
    for h in handlers:
        h.addFilter(RedactFilter(secret))
        root.addHandler(h)
    root.propagate = False
    if not handlers:
        quiet = logging.NullHandler()
        root.addHandler(quiet)
        handlers.append(quiet)
    return handlers
