"""Failpoints for crash tests: BATCHER_FAILPOINT=NAME[:N] kills this process with SIGKILL the Nth
time the run reaches step NAME (after-intent, after-post, after-accept, after-rendered,
after-publish, mid-upload: a clip's first bytes written into the output store's open upload,
after-upload), like a power cut at that instant; BATCHER_FAILPOINT_PAUSE=NAME:SECONDS stalls the
process there every time, so a fault from outside (the chaos tool's ledger outage) can land in the
window between two steps."""

from __future__ import annotations

import os
import signal
import time

_FAILPOINT = os.environ.get("BATCHER_FAILPOINT", "")
_PAUSE = os.environ.get("BATCHER_FAILPOINT_PAUSE", "")
_hits: dict[str, int] = {}


def failpoint(name: str) -> None:
    """Die (or stall) here when the environment asks for it (crash tests only)."""
    if _PAUSE and _PAUSE.partition(":")[0] == name:
        time.sleep(float(_PAUSE.partition(":")[2]))  # the whole process stalls, as a paused VM would
    if not _FAILPOINT:
        return
    wanted, _, nth = _FAILPOINT.partition(":")
    if wanted != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


if "mid-upload" in (_FAILPOINT + _PAUSE):
    # The upload is the storage layer's, upstream of the run: it calls this hook mid-way.
    from ..storage.s3 import Upload
    Upload.under_way = staticmethod(lambda: failpoint("mid-upload"))
