"""A hostile review of issue 23, the client and polling: text no database stores in an answer
(a lone surrogate, a NUL), several jobs given one statusUrl, a paid job briefly not found, and a
download that declares a huge length and drips. Each fails, holds or leaves the one job it
concerns, with the reason, and the run ends; no clip is paid twice nor given to another job."""
from __future__ import annotations

import time
from pathlib import Path

import anyio
import httpx
import pytest

from batcher import api
from batcher.client import PixelDojoClient
from batcher.errors import DownloadRefused, MalformedAnswer, OutcomeUnknown, RejectedError, TooSlow
from batcher.ledger import Ledger
from batcher.ledger.journal import journal_path, read
from batcher.policy import Deadlines, RetryPolicy
from batcher.run import RunOptions, RunReport, polling
from batcher.simulator import SimConfig, Simulator

from .conftest import small_manifest
from .hostile import HostileApi, Mode

BASE = "https://pixeldojo.ai"
KEY = "pd-test-key-0123456789"
ENDS_WITHIN = 60.0  # a run that ends is done in seconds; one that hangs fails here instead of never
UNSTORABLE = ["\ud800", "\x00"]  # a lone surrogate (SQLite and psycopg cannot encode it); a NUL (PostgreSQL refuses it)


def _sim(**config) -> Simulator:
    return Simulator(SimConfig(render_seconds=0.05, render_jitter=0.2, **config))


def _run(tmp_path: Path, location: str | Path, hostile: HostileApi, rows: int = 4, later: float = 0.0,
         **options) -> tuple[RunReport, list]:
    """Run a small manifest through `hostile` on the ledger at `location`, whose clock reads `later`
    seconds ahead of now, within ENDS_WITHIN seconds; the report and the jobs with their events."""
    manifest = tmp_path / "m.yaml"
    manifest.write_text(small_manifest(n_rows=rows))
    fast = RetryPolicy(base=0.01, cap=0.05, max_attempts=3)
    opts = RunOptions.of(**{"expected_render": 0.05, "seed": 1, "retry": fast, "submit_retry": fast,
                            "out_dir": tmp_path / "out", "ledger_patience": 2.0, **options})
    to = api.Target(hostile.sim.config.api_key, BASE, hostile, hostile.sim)

    async def bounded() -> RunReport:
        with anyio.fail_after(ENDS_WITHIN), Ledger(location, clock=lambda: time.time() + later) as ledger:
            return await api.run_async(manifest, ledger=ledger, options=opts, to=to)
    report = anyio.run(bounded)
    with Ledger(location) as ledger:
        jobs = [(job, ledger.events(job.id)) for job in ledger.iter_batch("small")]
    return report, jobs


def _victim(jobs: list, state: str) -> tuple:
    """The one job left in `state` (every other one completed)."""
    assert sorted(job.state for job, _ in jobs) == sorted([state] + ["completed"] * (len(jobs) - 1))
    return next((job, events) for job, events in jobs if job.state == state)


def _storable(text: str | None) -> bool:
    """Whether both databases take `text`: no NUL, and no lone surrogate (UTF-8 encodes it)."""
    if text is None:
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


@pytest.fixture(autouse=True)
def _state_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))  # a PostgreSQL ledger's journal lives there


# --- 1. lone surrogates and NUL are cleaned where answers are read -----------------------------------

def _answering(body: dict, status: int = 200) -> httpx.MockTransport:
    """Every request answered `body` as JSON, escapes and all (a lone surrogate is valid JSON)."""
    import json
    return httpx.MockTransport(lambda request: httpx.Response(
        status, content=json.dumps(body).encode(), headers={"content-type": "application/json"}))


def _call(transport: httpx.MockTransport, method: str, *args):
    async def go():
        async with PixelDojoClient(KEY, BASE, transport=transport) as c:
            return await getattr(c, method)(*args)
    return anyio.run(go)


