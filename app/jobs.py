"""The SQLite job store: the schema and every query of the gateway live here.

One connection per thread (SQLite connections are not shared across threads), WAL mode so
readers never block the writer, and a busy timeout so concurrent writers wait instead of
failing with "database is locked". Claiming a job is one UPDATE ... RETURNING statement,
so two runners can never take the same job.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from typing import Any, Iterator


class JobStatus(str, Enum):
    """The life of a job: queued → processing → complete | failed (cancelled on request)."""

    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETE = "complete"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED = (JobStatus.COMPLETE.value, JobStatus.FAILED.value, JobStatus.CANCELLED.value)

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id           TEXT PRIMARY KEY,
    service      TEXT NOT NULL,
    flavor       TEXT NOT NULL,
    params       TEXT NOT NULL DEFAULT '{}',
    input_text   TEXT NOT NULL,
    input_name   TEXT,
    status       TEXT NOT NULL,
    progress     INTEGER NOT NULL DEFAULT 0,
    message      TEXT NOT NULL DEFAULT '',
    result       TEXT,
    error        TEXT,
    attempts     INTEGER NOT NULL DEFAULT 0,
    checkpoint   TEXT,
    usage        TEXT,
    warnings     TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    created_at   REAL NOT NULL,
    started_at   REAL,
    finished_at  REAL,
    updated_at   REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_status_created ON jobs (status, created_at);
CREATE TABLE IF NOT EXISTS heartbeats (
    name TEXT PRIMARY KEY,
    at   REAL NOT NULL,
    info TEXT NOT NULL DEFAULT '{}'
);
"""


@dataclass(frozen=True)
class Job:
    """One job row, with its JSON columns decoded."""

    id: str
    service: str
    flavor: str
    params: dict[str, Any]
    input_text: str
    input_name: str | None
    status: str
    progress: int
    message: str
    result: str | None
    error: str | None
    attempts: int
    checkpoint: dict[str, Any] | None
    usage: dict[str, Any] | None
    warnings: list[str]
    cancel_requested: bool
    created_at: float
    started_at: float | None
    finished_at: float | None
    updated_at: float

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "Job":
        """Build a Job from a `SELECT *` row."""
        data = dict(row)
        data["params"] = json.loads(data["params"] or "{}")
        data["checkpoint"] = json.loads(data["checkpoint"]) if data["checkpoint"] else None
        data["usage"] = json.loads(data["usage"]) if data["usage"] else None
        data["warnings"] = json.loads(data["warnings"]) if data["warnings"] else []
        data["cancel_requested"] = bool(data["cancel_requested"])
        return cls(**data)


