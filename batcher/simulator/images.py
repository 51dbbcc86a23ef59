"""Images the simulator serves as references (`/_sim/refs/<name>`): valid PNGs made on the spot,
and variants made to be refused (too small, too big, not an image)."""

from __future__ import annotations

import functools
import struct
import zlib


@functools.lru_cache(maxsize=8)
def png_image(width: int, height: int, padding: int = 0) -> bytes:
    """A valid grey PNG of width x height; `padding` bytes of zeros after its end make it big."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = (b"\x00" + b"\x80" * width) * height
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b"") + b"\x00" * padding)


def reference_image(name: str) -> tuple[int, bytes, str] | None:
    """What `/_sim/refs/<name>` serves: (status, body, content type), or None for a 404.
    Any `*.png` is a 512x512 PNG but these variants, made to be refused: `small.png` (200x200),
    `big.png` (12 MB), `page.png` (an HTML page), `text.png` (a text file renamed),
    `missing*.png` (404)."""
    if name.startswith("missing") or not name.endswith(".png"):
        return None
    if name == "small.png":
        return 200, png_image(200, 200), "image/png"
    if name == "big.png":
        return 200, png_image(512, 512, 12 * 1024 * 1024), "image/png"
    if name == "page.png":
        return 200, b"<!doctype html><html><body><h1>Our gallery</h1></body></html>", "text/html"
    if name == "text.png":
        return 200, b"this is a text file with a .png name\n", "image/png"
    return 200, png_image(512, 512), "image/png"
