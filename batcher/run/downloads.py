"""Downloads: each finished job's video, fetched as soon as its job completes (soonest-expiring URL
first), written to a temporary name, checked, published under its final name without replacing
another job's video, and recorded with its size and sha256. An expired URL is refreshed by
polling the job again; failures that are worth it are retried (the clip is paid for)."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import anyio

from ..errors import (
    BatcherError,
    DiskFullError,
    LeaseLost,
    MalformedAnswer,
    OutputGone,
    OversizeError,
    RateLimited,
    ServerError,
)
from ..files import publish, temp_name, video_name
from ..ledger import Job
from ..states import JobState as S
from .context import RunContext
from .failpoints import failpoint
from .outcomes import StopReason

log = logging.getLogger("batcher.run")


async def downloader(ctx: RunContext) -> None:
    """One downloader task: take finished jobs from the queue until it closes."""
    while True:
        job = await ctx.downloads.get()
        if job is None:
            return
        try:
            await download(ctx, job)
        except LeaseLost as e:
            log.warning("job %s: %s; leaving it to that runner", job.key, e)


async def download(ctx: RunContext, job: Job) -> None:
    """Fetch, check, publish and record one job's video (or say why not)."""
    if job.state == S.SUBMITTED.value:
        job = await ctx.move(job, S.SUBMITTED, S.RENDERED, "rendered", None, output_url=job.output_url,
                             output_expires_at=job.output_expires_at, render_seconds=job.render_seconds,
                             finished_at=job.finished_at)
        failpoint("after-rendered")
    out = ctx.options.saving.out_dir
    final = out / video_name(job.label, job.take, job.key)
    url = job.output_url or ""
    failures = 0
    refreshed = False
    while True:
        tmp = out / temp_name(final.name, ctx.rng.randrange(1 << 30))
        try:
            await ctx.wait_pause(job)
            result = await ctx.client.download(url, tmp, max_bytes=ctx.options.saving.max_download_bytes)
            published = await ctx.threads.run(publish, tmp, final, result.sha256,
                                              partial(_may_replace, ctx, job))
            failpoint("after-publish")
        except OutputGone as e:
            fresh = None if refreshed else await _fresh_url(ctx, job)
            refreshed = True
            if fresh is None or fresh == url:
                message = f"the output URL expired and the API has no fresh one ({e}); re-render with " \
                          f"`batcher retry --expired`"
                await ctx.move(job, S.RENDERED, S.EXPIRED, "expired", message, error=message)
                return
            url = fresh
            job = await ctx.event(job, "url-refreshed", "the output URL had expired; got a fresh one",
                                  output_url=fresh)
            continue
        except OversizeError as e:
            await ctx.move(job, S.RENDERED, S.FAILED, "oversize", str(e), error=str(e))
            return
        except (ServerError, RateLimited, MalformedAnswer, FileNotFoundError) as e:
            failures += 1
            if not await _retry(ctx, job, e, tmp, failures):
                return
            continue
        except DiskFullError as e:
            ctx.stop(StopReason.DISK, f"{e}: free some space and run the same command again")
            if ctx.core is not None:
                ctx.core.cancel()
            return
        except OSError as e:
            # The folder refuses this file (a directory in the way, permissions, a read-only or
            # failing disk): the job stays rendered and the next run tries again.
            await ctx.event(job, "download-unsaved", f"cannot save {final.name}: {e.strerror or e}")
            ctx.note(f"some videos could not be saved in {out} ({e.strerror or e}); fix the folder and run again")
            return
        finally:
            with anyio.CancelScope(shield=True):
                tmp.unlink(missing_ok=True)  # still there only if the download failed
        await ctx.move(job, S.RENDERED, S.COMPLETED, "downloaded", f"{result.size} bytes, sha256 {result.sha256[:12]}",
                       file_path=str(ctx.out_abs / published.name), size=result.size, sha256=result.sha256)
        ctx.completed += 1
        return


async def _retry(ctx: RunContext, job: Job, e: Exception, tmp: Path, failures: int) -> bool:
    """After a failed download worth retrying: wait and say so; False once retries are used up (the
    next run downloads it). Not a video (an error page from a proxy, say) counts like a server error,
    and a temporary file that vanished (someone cleaned the folder) is simply downloaded again."""
    if isinstance(e, FileNotFoundError):
        e = ServerError(f"the temporary file {tmp.name} vanished before it was saved")
    elif isinstance(e, RateLimited):
        ctx.pauses.rate_limited(e)
    else:
        ctx.pauses.server_trouble()
    if ctx.options.polling.retry.gives_up(failures, 0):
        await ctx.event(job, "download-given-up", f"{e}; the next run downloads it")
        ctx.note("some downloads kept failing; the next run fetches them")
        return False
    delay = ctx.options.polling.retry.delay(failures, ctx.rng, getattr(e, "retry_after", None))
    await ctx.event(job, "download-retry", f"{e}; retrying in {delay:.1f}s")
    await anyio.sleep(delay)
    return True


def _may_replace(ctx: RunContext, job: Job, path: Path) -> bool:
    """A file already at a video's name may be replaced only if it is this very job's own earlier
    copy (recorded as its file, found changed at start); anything else, another job's video or one
    of another ledger sharing the folder, is kept, and this video takes the next free name."""
    return job.file_path == str(ctx.out_abs / path.name)


async def _fresh_url(ctx: RunContext, job: Job) -> str | None:
    try:
        status = await ctx.client.status(job.remote_job_id or "", job.status_url)
    except BatcherError:
        return None
    return status.video_url if status.status == "completed" else None
