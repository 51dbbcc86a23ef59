"""A small whole MP4 of any size, for tests that need exact byte counts: ftyp, a moov with one
video track (its duration and frame size in mvhd/tkhd/hdlr), and an mdat filling the rest."""

from __future__ import annotations

import struct


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def whole_mp4(size: int, seconds: int = 5, width: int = 1280, height: int = 720) -> bytes:
    ftyp = _box(b"ftyp", b"mp42" + b"\0\0\0\0" + b"mp42isom")
    mvhd = _box(b"mvhd", b"\0" * 12 + struct.pack(">II", 1000, seconds * 1000) + b"\0" * 80)
    tkhd = _box(b"tkhd", b"\0" * 76 + struct.pack(">II", width << 16, height << 16))
    hdlr = _box(b"hdlr", b"\0" * 8 + b"vide" + b"\0" * 13)
    moov = _box(b"moov", mvhd + _box(b"trak", tkhd + _box(b"mdia", hdlr)))
    head = ftyp + moov
    if size < len(head) + 8:
        raise ValueError(f"a whole MP4 takes at least {len(head) + 8} bytes")
    return head + _box(b"mdat", b"\x42" * (size - len(head) - 8))
