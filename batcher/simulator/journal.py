"""The simulator's journal: what it charged and handed out, kept between runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..client.answers import REDACTED, SIGNED_QUERY, redact_json
from .config import SimJob
from .server import Simulator

# --- state kept between runs -----------------------------------------------------------------------

JOURNAL_VERSION = 1


class Journal:
    """What the simulator charged and handed out, appended as it happens (one JSON line each), so a
    simulated run that is interrupted in any way, Ctrl-C or kill -9, resumes as it would against
    the real API, which remembers its jobs. Times are wall-clock epochs: monotonic clocks do not
    survive the process. Uploads are files in a folder beside it (`uploads_folder`), each written
    whole (a temporary file renamed)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: Any = None

    @property
    def uploads_folder(self) -> Path:
        """`<journal>.uploads/`: the uploads' bytes, one file each."""
        return self.path.with_name(self.path.name + ".uploads")

    def replay(self, sim: Simulator) -> int:
        """Load what earlier runs recorded into `sim`; returns the jobs restored. Uploads are read
        from the uploads folder when asked for."""
        sim.uploads.folder = self.uploads_folder
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except OSError:
            return 0
        offset = sim.wall() - sim.clock()
        for line in lines:
            try:
                entry = json.loads(line)
                if "job" in entry:
                    j = entry["job"]
                    sim.jobs[j["job_id"]] = SimJob(j["job_id"], j["model"], j["body"], float(j["cost"]),
                                                   float(j["submitted"]) - offset, float(j["ends"]) - offset,
                                                   bool(j["fails"]), False, bool(j["answer_lost"]),
                                                   webhook_url=j.get("webhook_url"), base=str(j.get("base", "")))
                elif "file" in entry:
                    token, job_id, expires = entry["file"]
                    sim.files[str(token)] = (str(job_id), float(expires))
            except (ValueError, KeyError, TypeError, IndexError):
                continue  # a line cut short by a kill: the rest still counts
        sim.credits = sim.config.credits - sum(j.cost for j in sim.jobs.values())
        now = sim.clock()
        sim._ends = sorted(j.ends for j in sim.jobs.values() if j.ends > now)
        sim._refund_queue = sorted((j.ends, j.job_id) for j in sim.jobs.values() if j.fails)
        sim._tick()  # refunds of failures that ended meanwhile
        for job in sim.jobs.values():
            if job.ends > now:  # still rendering: its webhook is still to come (ended ones: missed)
                sim._schedule_webhook(job)
        return len(sim.jobs)

    def job(self, job: SimJob, offset: float) -> None:
        # A presigned reference URL is a capability (and names an access key): never on disk.
        body = redact_json(job.body, lambda text: SIGNED_QUERY.sub(REDACTED, text))
        self._write({"job": {"job_id": job.job_id, "model": job.model, "body": body, "cost": job.cost,
                             "submitted": job.submitted + offset, "ends": job.ends + offset, "fails": job.fails,
                             "answer_lost": job.answer_lost, "webhook_url": job.webhook_url, "base": job.base}})

    def file(self, token: str, job_id: str, expires: float) -> None:
        self._write({"file": [token, job_id, expires]})

    def _write(self, entry: dict[str, Any]) -> None:
        if self._file is None:
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the run
        self._file.write(json.dumps(entry) + "\n")
        self._file.flush()  # in the OS's hands: survives a kill of this process

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


