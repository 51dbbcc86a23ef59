"""Review of issue 23 (finding 9): an output URL past its expiry that the API still serves is
downloaded, never given up as expired. A re-poll that gives any URL, the same one included,
renews the job's expiry and the download is tried again; a failed re-poll (a 404 included) tells
nothing; only a URL the API has no longer, or one it re-serves unchanged that answers 403/404/410
on every try left in the run, makes the job expired."""
from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import anyio

from batcher import api
from batcher.ledger import Job, Ledger
from batcher.policy import RetryPolicy
from batcher.run import RunOptions, RunReport
from batcher.simulator import SimConfig, Simulator

from .conftest import small_manifest
from .hostile import HostileApi, Mode

PAST = "2001-01-01T00:00:00Z"  # an expiresAt long gone


def _run(tmp_path: Path, hostile: HostileApi, attempts: int = 6) -> RunReport:
    """One run of a 2-job batch through `hostile`, into the same ledger and folder every time."""
    manifest = tmp_path / "m.yaml"
    if not manifest.exists():
        manifest.write_text(small_manifest(n_rows=2))
    to = api.Target(hostile.sim.config.api_key, "https://pixeldojo.ai", hostile, hostile.sim)
    fast = RetryPolicy(base=0.01, cap=0.05, max_attempts=attempts)
    opts = RunOptions.of(out_dir=tmp_path / "out", expected_render=0.02, seed=1, retry=fast, submit_retry=fast)
    return anyio.run(lambda: api.run_async(manifest, ledger=tmp_path / "l.db", options=opts, to=to))


def _jobs(tmp_path: Path) -> list[tuple[Job, list[str]]]:
    with Ledger(tmp_path / "l.db") as ledger:
        return [(job, [e.kind for e in ledger.events(job.id)]) for job in ledger.iter_batch("small")]


def _downloaded_once_paid(tmp_path: Path, report: RunReport, sim: Simulator) -> None:
    assert report.counts["completed"] == 2 and report.counts["expired"] == 0 and report.exit_code == 0
    assert len(sim.record()["jobs"]) == 2  # nothing paid twice
    for job, kinds in _jobs(tmp_path):
        assert job.state == "completed" and "expired" not in kinds
        assert Path(job.file_path or "").read_bytes() == sim.clip(job.remote_job_id)


def test_one_404_past_the_expiry_with_the_same_url_served_again_is_retried(tmp_path):
    # The API's expiresAt has passed; the output answers one 404, and a re-poll gives the same
    # URL with the same expiresAt. It used to end `expired` there (`retry --expired` pays again).
    sim = Simulator(SimConfig(render_seconds=0.02))
    hostile = HostileApi(sim, Mode.STABLE_OUTPUT_URL, expires=PAST)
    report = _run(tmp_path, hostile)
    assert hostile.done[Mode.STABLE_OUTPUT_URL] == 2
    _downloaded_once_paid(tmp_path, report, sim)
    for _, kinds in _jobs(tmp_path):
        assert kinds.count("download-retry") == 1


def test_a_rerun_past_the_guessed_expiry_renews_it_from_the_same_url(tmp_path):
    # The API names no expiresAt: the first run meets a down output host (503) and leaves the jobs
    # rendered with the guessed hour; a rerun after that hour meets one 404, and the re-poll gives
    # the same URL: the expiry is renewed (an hour from now) and the video downloaded.
    sim = Simulator(SimConfig(render_seconds=0.02))
    down = HostileApi(sim, Mode.STABLE_OUTPUT_URL, gone_gets=10 ** 6, answers=(503,))
    first = _run(tmp_path, down, attempts=2)
    assert first.counts["rendered"] == 2 and first.exit_code == 1
    with sqlite3.connect(tmp_path / "l.db") as db:  # as a rerun an hour later would find them
        db.execute("UPDATE job SET output_expires_at = ?", (time.time() - 60,))
    db.close()
    hostile = HostileApi(sim, Mode.STABLE_OUTPUT_URL)
    hostile.memory["stable-urls"] = down.memory["stable-urls"]  # the same URLs as before
    second = _run(tmp_path, hostile)
    assert hostile.done[Mode.STABLE_OUTPUT_URL] == 2 and second.submitted == 0
    _downloaded_once_paid(tmp_path, second, sim)
    for job, kinds in _jobs(tmp_path):
        assert kinds.count("url-renewed") == 1
        assert (job.output_expires_at or 0) > time.time() + 3000  # renewed: an hour from the re-poll


def test_a_failed_re_poll_tells_nothing(tmp_path):
    # The re-poll after the output's 404 answers 404 "job not found" itself (as briefly wrong as
    # the output host): that is no answer, not "the API has no URL", so the download is retried.
    sim = Simulator(SimConfig(render_seconds=0.02))
    hostile = HostileApi(sim, Mode.STABLE_OUTPUT_URL, expires=PAST, lost_polls=1)
    report = _run(tmp_path, hostile)
    _downloaded_once_paid(tmp_path, report, sim)
    for _, kinds in _jobs(tmp_path):
        assert "url-renewed" not in kinds and kinds.count("download-retry") == 1


def test_a_dead_url_re_served_unchanged_expires_after_the_runs_tries(tmp_path):
    # A really dead URL still ends: past its expiry, re-served unchanged, 404 on every try.
    sim = Simulator(SimConfig(render_seconds=0.02))
    hostile = HostileApi(sim, Mode.STABLE_OUTPUT_URL, expires=PAST, gone_gets=10 ** 6)
    report = _run(tmp_path, hostile, attempts=4)
    assert report.counts["expired"] == 2 and report.exit_code == 1
    assert len(sim.record()["jobs"]) == 2
    for job, kinds in _jobs(tmp_path):
        # tried on every one of the run's tries, not given up at the first 404
        assert kinds[-1] == "expired" and kinds.count("download-retry") == 3
        assert "retry --expired" in (job.error or "") and "404" in (job.error or "")


def test_a_dead_looking_url_that_answers_otherwise_once_is_not_expired(tmp_path):
    # 404 and 503 in turn: the host is not proven to have dropped the file, so the jobs stay rendered.
    sim = Simulator(SimConfig(render_seconds=0.02))
    hostile = HostileApi(sim, Mode.STABLE_OUTPUT_URL, expires=PAST, gone_gets=10 ** 6, answers=(404, 503))
    report = _run(tmp_path, hostile, attempts=4)
    assert report.counts["rendered"] == 2 and report.counts["expired"] == 0 and report.exit_code == 1
    for job, kinds in _jobs(tmp_path):
        assert "expired" not in kinds and kinds[-1] == "download-given-up" and "503" in (job.error or "")
