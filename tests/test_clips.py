"""The simulator's clips say what was asked (duration, frame size) or lie as told; a download is
checked as a whole MP4 video, not only as bytes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from batcher.outputs.media import VideoInfo, probe
from batcher.outputs.wholeness import WholeVideo, whole_video
from batcher.simulator import ClipLie, SimConfig, Simulator, clip_for

BASE = "https://pixeldojo.ai"
AUTH = {"authorization": "Bearer sim-key"}
BODY = {"prompt": "a horse", "reference_urls": ["https://example.com/a.png"], "duration": 7,
        "resolution": "1080p", "aspectRatio": "9:16"}


def completeness_problem(path: Path) -> str | None:
    """Why the file is not a whole MP4 video, read at rest and streamed in odd-sized chunks alike."""
    at_rest = whole_video(path)
    streamed = WholeVideo()
    data = path.read_bytes() if path.exists() else b""
    for at in range(0, len(data), 7):
        streamed.feed(data[at:at + 7])
    if path.exists():
        assert streamed.verdict() == at_rest
    return None if isinstance(at_rest, VideoInfo) else at_rest


def _served(tmp_path: Path, lie: str = "none", body: dict | None = None) -> Path:
    """The file the simulator serves for one rendered job of `body`."""
    sim = Simulator(SimConfig(render_seconds=0, render_jitter=0, clip_lie=lie))
    job = json.loads(sim.handle("POST", f"{BASE}/api/v1/models/happyhorse-1.0-r2v/run", AUTH,
                                json.dumps(body or BODY).encode()).body)
    done = json.loads(sim.handle("GET", job["statusUrl"], AUTH, b"").body)
    assert done["status"] == "completed", done
    video = sim.handle("GET", done["output"]["video"], {}, b"")
    path = tmp_path / f"{lie}.mp4"
    path.write_bytes(video.body)
    return path


def test_a_served_clip_says_the_requested_duration_and_frame_size(tmp_path):
    info = probe(_served(tmp_path))
    assert info is not None and (info.seconds, info.width, info.height) == (7.0, 1080, 1920)
    landscape = probe(_served(tmp_path, body={**BODY, "resolution": "720p", "aspectRatio": "16:9", "duration": 3}))
    assert landscape is not None and (landscape.seconds, landscape.width, landscape.height) == (3.0, 1280, 720)
    assert completeness_problem(_served(tmp_path)) is None


def test_clips_are_unique_per_job_and_still_whole_mp4s(tmp_path):
    a, b = clip_for("job_a", 5, (1280, 720)), clip_for("job_b", 5, (1280, 720))
    assert a != b and a[4:8] == b"ftyp"
    for name, data in (("a", a), ("b", b)):
        (tmp_path / name).write_bytes(data)
        assert completeness_problem(tmp_path / name) is None


@pytest.mark.parametrize(("lie", "seconds", "frame"), [("short", 3.5, (1080, 1920)), ("size", 7.0, (1144, 960))])
def test_a_lying_simulator_serves_clips_unlike_the_request(tmp_path, lie, seconds, frame):
    info = probe(_served(tmp_path, lie))
    assert info is not None and (info.seconds, (info.width, info.height)) == (seconds, frame)


def test_a_truncated_clip_is_not_whole(tmp_path):
    problem = completeness_problem(_served(tmp_path, "truncated"))
    assert problem is not None and "not a whole MP4 file" in problem


@pytest.mark.parametrize(("tail", "why"), [(b"\0" * 10, "padded with zeros"), (b"junk" * 3, "padded with junk")])
def test_a_padded_file_is_not_whole(tmp_path, tail, why):
    path = tmp_path / "padded.mp4"
    path.write_bytes(clip_for("job_x") + tail)
    assert completeness_problem(path) is not None, why


def test_files_that_are_not_mp4_videos_are_named(tmp_path):
    text = tmp_path / "text.mp4"
    text.write_bytes(b"<html>expired</html>")
    assert "not a whole MP4 file" in (completeness_problem(text) or "")
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    assert completeness_problem(empty) is not None
    no_moov = tmp_path / "nomoov.mp4"
    no_moov.write_bytes(b"\0\0\0\x10ftypisom\0\0\0\0" + b"\0\0\0\x0cmdatabcd")
    assert completeness_problem(no_moov) == "is not an MP4 video: no moov box"
    assert completeness_problem(tmp_path / "missing.mp4") == "cannot be read (FileNotFoundError)"


def test_clip_lie_names_are_the_simulator_options():
    assert {lie.value for lie in ClipLie} == {"none", "short", "size", "truncated"}


def test_the_check_as_bytes_stream_past_reads_the_facts_and_catches_a_cut_at_a_box_boundary(tmp_path):
    data = clip_for("job_s", 9, (1920, 1080))
    check = WholeVideo()
    for at in range(0, len(data), 4096):
        check.feed(data[at:at + 4096])
    assert check.verdict() == VideoInfo(9.0, 1920, 1080, len(data))
    mdat_at = data.index(b"mdat") - 4
    cut = WholeVideo()
    cut.feed(data[:mdat_at])  # every box whole, but no media data
    assert cut.verdict() == "is not an MP4 video: no mdat box"