@pytest.mark.parametrize("char", UNSTORABLE)
def test_every_string_an_answer_brings_is_cleaned_once_at_the_client(char):
    status = _call(_answering({"jobId": "job_1", "status": "failed", "error": f"upstream {char} error"}),
                   "status", "job_1")
    assert status.error == "upstream \ufffd error"  # the mark a cleaned character leaves
    schema = _call(_answering({f"k{char}": [{"v": f"a{char}b"}], "n": 1}), "read", "schema", "/x")
    assert schema == {"k\ufffd": [{"v": "a\ufffdb"}], "n": 1}
    with pytest.raises(RejectedError) as refused:
        _call(_answering({"error": {"code": "bad", "message": f"no {char} way"}}, 422), "status", "job_1")
    assert "no \ufffd way" in str(refused.value) and _storable(str(refused.value))


@pytest.mark.parametrize("char", UNSTORABLE)
def test_a_submission_naming_a_status_url_that_needed_cleaning_is_held_as_unknown(char):
    body = {"jobId": "job_1", "status": "pending", "statusUrl": f"{BASE}/api/v1/jobs/job_1?x={char}", "creditCost": 20}
    with pytest.raises(OutcomeUnknown, match="lone surrogate or NUL"):
        _call(_answering(body, 202), "submit", "happyhorse-1.0-r2v", {"prompt": "a"})


@pytest.mark.parametrize("char", UNSTORABLE)
def test_a_completed_status_whose_output_url_needed_cleaning_is_malformed(char):
    body = {"jobId": "job_1", "status": "completed", "output": {"video": f"https://temp.pixeldojo.ai/v.mp4?x={char}"}}
    with pytest.raises(MalformedAnswer, match="lone surrogate or NUL"):
        _call(_answering(body), "status", "job_1")


@pytest.mark.parametrize("char", UNSTORABLE)
@pytest.mark.parametrize("field", ["statusUrl", "jobId"])
def test_an_accepted_submission_with_an_id_or_url_no_database_stores_holds_that_job_and_the_run_goes_on(
        tmp_path, ledger_url, field, char):
    hostile = HostileApi(_sim(), Mode.GARBLED_TEXT, field=field, char=char)
    report, jobs = _run(tmp_path, ledger_url, hostile, rows=2)
    job, events = _victim(jobs, "unknown")  # it may have been charged: never sent again unasked
    assert "may have been charged" in job.error and all(_storable(e.detail) for e in events)
    assert job.remote_job_id is None and job.status_url is None  # nothing of the garbled answer is kept
    assert report.exit_code == 1 and report.stop_reason is None
    assert read(journal_path(ledger_url)) == []  # every write was made: nothing waits in the journal
    assert hostile.done[Mode.GARBLED_TEXT] == 1 and len(hostile.sim.record()["jobs"]) == 2


@pytest.mark.parametrize("char", UNSTORABLE)
def test_a_failed_renders_reason_no_database_stores_fails_the_job_with_the_reason_cleaned(tmp_path, ledger_url, char):
    hostile = HostileApi(_sim(fail_rate=1.0), Mode.GARBLED_TEXT, field="error", char=char)
    report, jobs = _run(tmp_path, ledger_url, hostile, rows=2, max_attempts=1)
    assert [job.state for job, _ in jobs] == ["failed", "failed"]
    for job, events in jobs:
        assert job.error.startswith("upstream \ufffd ") and all(_storable(e.detail) for e in events)
    assert report.exit_code == 1 and report.stop_reason is None


@pytest.mark.parametrize("char", UNSTORABLE)
def test_an_output_url_no_database_stores_is_a_malformed_answer_and_the_job_completes_at_the_next_poll(
        tmp_path, ledger_url, char):
    hostile = HostileApi(_sim(), Mode.GARBLED_TEXT, field="video", char=char)
    report, jobs = _run(tmp_path, ledger_url, hostile, rows=2)
    assert [job.state for job, _ in jobs] == ["completed", "completed"] and report.exit_code == 0
    retried = [e.detail for _, events in jobs for e in events if e.kind == "poll-retry"]
    assert len(retried) == 1 and "lone surrogate or NUL" in retried[0]
    assert all(_storable(job.output_url) for job, _ in jobs)


