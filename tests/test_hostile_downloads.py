"""Downloads of paid videos against a hostile output host (issue 23: 4, 5, 7): a failed download
never ends a paid job while its URL may still serve it (the job stays rendered, the run and every
rerun try again, nothing is paid twice); only a URL past its expiry with no fresh one from the API
makes it expired; a size problem is a failed download; slow URLs never hold every downloader."""
from __future__ import annotations

from pathlib import Path

import anyio

from batcher import api
from batcher.ledger import Job, Ledger
from batcher.policy import RetryPolicy
from batcher.run import RunOptions, RunReport
from batcher.simulator import SimConfig, Simulator, clip_for
from batcher.views import summary

from .conftest import small_manifest
from .hostile import HostileApi, Mode


def _run(tmp_path: Path, hostile: HostileApi, n: int = 3, **options: object) -> RunReport:
    """One run of an n-job batch through `hostile`, into the same ledger and folder every time."""
    manifest = tmp_path / "m.yaml"
    if not manifest.exists():
        manifest.write_text(small_manifest(n_rows=n))
    to = api.Target(hostile.sim.config.api_key, "https://pixeldojo.ai", hostile, hostile.sim)
    options.setdefault("retry", RetryPolicy(base=0.01, cap=0.05, max_attempts=6))
    opts = RunOptions.of(out_dir=tmp_path / "out", expected_render=0.02, seed=1,
                         submit_retry=RetryPolicy(base=0.01, cap=0.05, max_attempts=6), **options)
    return anyio.run(lambda: api.run_async(manifest, ledger=tmp_path / "l.db", options=opts, to=to))


def _states(report: RunReport) -> dict[str, int]:
    return {state: n for state, n in report.counts.items() if n}


def _sim() -> Simulator:
    return Simulator(SimConfig(render_seconds=0.02, render_jitter=0.2))


def _jobs(tmp_path: Path) -> list[tuple[Job, list[str]]]:
    """Every job of the batch with the kinds of its events, in order."""
    with Ledger(tmp_path / "l.db") as ledger:
        return [(job, [e.kind for e in ledger.events(job.id)]) for job in ledger.iter_batch("small")]


def _all_downloaded_once_paid(tmp_path: Path, sim: Simulator, n: int) -> None:
    assert len(sim.record()["jobs"]) == n  # each clip paid for once
    for job, _ in _jobs(tmp_path):
        assert job.state == "completed" and job.error is None
        assert Path(job.file_path).read_bytes() == sim.clip(job.remote_job_id)


def test_transient_404_403_and_5xx_on_the_output_are_retried_not_expired(tmp_path):
    # Each job's first three GETs answer 404, 403, 503 (a fresh URL from a re-poll fails too):
    # the job used to end `expired` at the second, and `retry --expired` paid again.
    sim = _sim()
    hostile = HostileApi(sim, Mode.FLAKY_OUTPUT, flaky_gets=3)
    report = _run(tmp_path, hostile)
    assert _states(report) == {"completed": 3} and report.exit_code == 0
    assert hostile.done[Mode.FLAKY_OUTPUT] == 9
    _all_downloaded_once_paid(tmp_path, sim, 3)
    for _, kinds in _jobs(tmp_path):
        assert kinds.count("download-retry") == 3 and "expired" not in kinds


def test_downloads_failing_all_run_stay_rendered_and_a_rerun_fetches_them(tmp_path):
    sim = _sim()
    hostile = HostileApi(sim, Mode.FLAKY_OUTPUT, flaky_gets=5)
    first = _run(tmp_path, hostile, retry=RetryPolicy(base=0.01, cap=0.05, max_attempts=3))
    assert _states(first) == {"rendered": 3} and first.exit_code == 1
    assert any("the next run fetches them" in m for m in first.messages)
    for job, kinds in _jobs(tmp_path):
        assert kinds[-1] == "download-given-up" and "HTTP 503" in (job.error or "")
    # The rerun takes the rendered jobs up again (claimed like paid work) and downloads them.
    second = _run(tmp_path, hostile)
    assert _states(second) == {"completed": 3} and second.exit_code == 0 and second.submitted == 0
    _all_downloaded_once_paid(tmp_path, sim, 3)


def test_only_a_url_past_its_expiry_with_no_fresh_one_expires(tmp_path):
    sim = _sim()
    hostile = HostileApi(sim, Mode.EXPIRED_OUTPUT)
    report = _run(tmp_path, hostile)
    assert _states(report) == {"expired": 3} and report.exit_code == 1
    for job, kinds in _jobs(tmp_path):
        assert kinds[-1] == "expired" and "retry --expired" in (job.error or "")
    assert len(sim.record()["jobs"]) == 3


