"""Real ledger outages for tests and the chaos tool: another process holds SQLite's write lock, or
another PostgreSQL session holds the batch row and the runner's waiting connections are terminated.

    outage = ledger_outage(ledger_url)
    outage.start(seconds=5)      # returns once the ledger is unavailable; ends by itself
    outage.wait()                # until it has ended
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time

from batcher.ledger import is_database_url

_HOLD_SQLITE = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=60)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("ROLLBACK")
"""


class SqliteOutage:
    """Another process holds the ledger's write lock for a while (as a stuck `sqlite3` shell would)."""

    def __init__(self, path: str):
        self.path = path
        self.proc: subprocess.Popen[str] | None = None
        self.count = 0

    def start(self, seconds: float) -> None:
        self.wait()
        self.proc = subprocess.Popen([sys.executable, "-c", _HOLD_SQLITE, self.path, str(seconds)],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.strip() == "locked", line
        self.count += 1

    def active(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait(self) -> None:
        if self.proc is not None:
            self.proc.wait()
            self.proc = None


class PostgresOutage:
    """Another session holds the ledger's tables against writes and terminates every session that
    waits behind it meanwhile, as a failover or an administrator would: the runner's write fails
    with its connection terminated, again and again until the outage ends."""

    def __init__(self, url: str):
        self.url = url.replace("postgresql+psycopg://", "postgresql://")
        self.thread: threading.Thread | None = None
        self.count = 0

    def start(self, seconds: float) -> None:
        import psycopg
        self.wait()
        holder = psycopg.connect(self.url)
        # Writes wait (reads go on), as behind a long migration or a stuck session.
        holder.execute("LOCK TABLE batch, job, attempt, event, runner IN EXCLUSIVE MODE")
        self.count += 1

        def hold() -> None:
            killer = psycopg.connect(self.url, autocommit=True)
            try:
                ends = time.monotonic() + seconds
                while time.monotonic() < ends:
                    killer.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
                                   "current_database() AND %s = ANY(pg_blocking_pids(pid))",
                                   (holder.info.backend_pid,))
                    time.sleep(0.05)
            finally:
                holder.rollback()
                holder.close()
                killer.close()
        self.thread = threading.Thread(target=hold, daemon=True)
        self.thread.start()

    def active(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def wait(self) -> None:
        if self.thread is not None:
            self.thread.join()
            self.thread = None


def ledger_outage(location: str) -> SqliteOutage | PostgresOutage:
    return PostgresOutage(location) if is_database_url(location) else SqliteOutage(location)
