"""The API client's requests against a hostile API (issue 23: 7, 8, 9, 14): answers that drip a
byte at a time or never end, a status refused for one job, a download redirected off the web.
Each one fails (or holds, or leaves) the job it concerns, says why, and the run ends."""
from __future__ import annotations

import json
from pathlib import Path

import anyio
import httpx
import pytest
from click.testing import CliRunner

from batcher import api
from batcher.cli import cli
from batcher.client import MAX_ANSWER_BYTES, PixelDojoClient
from batcher.errors import (
    AnswerTooLarge,
    CreditsExhausted,
    DownloadRefused,
    JobForbidden,
    ServerError,
    TooSlow,
    UsageError,
)
from batcher.ledger import Ledger
from batcher.policy import Deadlines, RetryPolicy
from batcher.run import RunOptions, RunReport
from batcher.run.webhooks import Webhooks
from batcher.simulator import SimConfig, Simulator

from .conftest import small_manifest
from .hostile import HostileApi, Mode, drip, endless_json
from .mp4s import whole_mp4

BASE = "https://pixeldojo.ai"
KEY = "pd-test-key-0123456789"
# A run that ends is done in seconds; one that hangs is stopped here (and fails) instead of never.
ENDS_WITHIN = 60.0
MP4 = whole_mp4(2048)  # 2 KB of a whole MP4 video


def _run(tmp_path: Path, hostile: HostileApi, rows: int = 4, **options) -> tuple[RunReport, list]:
    """Run a small manifest through `hostile`, within ENDS_WITHIN seconds; the report and the jobs."""
    manifest = tmp_path / "m.yaml"
    manifest.write_text(small_manifest(n_rows=rows))
    fast = RetryPolicy(base=0.01, cap=0.05, max_attempts=3)
    opts = RunOptions.of(expected_render=0.05, seed=1, retry=fast, submit_retry=fast, out_dir=tmp_path / "out",
                         **options)
    to = api.Target(hostile.sim.config.api_key, BASE, hostile, hostile.sim)

    async def bounded() -> RunReport:
        with anyio.fail_after(ENDS_WITHIN):
            return await api.run_async(manifest, ledger=tmp_path / "l.db", options=opts, to=to)
    report = anyio.run(bounded)
    with Ledger(tmp_path / "l.db") as ledger:
        jobs = [(job, ledger.events(job.id)) for job in ledger.iter_batch("small")]
    return report, jobs


def _sim() -> Simulator:
    return Simulator(SimConfig(render_seconds=0.05, render_jitter=0.2))


def _victim(jobs: list, state: str) -> tuple:
    """The one job left in `state` (every other one completed)."""
    assert sorted(job.state for job, _ in jobs) == sorted([state] + ["completed"] * (len(jobs) - 1))
    return next((job, events) for job, events in jobs if job.state == state)


# --- 7. every request has an overall deadline -------------------------------------------------------

def test_a_status_answer_that_drips_is_cut_at_the_deadline_and_the_run_ends_saying_why(tmp_path):
    hostile = HostileApi(_sim(), Mode.SLOW_DRIP_STATUS, drip=0.2)  # ~40 s for one status answer
    report, jobs = _run(tmp_path, hostile, request_deadline=0.5)
    _, events = _victim(jobs, "submitted")  # paid: polled again by the next run
    given_up = [e.detail for e in events if e.kind == "poll-given-up"]
    assert given_up and "did not come in time" in given_up[0]
    assert hostile.done[Mode.SLOW_DRIP_STATUS] == 3  # each try cut, then retried as a server error
    assert report.exit_code == 1


def test_a_submission_answer_that_drips_holds_its_job_as_unknown_saying_why(tmp_path):
    hostile = HostileApi(_sim(), Mode.SLOW_DRIP_SUBMIT, drip=0.2)
    report, jobs = _run(tmp_path, hostile, request_deadline=0.5)
    job, _ = _victim(jobs, "unknown")  # it may have been charged: never sent again unasked
    assert "did not come in time" in job.error and "may have been charged" in job.error
    assert len(hostile.sim.record()["jobs"]) == 4  # the held one was accepted (and charged) once
    assert report.exit_code == 1


def test_a_download_that_drips_is_cut_and_its_job_stays_rendered(tmp_path):
    hostile = HostileApi(_sim(), Mode.SLOW_DRIP_DOWNLOAD, drip=0.2)
    report, jobs = _run(tmp_path, hostile, request_deadline=0.5, min_download_rate=1000.0)
    _, events = _victim(jobs, "rendered")  # the clip is paid: the next run downloads it
    assert any("did not end in time" in (e.detail or "") for e in events)
    assert hostile.done[Mode.SLOW_DRIP_DOWNLOAD] >= 2  # retried, each try cut
    assert report.exit_code == 1


