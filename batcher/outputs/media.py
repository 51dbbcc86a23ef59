"""What a downloaded video really is: duration and frame size read from its MP4 header, and how
that compares with what the job asked for.

Only the header boxes are read (`moov/mvhd` for the duration, the video track's `tkhd` for the
frame size), by seeking from box to box, so a 2 GB file costs a few small reads. A file that is
not an MP4, or whose header is damaged, gives None: never an exception.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

# Boxes that only contain other boxes, on the way to mvhd and tkhd.
_CONTAINERS = {b"moov", b"trak", b"mdia"}
_MAX_BOXES = 10_000  # a hostile file cannot keep us walking forever
_MAX_DEPTH = 16  # nor nest boxes past Python's recursion limit (a clip's go 4 deep to tkhd)

# Frame sizes the model renders, by resolution and aspect ratio (short side = the resolution).
_SHORT_SIDE = {"720p": 720, "1080p": 1080}


@dataclass(frozen=True)
class VideoInfo:
    """The facts of one video file."""

    seconds: float
    width: int
    height: int
    size: int


@dataclass
class _Found:
    seconds: float | None = None
    width: int | None = None
    height: int | None = None
    handler: bytes | None = None


def boxes(f: BinaryIO, start: int, end: int, budget: list[int] | None = None) -> list[tuple[bytes, int, int]]:
    """(type, payload start, box end) of the boxes between `start` and `end` (at most `budget[0]`
    boxes in all, counted down across calls; default: this call's own)."""
    budget = budget if budget is not None else [_MAX_BOXES]
    out = []
    pos = start
    while pos + 8 <= end and budget[0] > 0:
        budget[0] -= 1
        f.seek(pos)
        head = f.read(16)
        if len(head) < 8:
            break
        size, kind = struct.unpack(">I4s", head[:8])
        payload = pos + 8
        if size == 1 and len(head) == 16:
            size = struct.unpack(">Q", head[8:16])[0]
            payload = pos + 16
        elif size == 0:
            size = end - pos
        if size < 8 or pos + size > end:
            break
        out.append((kind, payload, pos + size))
        pos += size
    return out


def _walk(f: BinaryIO, start: int, end: int, found: _Found, budget: list[int], track: _Found | None,
          depth: int = 0) -> None:
    if depth > _MAX_DEPTH:
        return
    for kind, payload, box_end in boxes(f, start, end, budget):
        f.seek(payload)
        if kind == b"mvhd":
            data = f.read(32)
            if data[:1] == b"\x01" and len(data) >= 32:
                timescale, duration = struct.unpack(">IQ", data[20:32])
            elif len(data) >= 20:
                timescale, duration = struct.unpack(">II", data[12:20])
            else:
                continue
            if timescale:
                found.seconds = duration / timescale
        elif kind == b"trak":
            this = _Found()
            _walk(f, payload, box_end, found, budget, this, depth + 1)
            if this.handler == b"vide" and this.width and found.width is None:
                found.width, found.height = this.width, this.height
        elif kind == b"tkhd" and track is not None:
            # width and height (16.16 fixed point) follow the times, ids and matrix: their
            # offset depends on the box version (64-bit times in version 1)
            data = f.read(96)
            offset = 88 if data[:1] == b"\x01" else 76
            if len(data) >= offset + 8:
                width, height = struct.unpack(">II", data[offset:offset + 8])
                track.width, track.height = width >> 16, height >> 16
        elif kind == b"hdlr" and track is not None:
            data = f.read(12)
            if len(data) == 12:
                track.handler = data[8:12]
        elif kind in _CONTAINERS:
            _walk(f, payload, box_end, found, budget, track, depth + 1)


def probe(path: Path) -> VideoInfo | None:
    """Duration, frame size and byte size of an MP4 file, or None if it cannot be read as one."""
    try:
        with open(path, "rb") as f:
            return read_header(f, path.stat().st_size)
    except OSError:
        return None


def read_header(f: BinaryIO, size: int) -> VideoInfo | None:
    """`probe` of the `size` bytes of an open file (or of a header kept in memory)."""
    found = _Found()
    try:
        _walk(f, 0, size, found, [_MAX_BOXES], None)
    except (OSError, struct.error):
        return None
    if found.seconds is None or not found.width or not found.height:
        return None
    return VideoInfo(round(found.seconds, 3), found.width, found.height, size)


def expected_frame(resolution: str | None, aspect_ratio: str | None) -> tuple[int, int] | None:
    """The frame size a job asked for (720p 9:16 -> 720 x 1280), or None if unknown."""
    short = _SHORT_SIDE.get(str(resolution))
    try:
        a, b = (int(x) for x in str(aspect_ratio).split(":"))
    except ValueError:
        return None
    if short is None or a <= 0 or b <= 0:
        return None
    if a >= b:
        return round(short * a / b), short
    return short, round(short * b / a)


def mismatches(info: VideoInfo, duration: float | None, resolution: str | None, aspect_ratio: str | None
               ) -> list[str]:
    """How the file differs from what was asked: wrong length, shape or size (empty: it matches)."""
    problems = []
    if duration is not None and abs(info.seconds - float(duration)) > 0.5:
        problems.append(f"{info.seconds:g} s long, asked {duration:g} s")
    frame = expected_frame(resolution, aspect_ratio)
    if frame is not None:
        want_w, want_h = frame
        if abs(info.width / info.height - want_w / want_h) > 0.02:
            problems.append(f"{info.width}x{info.height} is not {aspect_ratio}")
        elif min(info.width, info.height) != min(want_w, want_h):
            problems.append(f"{info.width}x{info.height} is not {resolution}")
    return problems
