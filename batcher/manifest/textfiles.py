"""Reading the text of manifests and row files safely: regular files only, at most
MAX_FILE_BYTES, UTF-8; every refusal is a diagnostic."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..text import short
from .diagnostics import Diagnostics

MAX_FILE_BYTES = 64 * 1024 * 1024

# Opening a FIFO without O_NONBLOCK waits for a writer; stat before opening already refuses it,
# this covers a file swapped for one in between.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)


def _decode(data: bytes, display: str, diags: Diagnostics) -> str | None:
    if b"\x00" in data:
        line = data[: data.index(b"\x00")].count(b"\n") + 1
        diags.add(display, line, "this is a binary file, not a text manifest")
        return None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        diags.add(display, line, f"not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})")
        return None
    return text


def _file_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def read_text(path: Path, display: str, diags: Diagnostics, line_for_missing: tuple[str, int] | None = None
              ) -> str | None:
    """A regular file's text, at most MAX_FILE_BYTES; anything else (a FIFO, a device) is refused
    without reading, since reading one can block or never end. A missing or unreadable file is
    reported at `line_for_missing` (the line naming it) when given."""
    where = line_for_missing or (display, 1)
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            diags.add(where[0], where[1], f"{display} is a directory, not a file")
            return None
        if not stat.S_ISREG(st.st_mode):
            diags.add(where[0], where[1], f"{display} is {_file_kind(st.st_mode)}, not a regular file")
            return None
        if st.st_size > MAX_FILE_BYTES:
            diags.add(display, 1, f"the file is {st.st_size} bytes; the most batcher reads is {MAX_FILE_BYTES}")
            return None
        fd = os.open(path, _OPEN_FLAGS)
        with open(fd, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            if not stat.S_ISREG(mode):
                diags.add(where[0], where[1], f"{display} is {_file_kind(mode)}, not a regular file")
                return None
            data = f.read(MAX_FILE_BYTES + 1)  # bounded even if the file grows meanwhile
        if len(data) > MAX_FILE_BYTES:
            diags.add(display, 1, f"the file is larger than {MAX_FILE_BYTES} bytes, the most batcher reads")
            return None
    except FileNotFoundError:
        diags.add(where[0], where[1], f"no such file: {display}")
        return None
    except OSError as e:
        diags.add(where[0], where[1], f"cannot read {display}: {e.strerror or e}")
        return None
    except ValueError:  # a NUL character in the name
        diags.add(where[0], where[1], f"cannot read {short(display)}: the name contains a NUL character")
        return None
    return _decode(data, display, diags)