def _dripping_video(pause: float, declared: bool = True) -> httpx.MockTransport:
    """Serves MP4 in 256-byte chunks, one every `pause` seconds (its length declared or not)."""
    def handler(request: httpx.Request) -> httpx.Response:
        headers = {"content-length": str(len(MP4))} if declared else {}
        return httpx.Response(200, headers=headers, content=drip([MP4[i:i + 256] for i in range(0, len(MP4), 256)],
                                                                 pause))
    return httpx.MockTransport(handler)


def test_a_reference_that_drips_is_cut_at_the_request_deadline_for_preflight(tmp_path):
    async def fetch() -> None:
        async with PixelDojoClient(KEY, BASE, transport=_dripping_video(0.5), deadlines=Deadlines(request=0.3)) as c:
            await c.fetch_reference("https://refs.example.org/a.png", 1_000_000)
    with pytest.raises(ServerError, match="did not answer in time"):  # preflight: unreachable, try later
        anyio.run(fetch)


@pytest.mark.parametrize("declared", [True, False])
def test_a_download_may_take_as_long_as_its_size_asks_at_the_minimum_rate_and_no_longer(tmp_path, declared):
    # 2 KB at 1 KB/s may take 2 s, more than the 0.3 s request deadline: 8 chunks 0.1 s apart
    # (0.8 s) arrive whole; 0.5 s apart (4 s) are cut.
    deadlines = Deadlines(request=0.3, min_download_kbps=1.0)

    async def fetch(pause: float) -> int:
        async with PixelDojoClient(KEY, BASE, transport=_dripping_video(pause, declared), deadlines=deadlines) as c:
            return (await c.download("https://temp.pixeldojo.ai/v.mp4", tmp_path / "v.part", max_bytes=10_000)).size
    assert anyio.run(fetch, 0.1) == len(MP4)
    with pytest.raises(TooSlow, match="did not end in time"):
        anyio.run(fetch, 0.5)


# --- 8. answers are read up to a cap -----------------------------------------------------------------

SAFETY_NET = 64 * 1024 * 1024  # an unbounded reader would stop here instead of taking the machine's memory


def test_an_endless_status_answer_is_read_no_further_than_the_cap_and_the_others_complete(tmp_path):
    hostile = HostileApi(_sim(), Mode.ENDLESS_JSON_STATUS, most=SAFETY_NET)
    report, jobs = _run(tmp_path, hostile)
    _, events = _victim(jobs, "submitted")  # polled again by the next run
    assert any("cap" in (e.detail or "") for e in events if e.kind == "poll-given-up")
    sent = hostile.memory["endless"]
    assert len(sent) == 3 and max(sent) <= MAX_ANSWER_BYTES + 65536 + 64  # one chunk past the cap at most
    assert report.exit_code == 1


def test_an_endless_submission_answer_holds_its_job_as_unknown_and_the_run_goes_on(tmp_path):
    hostile = HostileApi(_sim(), Mode.ENDLESS_JSON_SUBMIT, most=SAFETY_NET)
    report, jobs = _run(tmp_path, hostile)
    job, _ = _victim(jobs, "unknown")
    assert "cap" in job.error and "may have been charged" in job.error
    assert max(hostile.memory["endless"]) <= MAX_ANSWER_BYTES + 65536 + 64
    assert report.exit_code == 1


def test_an_answer_that_declares_more_than_the_cap_is_not_read_at_all():
    read = []

    async def endless():
        while len(read) * 65536 < SAFETY_NET:
            read.append(1)
            yield b"x" * 65536

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-length": str(10 * MAX_ANSWER_BYTES)}, content=endless())

    async def poll() -> None:
        async with PixelDojoClient(KEY, BASE, transport=httpx.MockTransport(handler)) as c:
            await c.status("job_1")
    with pytest.raises(AnswerTooLarge, match="declares"):
        anyio.run(poll)
    assert read == []


def test_an_endless_schema_answer_is_refused_past_the_cap():
    hostile = HostileApi(_sim(), most=SAFETY_NET)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=endless_json(hostile), headers={"content-type": "application/json"})

    async def read() -> None:
        async with PixelDojoClient(KEY, BASE, transport=httpx.MockTransport(handler)) as c:
            await c.schema("happyhorse-1.0-r2v")
    with pytest.raises(AnswerTooLarge, match="past the"):
        anyio.run(read)
    assert hostile.memory["endless"][0] <= MAX_ANSWER_BYTES + 65536 + 64


