"""The reference image rules (type, bytes, pixels) read from an image's own bytes, and placeholder hosts.

The rules (from hosts of the same model): JPEG, PNG or WEBP, judged by the file's first bytes (its
magic number), not by its name or Content-Type; at most 10 MB; shortest side at least 400 pixels.
The size in pixels is read from the image's header (PNG IHDR, JPEG SOFn, WEBP VP8/VP8L/VP8X).
Preflight (batcher.preflight) and the simulator's API both judge references by these.

Hosts reserved for documentation and tests (RFC 2606, RFC 6761) are never an image's real home:
a reference there is a placeholder, never fetched by preflight nor by the simulator.
"""

from __future__ import annotations

import struct
from urllib.parse import urlsplit

MAX_BYTES = 10 * 1024 * 1024
MIN_SIDE = 400
HEAD_BYTES = 128 * 1024  # what is read of an image to judge it: enough for the header of any of the three types
RESERVED_SUFFIXES = (".example", ".test", ".invalid", ".localhost")
RESERVED_HOSTS = {"example.com", "example.net", "example.org", "localhost"}


def megabytes(n: int) -> str:
    """A size in bytes as people read it: `12.0 MB`."""
    return f"{n / 1024 / 1024:.1f} MB"


def image_kind(head: bytes) -> str | None:
    """JPEG, PNG or WEBP by the file's first bytes (magic numbers), else None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


def image_size(kind: str, head: bytes) -> tuple[int, int] | None:
    """(width, height) from the header of an image of `kind`, or None if `head` does not hold it."""
    try:
        if kind == "PNG":
            if head[12:16] != b"IHDR":
                return None
            width, height = struct.unpack(">II", head[16:24])
            return width, height
        if kind == "JPEG":
            return _jpeg_size(head)
        return _webp_size(head)
    except struct.error:  # cut short
        return None


def _jpeg_size(head: bytes) -> tuple[int, int] | None:
    """Walk the JPEG's segments to the first SOFn (start of frame) marker."""
    i = 2
    while i + 4 <= len(head):
        if head[i] != 0xFF:
            return None
        marker = head[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            i += 2
            continue
        (length,) = struct.unpack(">H", head[i + 2:i + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", head[i + 5:i + 9])
            return width, height
        i += 2 + length
    return None


def _webp_size(head: bytes) -> tuple[int, int] | None:
    chunk = head[12:16]
    if chunk == b"VP8 " and head[23:26] == b"\x9d\x01\x2a":  # lossy: the key frame's start code
        width, height = struct.unpack("<HH", head[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and head[20:21] == b"\x2f":  # lossless: 14 bits each, minus one
        (bits,) = struct.unpack("<I", head[21:25])
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":  # extended: 24 bits each, minus one
        return (int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1)
    return None


def too_big(size: int) -> bool:
    """Whether an image of `size` bytes is over the model's limit."""
    return size > MAX_BYTES


def too_small(width: int, height: int) -> bool:
    """Whether an image of width x height has a side under the model's minimum."""
    return min(width, height) < MIN_SIDE


def judge_image(head: bytes, size: int | None) -> tuple[bool, str]:
    """Whether an image whose first bytes are `head` (up to HEAD_BYTES) and whose size is `size`
    bytes (None: not known) meets the rules; and what it is (`PNG 800x600`) or why it is refused."""
    kind = image_kind(head)
    if kind is None:
        start = head[:16].decode("ascii", "replace").strip()
        return False, f"not a JPEG, PNG or WEBP image (starts with {start!r})"
    if size is not None and too_big(size):
        return False, f"{kind} of {megabytes(size)}, over the {megabytes(MAX_BYTES)} the model accepts"
    sides = image_size(kind, head)
    if sides is None:
        return True, f"{kind}; its dimensions are not in its first {HEAD_BYTES} bytes (not checked)"
    width, height = sides
    if too_small(width, height):
        return False, f"{kind} of {width}x{height}, shortest side under the {MIN_SIDE} pixels the model needs"
    return True, f"{kind} {width}x{height}"


def reserved_host(url: str) -> bool:
    """Whether `url` is on a host reserved for examples and tests (example.com, *.test, localhost, ...)."""
    host = (urlsplit(url).hostname or "").lower().rstrip(".")
    return host in RESERVED_HOSTS or host.endswith(RESERVED_SUFFIXES) or \
        any(host.endswith("." + h) for h in RESERVED_HOSTS)
