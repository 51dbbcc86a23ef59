"""Failpoints for crash tests: BATCHER_FAILPOINT=NAME[:N] kills this process with SIGKILL the Nth
time the run reaches step NAME (after-intent, after-post, after-accept, after-rendered,
after-publish), like a power cut at that instant."""

from __future__ import annotations

import os
import signal

_FAILPOINT = os.environ.get("BATCHER_FAILPOINT", "")
_hits: dict[str, int] = {}


def failpoint(name: str) -> None:
    """Die here when the environment asks for it (crash tests only)."""
    if not _FAILPOINT:
        return
    wanted, _, nth = _FAILPOINT.partition(":")
    if wanted != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
