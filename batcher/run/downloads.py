"""Downloads: each finished job's video, fetched as soon as its job completes (soonest-expiring URL
first), written to a temporary name, checked, published under its final name without replacing
another job's video, and recorded with its size and sha256.

The clip is paid for, so a failed download never ends a job while its URL may still serve it:
any failure (403/404/410, 5xx, too slow, not a video, a size over the cap) is tried again after
a back-off, in this run and in every later one, and the job stays `rendered` with the reason. A
URL that is refused, gone or past its expiry is first refreshed by polling the job again: any URL
the answer gives, the same one included, renews the job's expiry. The job becomes `expired`
(re-rendering it is the user's decision: it pays again) only when its URL, past its expiry,
answers 403/404/410 and the API, polled again, either has no output URL for it, or gives the
same URL back with no expiresAt ahead and that URL then answers 403/404/410 on every try left in
the run. A re-poll that fails (a 404 included) tells nothing."""

from __future__ import annotations

import enum
import logging
import time
from functools import partial
from pathlib import Path

import anyio

from ..client import JobStatus
from ..errors import (
    ApiError,
    BatcherError,
    DiskFullError,
    DownloadRefused,
    LeaseLost,
    OutputGone,
    OutputStoreError,
    OversizeError,
    RateLimited,
    ServerError,
    TooSlow,
)
from ..ledger import Job
from ..outputs import publish, temp_name, video_name
from ..states import JobState as S
from . import records
from .context import RunContext
from .downloads_queue import Queued
from .failpoints import failpoint
from .outcomes import StopReason

log = logging.getLogger("batcher.run")

# How long an output URL lives when the API names no expiresAt: PixelDojo's notes say "asset URLs
# expire one hour after creation" (the older API said 24 hours: the shorter is the safe guess).
URL_LIFETIME = 3600.0
# Answers over the size cap in one run before the job is left for a rerun with a higher cap: one
# may be a lying Content-Length, but each streamed one costs the whole cap in bytes.
OVERSIZE_TRIES = 3
_REFUSED = "some output URLs were refused (never fetched); the next run asks the API for fresh ones"


class Refresh(enum.Enum):
    """What polling a rendered job again gave."""

    FRESH = "fresh"  # a new output URL
    SAME = "same"  # the job's output URL again
    NONE = "none"  # the job completed, with no output URL at all
    UNANSWERED = "unanswered"  # no usable answer (a failed poll, a 404, a job not completed): nothing is known


async def downloader(ctx: RunContext) -> None:
    """One downloader task: take finished jobs from the queue until it closes."""
    ctx.downloads.enlist()
    while True:
        item = await ctx.downloads.get()
        if item is None:
            return
        try:
            await download(ctx, item)
        except LeaseLost as e:
            log.warning("job %s: %s; leaving it to that runner", item.job.key, e)
        finally:
            ctx.downloads.done(item)


async def download(ctx: RunContext, item: Queued) -> None:
    """Try once to fetch, check, publish and record one job's video; a failure puts it back in
    the queue for a later try, or leaves it for the next run, saying why."""
    job = item.job
    if job.state == S.SUBMITTED.value:
        # (an expiry the API did not give is the URL's known lifetime, kept for later runs)
        job = job.evolve(output_expires_at=job.output_expires_at or ctx.wall() + URL_LIFETIME)
        job = item.job = await ctx.move(
            job, S.SUBMITTED, S.RENDERED, "rendered", item.timing, output_url=job.output_url,
            output_expires_at=job.output_expires_at, render_seconds=job.render_seconds,
            finished_at=job.finished_at, record=records.rendered(ctx, job))
        failpoint("after-rendered")
    if ctx.options.saving.out_store is not None:
        await _into_store(ctx, item, job)
        return
    out = ctx.options.saving.out_dir
    final = out / video_name(job.label, job.take, job.key)
    tmp = out / temp_name(final.name, ctx.rng.randrange(1 << 30))
    try:
        await ctx.wait_pause(job)
        result = await ctx.client.download(job.output_url or "", tmp, max_bytes=ctx.options.saving.max_download_bytes)
        published = await ctx.threads.run(publish, tmp, final, result.sha256, partial(_may_replace, ctx, job))
        failpoint("after-publish")
    except DiskFullError as e:
        ctx.state.stop(StopReason.DISK, f"{e}: free some space and run the same command again")
        if ctx.core is not None:
            ctx.core.cancel()
        return
    except (ApiError, FileNotFoundError) as e:
        # (FileNotFoundError: the temporary file vanished, someone cleaned the folder)
        await _failed(ctx, item, e if isinstance(e, ApiError) else
                      ServerError(f"the temporary file {tmp.name} vanished before it was saved"))
        return
    except OSError as e:
        # The folder refuses this file (a directory in the way, permissions, a read-only or
        # failing disk): the job stays rendered and the next run tries again.
        await ctx.event(job, "download-unsaved", f"cannot save {final.name}: {e.strerror or e}")
        ctx.state.note(f"some videos could not be saved in {out} ({e.strerror or e}); fix the folder and run again")
        return
    finally:
        with anyio.CancelScope(shield=True):
            tmp.unlink(missing_ok=True)  # still there only if the download failed
    mtime_ns = await ctx.threads.run(_mtime_ns, published)
    await ctx.move(job, S.RENDERED, S.COMPLETED, "downloaded", f"{result.size} bytes, sha256 {result.sha256[:12]}",
                   file_path=str(ctx.out_abs / published.name), size=result.size, sha256=result.sha256, error=None,
                   file_mtime_ns=mtime_ns,
                   record=records.downloaded(ctx, job, ctx.out_abs / published.name, result.size, result.sha256))
    ctx.state.completed += 1


