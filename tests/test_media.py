"""Reading what a video file really is from its MP4 header."""
from __future__ import annotations

import struct

from batcher.outputs import VideoInfo, expected_frame, mismatches, probe
from batcher.simulator import demo_clip


def test_probe_reads_duration_and_frame_size_of_the_demo_clip(tmp_path):
    path = tmp_path / "clip.mp4"
    path.write_bytes(demo_clip())
    assert probe(path) == VideoInfo(2.0, 160, 90, len(demo_clip()))


def test_probe_gives_none_for_what_is_not_an_mp4(tmp_path):
    for name, data in [("text.mp4", b"hello world" * 10), ("loop.mp4", struct.pack(">I4s", 8, b"moov") * 3),
                       ("huge.mp4", struct.pack(">I4s", 0xFFFFFFFF, b"moov")), ("empty.mp4", b"")]:
        path = tmp_path / name
        path.write_bytes(data)
        assert probe(path) is None
    assert probe(tmp_path / "absent.mp4") is None


def test_a_truncated_header_is_not_read_past_its_end(tmp_path):
    data = demo_clip()
    for cut in (20, 200, 1000, len(data) // 2):
        path = tmp_path / f"cut{cut}.mp4"
        path.write_bytes(data[:cut])
        info = probe(path)
        assert info is None or info.seconds == 2.0


def test_expected_frames_and_mismatches():
    assert expected_frame("720p", "16:9") == (1280, 720)
    assert expected_frame("1080p", "9:16") == (1080, 1920)
    assert expected_frame("720p", "4:3") == (960, 720)
    assert expected_frame("4k", "16:9") is None
    good = VideoInfo(5.02, 1280, 720, 1)
    assert mismatches(good, 5, "720p", "16:9") == []
    assert mismatches(good, 8, "720p", "16:9") == ["5.02 s long, asked 8 s"]
    assert mismatches(good, 5, "720p", "9:16") == ["1280x720 is not 9:16"]
    assert mismatches(VideoInfo(5, 1920, 1080, 1), 5, "720p", "16:9") == ["1920x1080 is not 720p"]