# --- 9. an error about one job is that job's -----------------------------------------------------------

def test_a_403_on_one_jobs_status_leaves_that_job_with_the_reason_and_the_run_finishes_the_rest(tmp_path):
    hostile = HostileApi(_sim(), Mode.STATUS_FORBIDDEN)
    report, jobs = _run(tmp_path, hostile, rows=8)
    job, events = _victim(jobs, "submitted")  # paid: never `unknown` (retry --unknown would pay again)
    assert "another workspace" in job.error
    assert [e.kind for e in events].count("poll-forbidden") == 1  # not followed further in this run
    assert "another workspace" in next(e.detail for e in events if e.kind == "poll-forbidden")
    assert report.exit_code == 1 and report.stop_reason is None
    assert len(hostile.sim.record()["jobs"]) == 8  # nothing paid twice


def test_a_refused_status_is_that_jobs_problem_when_a_webhook_poke_asked_for_it_too(tmp_path):
    hostile = HostileApi(_sim(), Mode.STATUS_FORBIDDEN)
    report, jobs = _run(tmp_path, hostile, rows=4, webhooks=Webhooks("127.0.0.1", 0))
    job, events = _victim(jobs, "submitted")
    assert "poll-forbidden" in [e.kind for e in events] and "another workspace" in job.error
    assert report.exit_code == 1 and report.stop_reason is None
    assert hostile.sim.record()["webhooks"]["delivered"] >= 3  # the others' ends were announced by pokes


def test_the_next_run_polls_the_refused_job_again_and_clears_its_reason(tmp_path):
    sim = _sim()
    _run(tmp_path, HostileApi(sim, Mode.STATUS_FORBIDDEN), rows=2)
    report, jobs = _run(tmp_path, HostileApi(sim), rows=2)  # the API answers it now
    assert [job.state for job, _ in jobs] == ["completed", "completed"] and report.exit_code == 0
    assert all(job.error is None for job, _ in jobs)
    assert len(sim.record()["jobs"]) == 2


@pytest.mark.parametrize("status", [401, 403])
def test_a_status_refused_401_or_403_is_that_jobs_problem_but_out_of_credits_is_not(status):
    def refusing(code: str | None):
        body = {"error": {"code": code, "message": "job belongs to another workspace"}}
        return httpx.MockTransport(lambda request: httpx.Response(status, json=body))

    async def poll(code: str | None) -> None:
        async with PixelDojoClient(KEY, BASE, transport=refusing(code)) as c:
            await c.status("job_1")
    with pytest.raises(JobForbidden, match="another workspace"):
        anyio.run(poll, None)
    if status == 403:
        with pytest.raises(CreditsExhausted):
            anyio.run(poll, "insufficient_credits")


# --- 14. a download redirected off the web fails at once ----------------------------------------------

def test_a_download_redirected_to_a_file_url_is_refused_at_once_without_a_second_request(tmp_path):
    hostile = HostileApi(_sim(), Mode.REDIRECT_TO_FILE)

    async def fetch() -> None:
        async with PixelDojoClient(KEY, BASE, transport=hostile) as c:
            await c.download("https://temp.pixeldojo.ai/pixeldojotemp/x.mp4", tmp_path / "x.part", max_bytes=10_000)
    with pytest.raises(DownloadRefused, match="file URL"):
        anyio.run(fetch)
    assert hostile.done[Mode.REDIRECT_TO_FILE] == 1


# --- the options -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("option, value", [("request_deadline", float("nan")), ("request_deadline", float("inf")),
                                           ("min_download_rate", float("nan")), ("min_download_rate", 0.0)])
def test_deadlines_that_are_not_positive_numbers_are_refused(option, value):
    with pytest.raises(UsageError, match=option.replace("_", "-")):
        RunOptions.of(**{option: value})


def test_the_cli_takes_the_deadlines_and_refuses_nan_in_one_line(tmp_path):
    manifest = tmp_path / "m.yaml"
    manifest.write_text(small_manifest(n_rows=1))
    args = ["run", str(manifest), "--simulate", "--ledger", str(tmp_path / "l.db"), "--out", str(tmp_path / "o"),
            "--json"]
    refused = CliRunner().invoke(cli, [*args, "--request-deadline", "nan"])
    assert refused.exit_code == 2 and "--request-deadline must be a positive number" in refused.output
    done = CliRunner().invoke(cli, [*args, "--request-deadline", "30", "--min-download-rate", "200"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["counts"]["completed"] == 1