def _mtime_ns(path: Path) -> int | None:
    """The published file's modification time, which a rerun's quick check compares (None: hash it)."""
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


async def _into_store(ctx: RunContext, item: Queued, job: Job) -> None:
    """`download`, streamed into the output store: the object is in place (an atomic upload,
    never a partial object under its name) and found there by a HEAD with the size and hash the
    download measured before the job counts as completed."""
    store = ctx.options.saving.out_store
    assert store is not None
    try:
        if await _adopt(ctx, job):
            return
        await ctx.wait_pause(job)
        sink = await store.sink(video_name(job.label, job.take, job.key), ctx.wall(), own=job.file_path,
                                remote_job_id=job.remote_job_id)
        try:
            result = await ctx.client.download(job.output_url or "", sink,
                                               max_bytes=ctx.options.saving.max_download_bytes)
        except BaseException:
            await sink.abort()  # (a refused URL, a 404 or a cancel before any byte: no upload stays open)
            raise
        failpoint("after-upload")
        name = sink.name  # where it went: beside another batch's clip of the same name, if one is there
        if not await store.holds(name, result.size, result.sha256):
            raise OutputStoreError(f"{name} is not in {store.identity} as uploaded")
    except ApiError as e:
        await _failed(ctx, item, e)
        return
    except OutputStoreError as e:
        # The bucket refused or failed: the job stays rendered and the next try (or run) uploads it.
        await ctx.event(job, "download-unsaved", str(e))
        ctx.state.note(f"some videos could not be stored in {store.identity} ({e}); check the bucket and run again")
        return
    location = store.location(name)
    await ctx.move(job, S.RENDERED, S.COMPLETED, "downloaded", f"{result.size} bytes, sha256 {result.sha256[:12]}",
                   file_path=location, size=result.size, sha256=result.sha256, error=None,
                   record=records.downloaded(ctx, job, location, result.size, result.sha256))
    ctx.state.completed += 1


async def _adopt(ctx: RunContext, job: Job) -> bool:
    """A clip an earlier upload already put in the output store (its process killed before the
    ledger recorded it) is the job's: recorded as downloaded, not fetched again."""
    store = ctx.options.saving.out_store
    if store is None or not job.remote_job_id:
        return False
    found = await store.stored_clip(video_name(job.label, job.take, job.key), job.remote_job_id)
    if found is None or found[1].sha256 is None:
        return False
    name, facts = found
    location, sha256 = store.location(name), found[1].sha256
    await ctx.move(job, S.RENDERED, S.COMPLETED, "downloaded", f"{facts.size} bytes, sha256 {sha256[:12]}, found in "
                   f"the output store (uploaded before)", file_path=location, size=facts.size, sha256=sha256,
                   error=None, record=records.downloaded(ctx, job, location, facts.size, sha256))
    ctx.state.completed += 1
    return True


async def _failed(ctx: RunContext, item: Queued, e: ApiError) -> None:
    """After a failed try: a URL refused, gone or past its expiry is refreshed by polling the job;
    then the job is tried again after a back-off, left `rendered` for the next run, or `expired`
    (see the module's rule)."""
    job = item.job
    item.failures += 1
    if item.failures == 1:
        item.first_failure = time.monotonic()
    item.oversize += isinstance(e, OversizeError)
    refused = isinstance(e, DownloadRefused)
    gone = refused or isinstance(e, OutputGone)
    if not gone:
        item.dead_since = None  # the host answered something else: no proof the URL is dead
    past = ctx.wall() >= _expiry(job)
    if gone or past:
        if refused and item.repolled:  # the API's fresh URL was refused too: not asked again in this run
            await _leave(ctx, job, f"{e}; the next run asks the API for a fresh URL",
                         _REFUSED)
            return
        item.repolled = item.repolled or refused
        refresh, status = await _fresh_url(ctx, job)
        if refresh is Refresh.NONE and past and gone:
            await _expire(ctx, job, f"the output URL expired and the API has no fresh one ({e})")
            return
        if status is not None and refresh in (Refresh.FRESH, Refresh.SAME):
            await _renew(ctx, item, e, status, past)
        if refused and refresh is not Refresh.FRESH:
            await _leave(ctx, job, f"{e}; the API gave no other URL; the next run asks again",
                         _REFUSED)
            return
    await _again(ctx, item, e)