def test_a_gone_url_before_its_expiry_leaves_the_job_rendered(tmp_path):
    # The output answers 403 and the API has no fresh URL, but its expiresAt is ahead: the URL
    # may serve again (the next run tries), so the job is not given up as expired.
    sim = _sim()
    hostile = HostileApi(sim, Mode.EXPIRED_OUTPUT, expires="2999-01-01T00:00:00Z")
    report = _run(tmp_path, hostile, retry=RetryPolicy(base=0.01, cap=0.05, max_attempts=3))
    assert _states(report) == {"rendered": 3} and report.exit_code == 1
    for job, kinds in _jobs(tmp_path):
        assert "expired" not in kinds and kinds[-1] == "download-given-up" and "403" in (job.error or "")


def test_a_bogus_content_length_is_a_failed_download_retried(tmp_path):
    sim = _sim()
    hostile = HostileApi(sim, Mode.BOGUS_CONTENT_LENGTH)
    report = _run(tmp_path, hostile)
    assert hostile.done[Mode.BOGUS_CONTENT_LENGTH] == 3
    assert _states(report) == {"completed": 3} and report.exit_code == 0
    _all_downloaded_once_paid(tmp_path, sim, 3)


def test_a_video_over_the_cap_stays_rendered_and_a_higher_cap_downloads_it(tmp_path):
    sim = _sim()
    hostile = HostileApi(sim)
    first = _run(tmp_path, hostile, max_download_bytes=len(clip_for("x")) // 2)
    assert _states(first) == {"rendered": 3} and first.exit_code == 1
    assert any("higher --max-download-mb" in m for m in first.messages)
    for job, kinds in _jobs(tmp_path):
        assert kinds[-1] == "download-given-up" and "--max-download-mb" in (job.error or "")
    lines = summary(first, "out")
    assert not any("refund" in line for line in lines)
    second = _run(tmp_path, hostile)
    assert _states(second) == {"completed": 3} and second.submitted == 0
    _all_downloaded_once_paid(tmp_path, sim, 3)


def test_the_summary_never_calls_a_failed_job_refunded():
    # A failed job may have been charged (completed without an output, say): the summary's
    # retry hint must not claim every failure was refunded.
    report = RunReport(batch="b", counts={"failed": 1}, spent=20, held_jobs=0, held_cost=0, budget=None,
                       elapsed=1.0, submitted=1, completed=0, stop_reason=None, messages=[],
                       failures=[("failed", "the API reports the job completed but gave no output URL", 1, ["k" * 20])])
    lines = summary(report, "out", retry_command=lambda state: f"batcher retry --{state} m.yaml")
    assert any("batcher retry --failed m.yaml" in line for line in lines)
    assert not any("refund" in line for line in lines)
    # nor says a retry pays "again": a failed job may never have been charged (issue 27, 1)
    assert not any("again" in line for line in lines if "retry" in line)
    expired = RunReport(batch="b", counts={"expired": 1}, spent=20, held_jobs=0, held_cost=0, budget=None,
                        elapsed=1.0, submitted=1, completed=0, stop_reason=None, messages=[],
                        failures=[("expired", "the output URL expired", 1, ["k" * 20])])
    lines = summary(expired, "out", retry_command=lambda state: f"batcher retry --{state} m.yaml")
    assert "  to retry them (renders again, paying again): batcher retry --expired m.yaml" in lines


def test_slow_urls_never_hold_every_downloader(tmp_path):
    # Three outputs stall until their try times out, as long as any other video is still to be
    # served: retried on every downloader at once, they would starve the five fresh ones (and
    # use up their own tries before any fresh one arrived). Retries take half the downloaders.
    sim = _sim()
    hostile = HostileApi(sim, Mode.SLOW_OUTPUT, slow_jobs=3, fresh_jobs=5, stall=0.3)
    # (tries enough for the slow ones to outlast the fresh ones' renders on a loaded machine)
    report = _run(tmp_path, hostile, n=8, concurrency=8, downloads=2,
                  retry=RetryPolicy(base=0.01, cap=0.05, max_attempts=12))
    assert hostile.done[Mode.SLOW_OUTPUT] >= 3
    assert _states(report) == {"completed": 8} and report.exit_code == 0
    _all_downloaded_once_paid(tmp_path, sim, 8)
    assert hostile.memory["most-retries-at-once"] <= 1  # of the two downloaders


def test_a_url_redirected_to_a_file_is_never_fetched_again_and_the_job_stays_rendered(tmp_path):
    # Every output redirects to file:///etc/passwd: the URL is refused at once, the API is asked
    # once for a fresh one (refused too), and the job is left rendered with the reason: not
    # failed, not expired (both would lose a paid clip whose fresh URL may work tomorrow).
    sim = _sim()
    hostile = HostileApi(sim, Mode.REDIRECT_TO_FILE)
    report = _run(tmp_path, hostile)
    assert _states(report) == {"rendered": 3} and report.exit_code == 1
    assert hostile.done[Mode.REDIRECT_TO_FILE] == 6  # each job's first URL and its one fresh URL, once each
    for job, kinds in _jobs(tmp_path):
        assert kinds.count("url-refreshed") == 1 and kinds[-1] == "download-given-up"
        assert "file" in (job.error or "")
    assert len(sim.record()["jobs"]) == 3