@pytest.mark.parametrize("method", ["download", "fetch_reference"])
def test_a_redirect_to_a_url_no_parser_reads_is_refused_not_raised_through(tmp_path, method):
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(302, headers={"location": "http://[unclosed/v.mp4"})  # urlsplit: ValueError

    async def fetch():
        async with PixelDojoClient(KEY, BASE, transport=httpx.MockTransport(handler)) as c:
            if method == "download":
                return await c.download("https://temp.pixeldojo.ai/v.mp4", tmp_path / "v.part", max_bytes=10_000)
            return await c.fetch_reference("https://refs.example.org/a.png", 10_000)
    with pytest.raises(DownloadRefused if method == "download" else MalformedAnswer, match="unreadable"):
        anyio.run(fetch)


# --- 2. several jobs, one statusUrl --------------------------------------------------------------------

def test_jobs_answered_with_one_status_url_are_each_polled_at_their_own_and_get_their_own_clip(tmp_path):
    hostile = HostileApi(_sim(), Mode.SHARED_STATUS_URL)
    report, jobs = _run(tmp_path, tmp_path / "l.db", hostile, rows=3)
    assert hostile.done[Mode.SHARED_STATUS_URL] == 2 and report.exit_code == 0
    assert [job.state for job, _ in jobs] == ["completed"] * 3
    assert len({job.sha256 for job, _ in jobs}) == 3  # three clips, not one clip three times
    assert all(job.status_url == f"{BASE}/api/v1/jobs/{job.remote_job_id}" for job, _ in jobs)
    assert len(hostile.sim.record()["jobs"]) == 3


def test_a_status_url_is_polled_only_when_its_path_ends_with_the_jobs_own_id():
    c = PixelDojoClient(KEY, BASE)
    own = f"{BASE}/api/v1/jobs/job_2"
    assert c.status_url_for("job_2", f"{BASE}/api/v1/jobs/job_1") == own  # another job's
    assert c.status_url_for("job_2", f"{BASE}/api/v1/jobs/job_2?v=1") == f"{own}?v=1"
    assert c.status_url_for("job_2", f"{BASE}/api/v1/jobs/job_2/") == own  # the id is not the last segment
    assert c.status_url_for("job_2", f"{BASE}/api/v1/jobs/job_1%2Fjob_2") == own  # one segment, not the id
    assert c.status_url_for("job_2", f"{BASE}/api/v1/jobs/job_1?next=/job_2") == own  # a query is no path
    assert c.status_url_for("job:2", f"{BASE}/v2/job%3A2") == f"{BASE}/v2/job%3A2"  # quoted, it is the id


def test_a_status_answer_about_another_job_is_malformed_never_that_jobs_clip():
    body = {"jobId": "job_1", "status": "completed", "output": {"video": "https://temp.pixeldojo.ai/v.mp4"}}
    with pytest.raises(MalformedAnswer, match="about job job_1, not job_2"):
        _call(_answering(body), "status", "job_2")
    assert _call(_answering(body), "status", "job_1").video_url == "https://temp.pixeldojo.ai/v.mp4"


# --- 3. a 404 on a status poll: the job stays submitted, until it spans runs and minutes -----------------

def test_one_404_on_a_paid_jobs_status_leaves_it_submitted_and_the_next_run_completes_it(tmp_path):
    sim = _sim()
    hostile = HostileApi(sim, Mode.STATUS_NOT_FOUND, message="job \ud800 not found")
    report, jobs = _run(tmp_path, tmp_path / "l.db", hostile)
    job, events = _victim(jobs, "submitted")  # paid: never `unknown` on one answer
    assert "job \ufffd not found" in job.error and "404" in job.error
    assert [e.kind for e in events].count(polling.NOT_FOUND) == 1  # not followed further in this run
    assert report.exit_code == 1 and report.stop_reason is None
    assert any("next run polls them again" in m for m in report.messages)
    report, jobs = _run(tmp_path, tmp_path / "l.db", hostile)  # the API finds it again
    assert [job.state for job, _ in jobs] == ["completed"] * 4 and report.exit_code == 0
    assert all(job.error is None for job, _ in jobs)
    assert len(sim.record()["jobs"]) == 4 and hostile.done[Mode.STATUS_NOT_FOUND] == 1


