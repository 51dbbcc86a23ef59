"""A render's time in exports is what the API's createdAt and completedAt say, with the bounds the
polls that saw it set; never when a late poll happened to find it done (issue 27, item 12)."""
from __future__ import annotations

import json

import httpx

from batcher.client.answers import JobStatus, read_status
from batcher.run.polling import RenderTiming

from .conftest import small_manifest
from .test_e2e import batcher, record, start_simulator


def status(**times: float | None) -> JobStatus:
    return JobStatus("job_1", "completed", "https://x/v.mp4", None, 20.0, None, None, **times)


def test_the_api_times_are_read_and_the_polls_bounds_kept_beside_them():
    body = {"jobId": "job_1", "status": "completed", "output": {"video": "https://x/v.mp4"},
            "createdAt": "2026-01-01T00:00:00.000Z", "completedAt": "2026-01-01T00:00:00.512Z"}
    answer = read_status("job_1", body, httpx.Response(200, json=body), str, lambda _: False)
    timing = RenderTiming.of(answer, 0.25, 61.5)
    assert abs(timing.api - 0.512) < 1e-6 and (timing.low, timing.high) == (0.25, 61.5)
    assert RenderTiming.read(timing.detail()) == RenderTiming(0.512, 0.25, 61.5)


def test_without_the_api_times_only_the_bounds_are_known():
    for answer in (status(), status(created_at=100.0), status(created_at=100.0, completed_at=99.0)):
        timing = RenderTiming.of(answer, 0.0, 72.0)
        assert timing.api is None
        assert RenderTiming.read(timing.detail()) == RenderTiming(None, 0.0, 72.0)
    assert RenderTiming.read(None) is None and RenderTiming.read("rendered") is None


def test_the_polls_bounds_do_not_become_the_render_time(tmp_path, write):
    # Renders of ~0.3 s, guessed at 3 s (as a served simulator's 0.5 s renders were once first
    # polled after ~60 s, and the export said ~30 s, half the detection delay): the render time is
    # the API's, the polls' bounds only bracket it.
    server, url = start_simulator("--render-seconds", "0.3", "--seed", "4")
    try:
        renders, rows = _run_and_export(url, tmp_path, write)
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert len(rows) == 4
    for row in rows:
        truth = renders[row["remote_job_id"]]
        assert abs(row["render_seconds"] - truth) < 0.002, (row["render_seconds"], truth)
        low, high = row["render_seconds_bounds"]
        # (the API's timestamps are to the millisecond: the truth they give may sit a millisecond
        # below a poll that found the render running just before it ended)
        assert low - 0.002 <= truth <= high + 0.002, (low, truth, high)
    # the bounds' middle would have been wrong by more than the tolerance above
    assert max(abs((r["render_seconds_bounds"][0] + r["render_seconds_bounds"][1]) / 2 - renders[r["remote_job_id"]])
               for r in rows) > 0.01


def _run_and_export(url, tmp_path, write):
    manifest = write("m.yaml", small_manifest(n_rows=4))
    ledger = str(tmp_path / "l.db")
    proc = batcher("run", str(manifest), "--api-base", url, "--ledger", ledger, "--out", str(tmp_path / "out"),
                   "--concurrency", "4", "--expected-render", "3")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    renders = {j["job_id"]: j["render_seconds"] for j in record(url)["jobs"]}
    proc = batcher("export", str(manifest), "--ledger", ledger, "--format", "jsonl")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return renders, [json.loads(line) for line in out.splitlines()]
