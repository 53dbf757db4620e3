"""The job store: one SQLite row per training job, with explicit status transitions.

SQLite in WAL mode with a busy timeout lets several studio processes (and the CLI) share one file:
every write is a short `BEGIN IMMEDIATE` transaction, so two writers queue instead of corrupting it.
The store holds no process handles: after a restart, a new store over the same file sees every job.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engines.errors import DistilleryError

QUEUED, RUNNING, FINISHED, FAILED, CANCELLED, INTERRUPTED = "queued", "running", "finished", "failed", "cancelled", "interrupted"
STATUSES = (QUEUED, RUNNING, FINISHED, FAILED, CANCELLED, INTERRUPTED)
ACTIVE = (QUEUED, RUNNING)
RESUMABLE = (FAILED, CANCELLED, INTERRUPTED)
# Every allowed move. A resume is `<resumable> -> queued`; the runner then starts it (`queued -> running`).
TRANSITIONS: dict[str, tuple[str, ...]] = {
    QUEUED: (RUNNING, CANCELLED, FAILED),
    RUNNING: (FINISHED, FAILED, CANCELLED, INTERRUPTED),
    INTERRUPTED: (QUEUED, RUNNING, FINISHED, FAILED, CANCELLED),  # running again if its process is found alive
    FAILED: (QUEUED,),
    CANCELLED: (QUEUED,),
    FINISHED: (),
}
BUSY_TIMEOUT_S = 30.0


class JobError(DistilleryError):
    """A job request that cannot be done (bad settings, unknown job, illegal transition); the message says why."""


def default_data_dir() -> Path:
    """$DISTILLERY_DATA_DIR, else ~/.distillery: the studio and the CLI share it (jobs.sqlite, runs/, published/)."""
    return Path(os.environ.get("DISTILLERY_DATA_DIR") or Path.home() / ".distillery").expanduser()


@dataclass
class Job:
    id: int
    name: str
    status: str
    config: dict[str, Any]
    run_dir: str
    pid: int | None = None
    slot: str | None = None  # "cpu" or "cuda:<index>": what the running process holds
    stop_requested: bool = False
    created: float = 0.0
    started: float | None = None
    finished: float | None = None
    last_step: int = 0
    last_metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def max_steps(self) -> int:
        return int(self.config.get("max_steps", 0))


SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    config TEXT NOT NULL,
    run_dir TEXT NOT NULL,
    pid INTEGER,
    slot TEXT,
    stop_requested INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    last_step INTEGER NOT NULL DEFAULT 0,
    last_metrics TEXT NOT NULL DEFAULT '{}',
    error TEXT
)
"""


class JobStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._write() as db:
            db.execute(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        # A connection per operation: safe across Gradio's worker threads and across forked processes.
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        db.execute("PRAGMA journal_mode = WAL")
        return db

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One short write transaction; IMMEDIATE takes the write lock up front, so read-check-write is atomic."""
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            db.close()

    @staticmethod
    def _job(row: sqlite3.Row) -> Job:
        data = dict(row)
        data["config"] = json.loads(data["config"])
        data["last_metrics"] = json.loads(data["last_metrics"] or "{}")
        data["stop_requested"] = bool(data["stop_requested"])
        return Job(**data)

    # ------------------------------------------------------------------ reads
    def get(self, job_id: int) -> Job:
        db = self._connect()
        try:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (int(job_id),)).fetchone()
        finally:
            db.close()
        if row is None:
            raise JobError(f"no job {job_id}; `python -m trainer jobs list` shows the jobs")
        return self._job(row)

    def list(self, status: str | tuple[str, ...] | None = None) -> list[Job]:
        wanted = (status,) if isinstance(status, str) else status
        db = self._connect()
        try:
            rows = db.execute("SELECT * FROM jobs ORDER BY id").fetchall()
        finally:
            db.close()
        return [self._job(r) for r in rows if wanted is None or r["status"] in wanted]

    # ------------------------------------------------------------------ writes
    def add(self, name: str, config: dict[str, Any], run_dir: str) -> Job:
        with self._write() as db:
            cur = db.execute(
                "INSERT INTO jobs (name, status, config, run_dir, created) VALUES (?, ?, ?, ?, ?)",
                (name, QUEUED, json.dumps(config), str(run_dir), time.time()),
            )
            job_id = cur.lastrowid
        return self.get(job_id)

    def transition(self, job_id: int, to: str, expect: tuple[str, ...] | None = None, **fields: Any) -> Job:
        """Move a job to status `to` (and set `fields`) atomically; raises JobError if the move is not allowed.

        `expect` narrows the statuses it may come from (e.g. only a running job can be marked interrupted).
        """
        if to not in STATUSES:
            raise JobError(f"unknown status {to!r}; known: {', '.join(STATUSES)}")
        with self._write() as db:
            row = db.execute("SELECT status FROM jobs WHERE id = ?", (int(job_id),)).fetchone()
            if row is None:
                raise JobError(f"no job {job_id}")
            current = row["status"]
            allowed = TRANSITIONS[current] if expect is None or current in expect else ()
            if to not in allowed:
                raise JobError(
                    f"job {job_id} is {current}; it cannot become {to} "
                    f"(from {current} it can become: {', '.join(TRANSITIONS[current]) or 'nothing, it is done'})"
                )
            now = time.time()
            if to == RUNNING:
                fields.setdefault("started", now)
                fields.setdefault("finished", None)
            if to in (FINISHED, FAILED, CANCELLED, INTERRUPTED):
                fields.setdefault("finished", now)
            if to == QUEUED:  # a resume starts clean: no stale pid, error or stop request
                fields = {"pid": None, "slot": None, "error": None, "stop_requested": 0, "finished": None, **fields}
            self._update(db, job_id, {"status": to, **fields})
        return self.get(job_id)

    def claim(self, job_id: int, slot: str) -> Job | None:
        """queued -> running on `slot`, only if the job is still queued and no running job holds the slot.

        Checked and written in one transaction, so two studios polling the same store never start a job
        twice or put two jobs on one device. Returns None when the claim lost.
        """
        with self._write() as db:
            row = db.execute("SELECT status FROM jobs WHERE id = ?", (int(job_id),)).fetchone()
            holder = db.execute("SELECT id FROM jobs WHERE status = ? AND slot = ?", (RUNNING, slot)).fetchone()
            if row is None or row["status"] != QUEUED or holder is not None:
                return None
            self._update(db, job_id, {"status": RUNNING, "slot": slot, "pid": None, "started": time.time(), "finished": None})
        return self.get(job_id)

    def update(self, job_id: int, **fields: Any) -> None:
        """Progress fields (last_step, last_metrics, stop_requested, ...) without a status change."""
        if "status" in fields:
            raise JobError("use transition() to change a job's status")
        with self._write() as db:
            self._update(db, job_id, fields)

    @staticmethod
    def _update(db: sqlite3.Connection, job_id: int, fields: dict[str, Any]) -> None:
        allowed = {"status", "pid", "slot", "stop_requested", "started", "finished", "last_step", "last_metrics", "error", "name"}
        unknown = set(fields) - allowed
        if unknown:
            raise JobError(f"unknown job field(s) {sorted(unknown)}")
        values = {k: json.dumps(v) if k == "last_metrics" else int(v) if k == "stop_requested" else v for k, v in fields.items()}
        if values:
            sets = ", ".join(f"{k} = ?" for k in values)
            db.execute(f"UPDATE jobs SET {sets} WHERE id = ?", (*values.values(), int(job_id)))

    def delete(self, job_id: int) -> Job:
        job = self.get(job_id)
        if job.status in ACTIVE:
            raise JobError(f"job {job_id} is {job.status}; cancel it before deleting it")
        with self._write() as db:
            db.execute("DELETE FROM jobs WHERE id = ? AND status NOT IN (?, ?)", (int(job_id), *ACTIVE))
        return job