class JobStore:
    """Every read and write of jobs, on one SQLite file."""

    def __init__(self, path: str, busy_timeout_s: float = 30.0):
        self.path = path
        self.busy_timeout_s = busy_timeout_s
        self._local = threading.local()

    # -- connection lifecycle -------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # isolation_level=None: we open transactions ourselves (BEGIN IMMEDIATE) so a
            # writer takes the write lock up front instead of failing half-way.
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None,
                                   check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            self._local.conn = conn
        return conn

    def close(self) -> None:
        """Close this thread's connection."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: committed on success, rolled back on any error."""
        conn = self._connect()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def init_schema(self) -> None:
        """Create the tables if they are missing."""
        with self.transaction() as conn:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)

    def ping(self) -> bool:
        """True when the database answers a query."""
        try:
            self._connect().execute("SELECT 1").fetchone()
            return True
        except sqlite3.Error:
            return False

    # -- writes ---------------------------------------------------------------------
    def create_job(self, *, service: str, flavor: str, input_text: str, params: dict[str, Any] | None = None,
                   input_name: str | None = None, now: float | None = None) -> str:
        """Queue a new job and return its id."""
        now = time.time() if now is None else now
        job_id = str(uuid.uuid4())
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO jobs (id, service, flavor, params, input_text, input_name, status, message,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, service, flavor, json.dumps(params or {}), input_text, input_name,
                 JobStatus.QUEUED.value, "queued", now, now))
        return job_id

    def claim_next(self, now: float | None = None) -> Job | None:
        """Atomically take the oldest queued job and mark it processing, or return None."""
        now = time.time() if now is None else now
        with self.transaction() as conn:
            row = conn.execute(
                "UPDATE jobs SET status = ?, attempts = attempts + 1, message = 'processing',"
                " started_at = COALESCE(started_at, ?), updated_at = ?"
                " WHERE id = (SELECT id FROM jobs WHERE status = ? AND cancel_requested = 0"
                "             ORDER BY created_at, rowid LIMIT 1)"
                " RETURNING *",
                (JobStatus.PROCESSING.value, now, now, JobStatus.QUEUED.value)).fetchone()
        return Job.from_row(row) if row else None

    def save_progress(self, job_id: str, progress: int, checkpoint: dict[str, Any] | None = None,
                      message: str | None = None, now: float | None = None) -> None:
        """Record a running job's progress (never lowered) and its resume point."""
        now = time.time() if now is None else now
        with self.transaction() as conn:
            conn.execute(
                "UPDATE jobs SET progress = MAX(progress, ?), checkpoint = COALESCE(?, checkpoint),"
                " message = COALESCE(?, message), updated_at = ? WHERE id = ? AND status = ?",
                (int(progress), json.dumps(checkpoint) if checkpoint is not None else None, message, now,
                 job_id, JobStatus.PROCESSING.value))

    def set_message(self, job_id: str, message: str, now: float | None = None) -> None:
        """Update a running job's message (e.g. retries)."""
        self.save_progress(job_id, 0, None, message, now)

    def complete(self, job_id: str, result: str, usage: dict[str, Any], warnings: list[str] | None = None,
                 now: float | None = None) -> None:
        """Mark a processing job complete with its summary."""
        now = time.time() if now is None else now
        with self.transaction() as conn:
            conn.execute(
                "UPDATE jobs SET status = ?, progress = 100, result = ?, usage = ?, warnings = ?, error = NULL,"
                " message = 'complete', finished_at = ?, updated_at = ? WHERE id = ? AND status = ?",
                (JobStatus.COMPLETE.value, result, json.dumps(usage), json.dumps(warnings or []), now, now, job_id,
                 JobStatus.PROCESSING.value))

    def fail(self, job_id: str, error: str, usage: dict[str, Any] | None = None, now: float | None = None) -> None:
        """Mark a processing job failed with a message for the user."""
        now = time.time() if now is None else now
        with self.transaction() as conn:
            conn.execute(
                "UPDATE jobs SET status = ?, error = ?, usage = COALESCE(?, usage), message = 'failed',"
                " finished_at = ?, updated_at = ? WHERE id = ? AND status = ?",
                (JobStatus.FAILED.value, error, json.dumps(usage) if usage is not None else None, now, now, job_id,
                 JobStatus.PROCESSING.value))

    def requeue(self, job_id: str, message: str = "queued again", now: float | None = None) -> None:
        """Put a processing job back in the queue; its checkpoint is kept for resuming."""
        now = time.time() if now is None else now
        with self.transaction() as conn:
            conn.execute("UPDATE jobs SET status = ?, message = ?, updated_at = ? WHERE id = ? AND status = ?",
                         (JobStatus.QUEUED.value, message, now, job_id, JobStatus.PROCESSING.value))

    def requeue_processing(self, now: float | None = None) -> int:
        """Re-queue every job left processing (by a runner that died); return how many."""
        now = time.time() if now is None else now
        with self.transaction() as conn:
            cursor = conn.execute(
                "UPDATE jobs SET status = ?, message = 'queued again after a restart', updated_at = ?"
                " WHERE status = ?", (JobStatus.QUEUED.value, now, JobStatus.PROCESSING.value))
            return cursor.rowcount

    def cancel(self, job_id: str, now: float | None = None) -> str | None:
        """Cancel a queued job at once, ask a processing one to stop, delete a finished one.

        Returns what was done: "cancelled", "cancelling", "deleted", or None for an unknown id.
        """
        now = time.time() if now is None else now
        with self.transaction() as conn:
            row = conn.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            if row["status"] == JobStatus.QUEUED.value:
                conn.execute("UPDATE jobs SET status = ?, message = 'cancelled', finished_at = ?, updated_at = ?"
                             " WHERE id = ?", (JobStatus.CANCELLED.value, now, now, job_id))
                return "cancelled"
            if row["status"] == JobStatus.PROCESSING.value:
                conn.execute("UPDATE jobs SET cancel_requested = 1, message = 'cancelling: stops before its next batch',"
                             " updated_at = ? WHERE id = ?", (now, job_id))
                return "cancelling"
            conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            return "deleted"

    def mark_cancelled(self, job_id: str, now: float | None = None) -> None:
        """A processing job stopped on request: it ends cancelled."""
        now = time.time() if now is None else now
        with self.transaction() as conn:
            conn.execute("UPDATE jobs SET status = ?, message = 'cancelled', finished_at = ?, updated_at = ?"
                         " WHERE id = ? AND status = ?",
                         (JobStatus.CANCELLED.value, now, now, job_id, JobStatus.PROCESSING.value))

    def purge_finished(self, older_than_s: float, now: float | None = None) -> int:
        """Delete finished jobs that ended more than `older_than_s` seconds ago; return how many."""
        now = time.time() if now is None else now
        with self.transaction() as conn:
            cursor = conn.execute(f"DELETE FROM jobs WHERE status IN ({','.join('?' * len(FINISHED))})"
                                  " AND finished_at < ?", (*FINISHED, now - older_than_s))
            return cursor.rowcount

    def beat(self, name: str, info: dict[str, Any] | None = None, now: float | None = None) -> None:
        """Record that a background process (e.g. the runner) is alive."""
        now = time.time() if now is None else now
        with self.transaction() as conn:
            conn.execute("INSERT INTO heartbeats (name, at, info) VALUES (?, ?, ?)"
                         " ON CONFLICT(name) DO UPDATE SET at = excluded.at, info = excluded.info",
                         (name, now, json.dumps(info or {})))

    # -- reads ----------------------------------------------------------------------
    def last_beat(self, name: str) -> tuple[float, dict[str, Any]] | None:
        """When a background process last said it was alive, and what it said."""
        row = self._connect().execute("SELECT at, info FROM heartbeats WHERE name = ?", (name,)).fetchone()
        return (row["at"], json.loads(row["info"])) if row else None

    def get(self, job_id: str) -> Job | None:
        """One job, or None."""
        row = self._connect().execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return Job.from_row(row) if row else None

    def get_state(self, job_id: str) -> tuple[str, int, str] | None:
        """A job's (status, progress, message), or None: cheap enough to poll (no input, no result)."""
        row = self._connect().execute("SELECT status, progress, message FROM jobs WHERE id = ?",
                                      (job_id,)).fetchone()
        return (row["status"], row["progress"], row["message"]) if row else None

    def cancel_requested(self, job_id: str) -> bool:
        """Whether someone asked to cancel this job."""
        row = self._connect().execute("SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return bool(row and row["cancel_requested"])

    def list_jobs(self, status: str | None = None, service: str | None = None, limit: int = 50,
                  offset: int = 0) -> tuple[list[Job], int]:
        """Jobs newest first, filtered by status and service; and how many match in all."""
        where, args = [], []
        if status:
            where.append("status = ?")
            args.append(status)
        if service:
            where.append("service = ?")
            args.append(service)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        conn = self._connect()
        total = conn.execute(f"SELECT COUNT(*) FROM jobs{clause}", args).fetchone()[0]
        # The input text can be megabytes; a listing does not need it.
        rows = conn.execute(f"SELECT *, '' AS input_text FROM jobs{clause} ORDER BY created_at DESC, rowid DESC LIMIT ? OFFSET ?",
                            (*args, limit, offset)).fetchall()
        return [Job.from_row(row) for row in rows], total

    def count_by_status(self) -> dict[str, int]:
        """How many jobs are in each status."""
        rows = self._connect().execute("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status").fetchall()
        return {row["status"]: row["n"] for row in rows}
