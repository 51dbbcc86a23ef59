"""The clip the simulator renders for a request: the demo MP4 with its header rewritten to say the
requested duration and frame size (the picture stays a small test pattern), unique per job, and
the ways a dishonest API gets it wrong (too short, the wrong size, cut off).

Only header fields change (`mvhd`, each track's `tkhd`, `mdhd` and edit list), so the file stays
an MP4 whose boxes account for every byte; a checker that reads the header sees the request."""

from __future__ import annotations

import enum
import io
import struct
from functools import cache
from importlib import resources

from ..outputs.media import boxes, read_header

# Boxes that only contain other boxes, on the way to the ones rewritten here.
_CONTAINERS = {b"moov", b"trak", b"mdia", b"edts"}


class ClipLie(enum.Enum):
    """How the simulator's clip differs from what was asked (`batcher simulator --clip-lie`)."""

    NONE = "none"
    SHORT = "short"  # half the requested duration
    SIZE = "size"  # a frame size the request did not ask for
    TRUNCATED = "truncated"  # the file ends inside its media data


@cache
def demo_clip() -> bytes:
    """The small real MP4 clip shipped with the package."""
    return resources.files("batcher").joinpath("data/demo.mp4").read_bytes()


def _boxes(data: bytearray, start: int, end: int) -> list[tuple[bytes, int, int]]:
    """(type, payload start, box end) of the boxes between `start` and `end` of `data`."""
    return boxes(io.BytesIO(data), start, end)


def _set_times(data: bytearray, payload: int, seconds: float, scale_at: tuple[int, int], duration_at: tuple[int, int],
               movie_scale: int | None = None) -> int:
    """Rewrite a full box's duration (its own timescale, or the movie's for tkhd); return its timescale."""
    version = data[payload]
    scale_offset = scale_at[1] if version == 1 else scale_at[0]
    timescale = movie_scale or struct.unpack_from(">I", data, payload + scale_offset)[0]
    offset = duration_at[1] if version == 1 else duration_at[0]
    fmt = ">Q" if version == 1 else ">I"
    struct.pack_into(fmt, data, payload + offset, round(seconds * timescale))
    return timescale


def _rewrite(data: bytearray, start: int, end: int, seconds: float, frame: tuple[int, int] | None,
             movie_scale: int, video: list[bool]) -> int:
    for kind, payload, box_end in _boxes(data, start, end):
        if kind == b"mvhd":
            movie_scale = _set_times(data, payload, seconds, (12, 20), (16, 24))
        elif kind == b"trak":
            is_video = [False]
            _rewrite(data, payload, box_end, seconds, frame, movie_scale, is_video)
            if is_video[0] and frame is not None:
                _set_frame(data, payload, box_end, frame)
        elif kind == b"tkhd":
            _set_times(data, payload, seconds, (0, 0), (20, 28), movie_scale)
        elif kind == b"mdhd":
            _set_times(data, payload, seconds, (12, 20), (16, 24))
        elif kind == b"hdlr":
            video[0] = bytes(data[payload + 8:payload + 12]) == b"vide"
        elif kind == b"elst":
            # the first edit's segment duration, in the movie's timescale
            _set_times(data, payload, seconds, (0, 0), (8, 8), movie_scale)
        elif kind in _CONTAINERS:
            movie_scale = _rewrite(data, payload, box_end, seconds, frame, movie_scale, video)
    return movie_scale


def _set_frame(data: bytearray, trak_start: int, trak_end: int, frame: tuple[int, int]) -> None:
    for kind, payload, _ in _boxes(data, trak_start, trak_end):
        if kind == b"tkhd":
            offset = 88 if data[payload] == 1 else 76  # width, height (16.16) follow the matrix
            struct.pack_into(">II", data, payload + offset, frame[0] << 16, frame[1] << 16)


def clip_for(job_id: str, seconds: float | None = None, frame: tuple[int, int] | None = None,
             lie: ClipLie = ClipLie.NONE) -> bytes:
    """The clip of one job: `seconds` long at `frame` (width, height) as its header says (None: the
    demo's own), with a top-level `free` box naming the job (still playable, unique per job)."""
    data = bytearray(demo_clip())
    if lie is ClipLie.SHORT and seconds is not None:
        seconds = seconds / 2
    if lie is ClipLie.SIZE and frame is not None:
        frame = (frame[0] + 64, frame[1] // 2)
    if seconds is not None or frame is not None:
        original = read_header(io.BytesIO(data), len(data))
        _rewrite(data, 0, len(data), seconds if seconds is not None else original.seconds if original else 0.0,
                 frame, 0, [False])
    payload = f"batcher-simulator job {job_id}".encode()
    clip = bytes(data) + struct.pack(">I", 8 + len(payload)) + b"free" + payload
    if lie is ClipLie.TRUNCATED:
        # cut inside the media data: the last box claims more bytes than the file holds
        return clip[:len(clip) - len(payload) - 8 - 1000]
    return clip