async def _renew(ctx: RunContext, item: Queued, e: ApiError, status: JobStatus, past: bool) -> None:
    """A re-poll gave an output URL: the job takes it with its expiry (the answer's expiresAt, else
    the known lifetime from now). The same URL given back, past its expiry, with no expiresAt
    ahead, is suspect: if it answers 403/404/410 on every try left in the run, the job expires."""
    job = item.job
    now = ctx.wall()
    expires = status.expires_at or now + URL_LIFETIME
    if status.video_url != job.output_url:
        item.dead_since = None
        item.job = await ctx.event(job, "url-refreshed", f"{e}; the API gave a fresh output URL",
                                   output_url=status.video_url, output_expires_at=expires)
        return
    if status.expires_at is not None and status.expires_at > now:
        item.dead_since = None  # the API says the URL still lives
    elif past and isinstance(e, OutputGone) and item.dead_since is None:
        item.dead_since = item.failures
    if expires != job.output_expires_at:
        item.job = await ctx.event(job, "url-renewed", f"{e}; the API gave the same output URL again",
                                   output_expires_at=expires)


async def _expire(ctx: RunContext, job: Job, why: str) -> None:
    message = f"{why}; re-render with `batcher retry --expired` (it pays again)"
    await ctx.move(job, S.RENDERED, S.EXPIRED, "expired", message, error=message)


async def _again(ctx: RunContext, item: Queued, e: ApiError) -> None:
    """Put a failed download back in the queue after a back-off, or leave the job rendered once
    this run's tries are used up (the next run downloads it)."""
    job = item.job
    if isinstance(e, RateLimited):
        ctx.pauses.rate_limited(e)
    elif isinstance(e, ServerError) and not isinstance(e, TooSlow):
        # (a slow output host is no reason to hold every request to the API)
        ctx.pauses.server_trouble()
    cap = ctx.options.saving.max_download_bytes
    if isinstance(e, OversizeError) and item.oversize >= OVERSIZE_TRIES:
        await _leave(ctx, job, f"{e} (--max-download-mb {cap / 1024 ** 2:g}); a rerun with a higher "
                               f"--max-download-mb downloads it",
                     "some videos are over --max-download-mb; they stay rendered: rerun with a higher "
                     "--max-download-mb to download them")
        return
    if ctx.options.polling.retry.gives_up(item.failures, time.monotonic() - item.first_failure):
        if item.dead_since is not None and item.failures > item.dead_since:
            await _expire(ctx, job, f"the output URL is past its expiry and the API gave it again unchanged, "
                                    f"but it answered gone on every try since ({e})")
            return
        await _leave(ctx, job, f"{e}; the next run downloads it",
                     "some downloads kept failing; the next run fetches them")
        return
    delay = ctx.options.polling.retry.delay(item.failures, ctx.rng, getattr(e, "retry_after", None))
    item.job = await ctx.event(job, "download-retry", f"{e}; retrying in {delay:.1f}s")
    ctx.downloads.put_back(item, delay)


async def _leave(ctx: RunContext, job: Job, reason: str, note: str) -> None:
    """The job stays rendered for the next run, its reason in its history and its error."""
    await ctx.event(job, "download-given-up", reason, error=reason)
    ctx.state.note(note)


def _expiry(job: Job) -> float:
    """When the job's output URL stops working: the API's expiresAt, else an hour after the render
    was seen done (jobs rendered before this was recorded)."""
    if job.output_expires_at is not None:
        return job.output_expires_at
    return (job.finished_at or 0.0) + URL_LIFETIME


def _may_replace(ctx: RunContext, job: Job, path: Path) -> bool:
    """A file already at a video's name may be replaced only if it is this very job's own earlier
    copy (recorded as its file, found changed at start); anything else, another job's video or one
    of another ledger sharing the folder, is kept, and this video takes the next free name."""
    return job.file_path == str(ctx.out_abs / path.name)


async def _fresh_url(ctx: RunContext, job: Job) -> tuple[Refresh, JobStatus | None]:
    """Poll the job again for its output URL. Only a completed answer tells something: a failed
    poll, a 404 included (one may be as transient as the output's), tells nothing."""
    try:
        status = await ctx.client.status(job.remote_job_id or "", job.status_url)
    except BatcherError:
        return Refresh.UNANSWERED, None
    if status.status != "completed":
        return Refresh.UNANSWERED, None
    if not status.video_url:
        return Refresh.NONE, status
    return (Refresh.SAME if status.video_url == job.output_url else Refresh.FRESH), status
