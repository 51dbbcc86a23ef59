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

A manifest refused for a local image (found offline, when it is checked) is refused once with its
refused URLs too (`with_url_refusals`): both kinds in one refusal, before anything is staged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import anyio

from ..errors import Diagnostic, MalformedAnswer, ManifestError, NotSentError, ServerError
from ..ledger import Reference
from ..manifest import Located, Manifest, as_list
from ..models import check_url as url_problem
from ..references import (
    HEAD_BYTES,
    MAX_BYTES,
    LocalFile,
    is_local_address,
    judge_image,
    looks_like_local,
    reserved_host,
    resolve_local,
)
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


# --- one refusal for local images and reference URLs alike ------------------------------------

def reference_urls(m: Manifest) -> tuple[dict[str, str], bool]:
    """The well-formed reference URLs a manifest's rows name (URL -> the origin of the first row
    using it, where a run's preflight points), and whether a local image it names is refused:
    read from the rows as written, so both are known when the manifest fails `check`."""
    uses: dict[str, str] = {}
    local_refused = any(_refused_set_value(v) for loc in m.reference_sets.values() for v in loc.value)
    for row in m.rows:
        written = row.fields.get("references", m.defaults.get("references"))
        for spec in _flattened(written) if written is not None else ():
            values = m.reference_sets[spec].value if spec in m.reference_sets else [spec]
            for value in values:
                if not isinstance(value, str) or is_local_address(value):
                    continue
                if url_problem(value) is None and not value.lower().startswith("file:"):
                    uses.setdefault(value, row.origin)
                elif spec not in m.reference_sets and _names_local(value, m.base):
                    local_refused = local_refused or bool(resolve_local(value, m.base, row.origin)[1])
    return uses, local_refused


def _names_local(spec: str, base: Path) -> bool:
    """Whether a row's reference names local images: it reads as a path, or names a file or
    folder beside the manifest (as `plan.references` reads it)."""
    try:
        return looks_like_local(spec) or ("://" not in spec and (base / spec).exists())
    except (OSError, ValueError):
        return False


def _refused_set_value(value: object) -> bool:
    """A set keeps the value of a local image it could not use (see `manifest.document`)."""
    return isinstance(value, str) and url_problem(value) is not None and looks_like_local(value)


def _flattened(loc: Located) -> list[str]:
    items = as_list(loc) if isinstance(loc.value, list) else [loc]
    return [s for item in items for s in (_flattened(item) if isinstance(item.value, list) else [item.value])
            if isinstance(s, str)]


def with_url_refusals(e: ManifestError, m: Manifest, fetch: Callable[[dict[str, str]], list[str]]) -> ManifestError:
    """`e`, a refused manifest, with what preflight refuses among its reference URLs (`fetch`
    fetches them, before anything is staged) when it refuses a local image: one refusal lists
    both kinds, in the manifest's order. Otherwise `e` as it is."""
    uses, local_refused = reference_urls(m)
    if not (local_refused and uses):
        return e
    found = [Diagnostic(*_located(line, uses)) for line in fetch(uses)]
    # the cap's count of problems not shown stays last (see manifest.Diagnostics)
    capped = bool(e.diagnostics) and e.diagnostics[-1].message.startswith("... and ")
    shown, rest = (e.diagnostics[:-1], e.diagnostics[-1:]) if capped else (e.diagnostics, [])
    return ManifestError([*sorted([*shown, *found], key=lambda d: (d.file, d.line)), *rest])


def _located(line: str, uses: dict[str, str]) -> tuple[str, int, str]:
    """(file, line, message) of a preflight line `ORIGIN: reference URL: why`."""
    origin = next(o for url, o in uses.items() if line.startswith(f"{o}: reference {url}: "))
    file, _, number = origin.rpartition(":")
    return file, int(number), line[len(origin) + 2:]
