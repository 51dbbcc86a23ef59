"""Reading a body without trusting its length or its pace: an API answer up to a cap, a video
to a file up to its size cap (and checked as a whole MP4 video as it passes), each told how far
it got so its caller's deadline can follow."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, Protocol

import anyio
import httpx

from ..errors import AnswerTooLarge, DiskFullError, MalformedAnswer, OutputGone, OversizeError, ServerError
from ..outputs.media import VideoInfo
from ..outputs.wholeness import WholeVideo
from ..policy import Deadlines
from .answers import Download, declared_size, rate_limited

# The longest API answer read (a status, a submission, a schema: a few KB each); one that goes on
# past it is refused unread, so an endless body cannot grow memory without bound.
MAX_ANSWER_BYTES = 1024 * 1024


async def read_capped(response: httpx.Response, cap: int = MAX_ANSWER_BYTES) -> None:
    """Read a streamed API answer's body (decoded) into `response.content`, refusing one over `cap`
    bytes (AnswerTooLarge) as soon as it says so or passes it, without reading the rest."""
    if (declared_size(response) or 0) > cap:
        raise AnswerTooLarge(f"the API's answer declares {declared_size(response)} bytes, over the {cap}-byte "
                             f"cap for an answer; not read", response.status_code)
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > cap:
            raise AnswerTooLarge(f"the API's answer went on past the {cap}-byte cap for an answer; not read further",
                                 response.status_code)
    # What httpx's own aread() leaves behind, so .content, .text and .json() read it as usual.
    response._content = bytes(body)


def raise_for_download(response: httpx.Response, max_bytes: int, redact: Callable[[str], str],
                       max_retry_after: float) -> None:
    """The error a download's answer means before its body is read (nothing for a 200 that fits)."""
    status = response.status_code
    if status in (403, 404, 410):
        raise OutputGone(f"the output URL answered {status} (expired or removed)", status)
    if status == 429:
        raise rate_limited("rate limited while downloading", response, redact, max_retry_after)
    if status >= 500:
        raise ServerError(f"download failed: HTTP {status}", status)
    if status != 200:
        raise MalformedAnswer(f"download failed: HTTP {status}", status)
    length = declared_size(response)
    if length is not None and length > max_bytes:
        raise OversizeError(f"the video is {length} bytes, over the {max_bytes}-byte cap")


class VideoSink(Protocol):
    """Where a video's bytes go as they arrive: a file (`FileSink`), or an object being uploaded
    (`storage.s3.Upload`). `finish` only once the bytes are checked; `abort` on any other end."""

    async def write(self, chunk: bytes) -> None: ...

    async def finish(self) -> object: ...

    async def abort(self) -> None: ...


class FileSink:
    """A video written to `path` (a temporary name: publishing it, durably, is the caller's)."""

    def __init__(self, path: Path):
        self.path = path
        self._file: BinaryIO | None = None

    async def write(self, chunk: bytes) -> None:
        try:
            if self._file is None:
                self._file = open(self.path, "wb")  # noqa: SIM115 (closed by finish or abort)
            self._file.write(chunk)
        except OSError as e:
            await self.abort()
            if e.errno == 28:  # ENOSPC
                raise DiskFullError(f"no space left on the disk while writing {self.path.parent}") from None
            raise

    async def finish(self) -> Path:
        if self._file is None:
            self.path.write_bytes(b"")
        else:
            self._file.flush()  # durability (fsync) is the caller's, when it gives the file its final name
            self._file.close()
        return self.path

    async def abort(self) -> None:
        if self._file is not None:
            self._file.close()


async def save_video(response: httpx.Response, sink: VideoSink, max_bytes: int,
                     within: tuple[anyio.CancelScope, float, Deadlines] | None = None) -> Download:
    """Stream a video into `sink`, hashing it, up to `max_bytes`; it must be a whole MP4 video
    (checked as it passes), or the sink is aborted. `within`: the scope that bounds the download,
    when it began, and its deadlines: the scope's deadline moves on with every byte that arrives
    (`Deadlines.download_ends`)."""
    def arrived(size: int) -> None:
        if within is not None:
            scope, begun, deadlines = within
            scope.deadline = deadlines.download_ends(begun, size)
    arrived(0)
    whole = WholeVideo()  # checked as the bytes pass: no second read
    digest = hashlib.sha256()
    first, size = b"", 0
    try:
        async for chunk in response.aiter_bytes():
            size += len(chunk)  # counted here: the checker stops counting at the first bad box
            if size > max_bytes:
                raise OversizeError(f"the video is over the {max_bytes}-byte cap; download stopped")
            if len(first) < 12:
                first += chunk[: 12 - len(first)]
            digest.update(chunk)
            whole.feed(chunk)
            if whole.problem is not None:  # no need to read (or store) the rest of what is no video
                raise MalformedAnswer(f"the downloaded file {whole.problem}")
            await sink.write(chunk)
            arrived(size)
        if first[4:8] != b"ftyp":
            raise MalformedAnswer(f"the downloaded file is not an MP4 video (starts with {first[:12]!r})")
        video = whole.verdict()
        if not isinstance(video, VideoInfo):
            raise MalformedAnswer(f"the downloaded file {video}")
    except BaseException:
        await sink.abort()
        raise
    await sink.finish()
    return Download(sink.path if isinstance(sink, FileSink) else None, size, digest.hexdigest(), video)
