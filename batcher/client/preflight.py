"""Preflight: every distinct reference URL of a batch checked before anything is spent.

What the model accepts (batcher.references.facts, the rules' home): JPEG, PNG or WEBP (judged by the
bytes, not the Content-Type), at most 10 MB, shortest side at least 400 pixels. A URL is fetched
with a range request for its first bytes; the type and the size in pixels are read from the
image's header, the size in bytes from the answer's headers.

A definite answer (4xx/5xx, not an image, too big, too small) is an ERROR: the batch is refused
with every one of them at once. A URL that cannot be reached at all from this machine (no DNS, no
route, refused) is UNREACHABLE: a warning only, since the API's network may see what ours cannot.

Results are remembered (in the ledger, by the caller): a rerun asks again cheaply. A result that
came with an ETag or Last-Modified is asked again conditionally (If-None-Match /
If-Modified-Since), and a 304 keeps it; an OK result without validators is trusted for 24 hours
without asking. Errors and unreachable results are never trusted: a fixed image passes next run.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import anyio

from ..errors import MalformedAnswer, NotSentError, ServerError
from ..ledger import Reference
from ..references import HEAD_BYTES, MAX_BYTES, LocalFile, is_local_address, judge_image, reserved_host
from .answers import ReferenceFetch
from .http import PixelDojoClient

TRUST_SECONDS = 24 * 3600  # an OK result without validators is trusted this long
WARNINGS_SHOWN = 3  # unreachable references named one by one; the rest are counted


class Outcome(str, Enum):
    OK = "ok"
    ERROR = "error"  # a definite answer the API would refuse
    UNREACHABLE = "unreachable"  # not reachable from this machine: a warning


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    detail: str | None = None
    etag: str | None = None
    last_modified: str | None = None


@dataclass
class PreflightReport:
    """What preflight found: `errors` and `warnings` as `FILE:LINE: reference URL: why` lines,
    `results` to remember, and how many URLs were checked and fetched."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    results: list[Reference] = field(default_factory=list)
    checked: int = 0
    fetched: int = 0
    placeholders: int = 0  # references on reserved example hosts: never fetched, said in one line

    def warning_lines(self, shown: int = WARNINGS_SHOWN) -> list[str]:
        """The warnings, capped: the first few, then a count of the rest."""
        lines = [f"{w} (a warning: the API may still reach it)" for w in self.warnings[:shown]]
        rest = len(self.warnings) - shown
        if rest > 0:
            lines.append(f"{rest} more reference(s) could not be reached from this machine; the API may still see them")
        if self.placeholders:
            lines.append(f"{self.placeholders} reference(s) on example hosts (example.com, *.test, localhost, ...) "
                         f"were not checked: placeholders, or hosts only the API can reach")
        return lines


# --- judging one answer ------------------------------------------------------------------------

def judge(answer: ReferenceFetch) -> Verdict:
    """What one answer (200 or 206, or anything else) says about a reference."""
    if answer.status not in (200, 206):
        return Verdict(Outcome.ERROR, f"answered HTTP {answer.status}, not an image")
    acceptable, detail = judge_image(answer.head, answer.size)
    if not acceptable:
        return Verdict(Outcome.ERROR, detail)
    return Verdict(Outcome.OK, detail, answer.etag, answer.last_modified)


def trusted(known: Reference | None, now: float) -> bool:
    """An OK result without validators, young enough to take without asking."""
    return (known is not None and known.outcome == Outcome.OK.value and not known.etag
            and not known.last_modified and now - known.checked_at < TRUST_SECONDS)


async def check_url(client: PixelDojoClient, url: str, known: Reference | None) -> Verdict:
    """Fetch (or ask again conditionally about) one reference URL, and judge it."""
    if reserved_host(url):
        return Verdict(Outcome.UNREACHABLE, "a reserved example host (RFC 2606): not fetched")
    headers = {"range": f"bytes=0-{HEAD_BYTES - 1}"}
    if known is not None and known.outcome == Outcome.OK.value:
        if known.etag:
            headers["if-none-match"] = known.etag
        if known.last_modified:
            headers["if-modified-since"] = known.last_modified
    try:
        answer = await client.fetch_reference(url, MAX_BYTES, headers, keep=HEAD_BYTES)
    except NotSentError as e:
        return Verdict(Outcome.UNREACHABLE, f"could not be reached from this machine: {e}")
    except ServerError as e:
        return Verdict(Outcome.UNREACHABLE, str(e))
    except MalformedAnswer as e:
        return Verdict(Outcome.ERROR, str(e))
    if answer.status == 304 and known is not None:
        return Verdict(Outcome.OK, known.detail, answer.etag or known.etag, answer.last_modified or known.last_modified)
    return judge(answer)


def check_local_file(path: Path) -> Verdict:
    """A local reference image judged as a URL's answer would be: type by its bytes, size in
    bytes and shortest side (before it is uploaded, and by `validate --online`)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(HEAD_BYTES)
    except OSError as e:
        return Verdict(Outcome.ERROR, f"cannot be read ({e.strerror or e})")
    return judge(ReferenceFetch(status=200, url=path.as_uri(), head=head, size=size))


def check_local_files(files: Iterable[LocalFile], report: PreflightReport) -> None:
    """Add each refused local image to `report.errors` as `FILE:LINE: reference PATH: why`."""
    for f in files:
        verdict = check_local_file(f.path)
        if verdict.outcome is not Outcome.OK:
            report.errors.append(f"{f.origin}: reference {f.shown}: {verdict.detail}")


# --- a whole batch -----------------------------------------------------------------------------

def references_of(jobs: Iterable[tuple[str, Mapping[str, Any]]], into: dict[str, str] | None = None
                  ) -> dict[str, str]:
    """Each distinct reference URL of (origin, parameters) pairs -> the origin of the first job using it."""
    uses = {} if into is None else into
    for origin, params in jobs:
        for url in params.get("references") or ():
            if isinstance(url, str) and not is_local_address(url):  # local images: see check_local_file
                uses.setdefault(url, origin)
    return uses


async def preflight(client: PixelDojoClient, uses: Mapping[str, str], known: Mapping[str, Reference],
                    now: float, *, concurrency: int = 8) -> PreflightReport:
    """Check every URL of `uses` (URL -> the origin of a job using it), each once; a URL that
    `known` vouches for (see the module's docstring) is not fetched at all."""
    report = PreflightReport(checked=len(uses))
    verdicts: dict[str, Verdict] = {}
    limiter = anyio.CapacityLimiter(max(1, concurrency))

    async def one(url: str) -> None:
        async with limiter:
            verdicts[url] = await check_url(client, url, known.get(url))

    async with anyio.create_task_group() as tg:
        for url in uses:
            if trusted(known.get(url), now):
                continue
            report.fetched += 0 if reserved_host(url) else 1
            tg.start_soon(one, url)
    for url, origin in uses.items():  # in the batch's order
        verdict = verdicts.get(url)
        if verdict is None:
            continue
        line = f"{origin}: reference {url}: {verdict.detail}"
        if verdict.outcome is Outcome.ERROR:
            report.errors.append(line)
        elif reserved_host(url):
            report.placeholders += 1
        elif verdict.outcome is Outcome.UNREACHABLE:
            report.warnings.append(line)
        if not reserved_host(url):
            report.results.append(Reference(url, verdict.outcome.value, verdict.detail, verdict.etag,
                                            verdict.last_modified, now))
    return report
