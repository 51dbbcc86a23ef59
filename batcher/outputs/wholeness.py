"""Whether the bytes of a video, as they stream past, are a whole MP4 video: the one home of that
rule, for a download (checked as it arrives, with no second read) and for a file at rest.

Whole means: the top-level boxes account for every byte (a file cut off, or padded, is caught),
there is media data (`mdat`), and the `moov` box (kept in memory as it passes: it is small)
describes a video track whose duration and frame size are read."""

from __future__ import annotations

import io
import struct
from pathlib import Path

from .media import VideoInfo, read_header

MAX_MOOV = 64 * 1024 * 1024  # a header larger than this is not a clip's
CHUNK = 1024 * 1024


class WholeVideo:
    """Feed it the bytes in order (`feed`), then ask `verdict`: the video's facts, or why it is not
    a whole MP4 video."""

    def __init__(self) -> None:
        self.size = 0  # bytes fed
        self._box_end = 0  # where the current top-level box ends (0 before the first)
        self._to_end = False  # a box of size 0: it runs to the end of the file
        self._head = bytearray()  # a top-level box header being read
        self._moov: bytearray | None = None  # the moov box, while it passes
        self._kinds: list[bytes] = []
        self._whole_to = 0  # where the last complete top-level box ends
        self._problem: str | None = None
        self._header: VideoInfo | None = None

    def feed(self, data: bytes) -> None:
        at = 0
        while at < len(data) and self._problem is None:
            if self._to_end or self.size < self._box_end:
                take = len(data) - at if self._to_end else min(len(data) - at, self._box_end - self.size)
                self._keep(data[at:at + take])
                at += take
                self.size += take
                if not self._to_end and self.size == self._box_end:
                    self._box_ended()
                continue
            take = min(len(data) - at, 16 - len(self._head))
            self._head += data[at:at + take]
            at += take
            self.size += take
            self._read_head()

    @property
    def problem(self) -> str | None:
        """Why the bytes fed so far cannot be a whole MP4 video, once that is certain (None: not yet)."""
        return self._problem

    def _keep(self, part: bytes) -> None:
        if self._moov is not None and len(self._moov) + len(part) > MAX_MOOV:
            self._problem = f"has a header (moov) over {MAX_MOOV // (1024 * 1024)} MB: not a clip's"
            self._moov = None
            return
        if self._moov is not None:
            self._moov += part

    def _read_head(self) -> None:
        """Once enough of a box header has come: where the box ends (the bytes read past its
        header belong to the box)."""
        if len(self._head) < 8:
            return
        size, kind = struct.unpack(">I4s", bytes(self._head[:8]))
        header = 8
        if size == 1:
            if len(self._head) < 16:
                return
            size, header = struct.unpack(">Q", bytes(self._head[8:16]))[0], 16
        start = self.size - len(self._head)
        if not all(32 < c < 127 for c in kind) or (size != 0 and size < header):
            self._problem = f"is not a whole MP4 file: no box at byte {start:,} (padded, or not an MP4)"
            return
        self._kinds.append(kind)
        past = bytes(self._head[header:])
        self._moov = None
        if kind == b"moov" and 0 < size <= MAX_MOOV:
            self._moov = bytearray(self._head[:header])
        self._head.clear()
        if size == 0:
            # Only media data after its header may run to the end: anything else leaves no room
            # for a moov or an mdat, so the rest need not be read (or stored) to know.
            if kind != b"mdat" or b"moov" not in self._kinds:
                self._problem = (f"is not a whole MP4 file: a box running to its end at byte {start:,} is not media "
                                 f"data after a header")
                return
            self._to_end = True
        else:
            self._box_end = start + size
        self.size -= len(past)  # fed again as the box's own bytes
        if self.size == self._box_end:
            self._box_ended()
        self.feed(past)

    def _box_ended(self) -> None:
        self._whole_to = self.size
        if self._moov is not None:
            self._header = read_header(io.BytesIO(bytes(self._moov)), len(self._moov))
            self._moov = None

    def verdict(self) -> VideoInfo | str:
        """The video's facts, or why the bytes fed are not a whole MP4 video."""
        if self._problem is not None:
            return self._problem
        if self._head or (not self._to_end and self.size != self._box_end):
            return (f"is not a whole MP4 file: its boxes account for {self._whole_to:,} of its {self.size:,} "
                    f"bytes (cut off, padded, or not an MP4)")
        if self._to_end and self._moov is not None:
            self._box_ended()
        missing = [k.decode() for k in (b"moov", b"mdat") if k not in self._kinds]
        if missing:
            return "is not an MP4 video: " + " and ".join(f"no {k} box" for k in missing)
        if self._header is None:
            return "has no video track with a duration and frame size in its header"
        if self._header.seconds <= 0:
            return "says it lasts 0 seconds"
        return VideoInfo(self._header.seconds, self._header.width, self._header.height, self.size)


def whole_video(path: Path) -> VideoInfo | str:
    """A file at rest, read through `WholeVideo` (a full read: for checks that read it anyway)."""
    check = WholeVideo()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                check.feed(chunk)
    except OSError as e:
        return f"cannot be read ({type(e).__name__})"
    return check.verdict()