def test_a_job_the_api_keeps_not_finding_is_held_only_after_two_runs_ten_minutes_apart(tmp_path):
    sim = _sim()
    hostile = HostileApi(sim, Mode.STATUS_NOT_FOUND, polls=1000)
    for later in (0.0, 120.0):  # two runs, two minutes apart: not yet
        report, jobs = _run(tmp_path, tmp_path / "l.db", hostile, rows=2, later=later)
        job, events = _victim(jobs, "submitted")
    assert [e.kind for e in events].count(polling.NOT_FOUND) == 2
    report, jobs = _run(tmp_path, tmp_path / "l.db", hostile, rows=2, later=polling.NOT_FOUND_SECONDS + 1)
    job, events = _victim(jobs, "unknown")
    assert "no longer knows" in job.error and "in 3 runs over 10 min" in job.error and "retry --unknown" in job.error
    assert [e.kind for e in events].count(polling.NOT_FOUND) == 2 and events[-1].kind == "lost"
    assert report.held_jobs == 1 and report.exit_code == 1
    polls = hostile.done[Mode.STATUS_NOT_FOUND]
    _run(tmp_path, tmp_path / "l.db", hostile, rows=2, later=polling.NOT_FOUND_SECONDS + 2)
    assert hostile.done[Mode.STATUS_NOT_FOUND] == polls  # held: no longer polled
    assert len(sim.record()["jobs"]) == 2  # and never paid again unasked
    # Sent again with the user's consent, it is another remote job: the earlier one's 404s do not count.
    again = HostileApi(sim, Mode.STATUS_NOT_FOUND, polls=1)
    report, jobs = _run(tmp_path, tmp_path / "l.db", again, rows=2, later=polling.NOT_FOUND_SECONDS + 3,
                        resubmit_unknown=True)
    job, events = _victim(jobs, "submitted")
    assert len(sim.record()["jobs"]) == 3 and again.done[Mode.STATUS_NOT_FOUND] == 1
    assert [e.kind for e in events].count(polling.NOT_FOUND) == 3  # two about the first remote job, one now


# --- 4. a lying Content-Length with a dripping body -------------------------------------------------------

def test_a_download_declaring_a_huge_length_is_cut_by_the_bytes_that_arrived(tmp_path):
    async def endless():
        yield b"\x00\x00\x00\x18ftypmp42"
        while True:
            await anyio.sleep(0.2)
            yield b"x"

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-length": str(1024 ** 3)}, content=endless())

    async def fetch(dest: Path) -> None:
        # (a deadline from the declared GB at 50 KB/s would be 20,972 s: the bound ends that, failing)
        with anyio.fail_after(ENDS_WITHIN):
            async with PixelDojoClient(KEY, BASE, transport=httpx.MockTransport(handler),
                                       deadlines=Deadlines(request=0.5, min_download_kbps=50)) as c:
                await c.download("https://temp.pixeldojo.ai/v.mp4", dest, max_bytes=2 * 1024 ** 3)
    with pytest.raises(TooSlow, match="did not end in time"):
        anyio.run(fetch, tmp_path / "v.part")


def test_a_run_whose_output_declares_a_huge_length_and_drips_retries_it_and_completes(tmp_path):
    hostile = HostileApi(_sim(), Mode.LYING_LENGTH_DRIP, drip=0.2)
    report, jobs = _run(tmp_path, tmp_path / "l.db", hostile, request_deadline=0.5)
    assert [job.state for job, _ in jobs] == ["completed"] * 4 and report.exit_code == 0
    assert hostile.done[Mode.LYING_LENGTH_DRIP] == 1
    assert any("did not end in time" in (e.detail or "") for _, events in jobs for e in events)
