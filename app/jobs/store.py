"""The job store: every write of the gateway's jobs, atomic claims and leases (reads: app/jobs/reads.py).

Claiming a job is one `UPDATE … WHERE id = (SELECT … FOR UPDATE SKIP LOCKED) RETURNING`
statement (SQLite's single writer makes the same statement atomic without the lock clause),
so two runners or workers never take the same job. A claim gives the job an `owner` token
and a lease: whoever runs it renews `updated_at`, and a job left `processing` by a worker
that died can be claimed again once its lease has run out; the late writes of a worker that
lost its job are refused (every write made for an owner checks it still owns the job).

The same tables and statements run on SQLite (a path, the default) and PostgreSQL
(`RESULT_DB_URL`); the tables are in app/jobs/schema.py, the connections in app/jobs/database.py.
"""
from __future__ import annotations

import json
import os
import socket
import time
import uuid
from typing import Any, Iterable, Mapping

from sqlalchemy import and_, case, delete, func, insert, literal_column, or_, select, update
from sqlalchemy.engine import Connection

from app.jobs.model import FINISHED_STATUSES, Job, JobStatus
from app.jobs.reads import JobReads
from app.jobs.schema import PARTS, upgrade


def new_owner() -> str:
    """A claim token that also says which process holds the job: host:pid:random."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _json_or_none(value: Any) -> str | None:
    # default=str: a YAML manifest may hold values JSON has no type for (dates).
    return json.dumps(value, default=str) if value is not None else None


class JobStore(JobReads):
    """Every read and write of jobs, on SQLite (a path) or PostgreSQL (a postgresql:// URL)."""

    def __init__(self, path: str, busy_timeout_s: float = 30.0):
        super().__init__(path, busy_timeout_s)
        self._next = self.jobs.alias("nxt")      # the claim's subquery (built once: aliases are costly)

    def init_schema(self) -> None:
        """Create the tables if they are missing, and add the columns a newer version needs."""
        with self.transaction() as conn:
            upgrade(conn, self.schema)

    # -- writes ---------------------------------------------------------------------
    def create_job(self, *, service: str, flavor: str, input_text: str, params: dict[str, Any] | None = None,
                   input_name: str | None = None, now: float | None = None,
                   manifest: dict[str, Any] | None = None) -> str:
        """Queue a new job and return its id (with the manifest it was accepted with)."""
        now = time.time() if now is None else now
        job_id = str(uuid.uuid4())
        with self.transaction() as conn:
            conn.execute(insert(self.jobs).values(
                id=job_id, service=service, flavor=flavor, params=json.dumps(params or {}), input_text="",
                input_name=input_name, status=JobStatus.QUEUED, message="queued", created_at=now, updated_at=now,
                manifest=_json_or_none(manifest)))
            conn.execute(insert(self.inputs).values(id=job_id, input_text=input_text))
        return job_id

    def delete(self, job_id: str) -> bool:
        """Remove a job whatever its state (e.g. one that could not be handed to the queue)."""
        with self.transaction() as conn:
            return self._delete_jobs(conn, self.jobs.c.id == job_id) > 0

    def _delete_jobs(self, conn: Connection, where) -> int:
        """Delete the jobs matching `where`, with their inputs and checkpoint parts; return how many."""
        ids = select(self.jobs.c.id).where(where)
        conn.execute(delete(self.parts).where(self.parts.c.job_id.in_(ids)))
        conn.execute(delete(self.inputs).where(self.inputs.c.id.in_(ids)))
        return conn.execute(delete(self.jobs).where(where)).rowcount

    def _claim_values(self, now: float, owner: str | None) -> dict[str, Any]:
        j = self.jobs
        return {"status": JobStatus.PROCESSING, "attempts": j.c.attempts + 1, "message": "processing",
                "started_at": func.coalesce(j.c.started_at, now), "updated_at": now, "owner": owner or new_owner()}

    def claim_next(self, now: float | None = None, lease_s: float | None = None, owner: str | None = None) -> Job | None:
        """Atomically take the oldest claimable job and mark it processing, or return None.

        Claimable: queued; or, when `lease_s` is given, processing with no sign of life from
        its holder for `lease_s` seconds (it died).
        """
        now = time.time() if now is None else now
        nxt = self._next
        claimable = nxt.c.status == JobStatus.QUEUED
        if lease_s is not None:
            claimable = or_(claimable, and_(nxt.c.status == JobStatus.PROCESSING, nxt.c.updated_at < now - lease_s))
        order = literal_column("nxt.rowid") if self.is_sqlite else nxt.c.seq
        oldest = (select(nxt.c.id).where(claimable, nxt.c.cancel_requested == 0)
                  .order_by(nxt.c.created_at, order).limit(1)
                  .with_for_update(skip_locked=True).scalar_subquery())
        with self.transaction() as conn:
            row = conn.execute(update(self.jobs).where(self.jobs.c.id == oldest)
                               .values(**self._claim_values(now, owner)).returning(*self._job_columns)).first()
            return self._full_job(conn, row) if row else None

    def claim(self, job_id: str, lease_s: float, now: float | None = None, owner: str | None = None) -> Job | None:
        """Atomically take one job by id: if queued, or processing with a lease run out; else None."""
        now = time.time() if now is None else now
        j = self.jobs
        with self.transaction() as conn:
            lapsed = and_(j.c.status == JobStatus.PROCESSING, j.c.updated_at < now - lease_s)
            row = conn.execute(update(j).where(
                j.c.id == job_id, j.c.cancel_requested == 0, or_(j.c.status == JobStatus.QUEUED, lapsed))
                .values(**self._claim_values(now, owner)).returning(*self._job_columns)).first()
            return self._full_job(conn, row) if row else None

    def _mine(self, job_id: str, owner: str | None):
        """The WHERE clause of a write by a job's holder: still processing, and still its own."""
        j = self.jobs
        clause = and_(j.c.id == job_id, j.c.status == JobStatus.PROCESSING)
        return and_(clause, j.c.owner == owner) if owner is not None else clause

    def renew(self, job_ids: Mapping[str, str | None] | Iterable[str], now: float | None = None) -> int:
        """Renew the lease of running jobs (job id → owner); return how many are still held."""
        now = time.time() if now is None else now
        owners = job_ids if isinstance(job_ids, Mapping) else {job_id: None for job_id in job_ids}
        held = 0
        with self.transaction() as conn:
            for job_id, owner in owners.items():
                held += conn.execute(update(self.jobs).where(self._mine(job_id, owner))
                                     .values(updated_at=now)).rowcount
        return held

    def save_progress(self, job_id: str, progress: int, checkpoint: dict[str, Any] | None = None,
                      message: str | None = None, now: float | None = None, owner: str | None = None, *,
                      grows: str | None = None, kept: int = 0) -> bool:
        """Record a running job's progress (never lowered) and its resume point; False if not held.

        With `grows`, the checkpoint's key of that name (a list, or a dict in insertion order)
        holds everything so far, of which the store already has the first `kept` items (from
        the previous checkpoint): only the rest is written, as one part. Without it, or with
        kept=0, the checkpoint replaces the stored one whole.
        """
        now = time.time() if now is None else now
        j = self.jobs
        progress = int(progress)
        values: dict[str, Any] = {"progress": case((j.c.progress < progress, progress), else_=j.c.progress),
                                  "updated_at": now}
        items: list | None = None          # the growing key's items, when there is one
        is_dict = False
        if checkpoint is not None:
            head = dict(checkpoint)
            if grows is not None and grows in head:
                value = head.pop(grows)
                is_dict = isinstance(value, dict)
                items = list(value.items()) if is_dict else value
                kept = max(0, min(int(kept), len(items)))
                head[PARTS] = {"key": grows, "dict": is_dict}
            values["checkpoint"] = json.dumps(head)
        if message is not None:
            values["message"] = message
        with self.transaction() as conn:
            # The job row first: a writer that lost the job gets rowcount 0 and writes no part.
            held = conn.execute(update(j).where(self._mine(job_id, owner)).values(**values)).rowcount > 0
            if held and checkpoint is not None:
                self._write_parts(conn, job_id, items, is_dict, kept if items is not None else 0)
            return held

    def _write_parts(self, conn: Connection, job_id: str, items: list | None, is_dict: bool, kept: int) -> None:
        """Keep the job's parts holding its first `kept` items, drop the rest, append items[kept:]."""
        p = self.parts
        if kept:
            # Trust, but check that the parts end at `kept`: a checkpoint stored whole (by an
            # older version, or without `grows`) has no parts, and appending to it would leave
            # a hole. Then it is written whole once more.
            last = conn.execute(select(p.c.seq, p.c.data).where(p.c.job_id == job_id, p.c.seq < kept)
                                .order_by(p.c.seq.desc()).limit(1)).first()
            if last is None or last.seq + len(json.loads(last.data)) != kept:
                kept = 0
        # Parts past what is kept belong to an older checkpoint (one that went further on
        # another plan, or a write whose commit was not seen): this one replaces them.
        conn.execute(delete(p).where(p.c.job_id == job_id, p.c.seq >= kept))
        added = items[kept:] if items else []
        if added:
            data = json.dumps(dict(added) if is_dict else added)
            conn.execute(insert(p).values(job_id=job_id, seq=kept, data=data))

    def set_message(self, job_id: str, message: str, now: float | None = None, owner: str | None = None) -> bool:
        """Update a running job's message (e.g. retries)."""
        return self.save_progress(job_id, 0, None, message, now, owner)

    def complete(self, job_id: str, result: str, usage: dict[str, Any], warnings: list[str] | None = None,
                 now: float | None = None, owner: str | None = None, checks: dict[str, int] | None = None) -> bool:
        """Mark a processing job complete with its summary (and the answer checks' counts); False if
        it was not (or no longer) held."""
        now = time.time() if now is None else now
        with self.transaction() as conn:
            return conn.execute(update(self.jobs).where(self._mine(job_id, owner)).values(
                status=JobStatus.COMPLETE, progress=100, result=result, usage=json.dumps(usage),
                checks=_json_or_none(checks),
                warnings=json.dumps(warnings or []), error=None, message="complete", finished_at=now,
                updated_at=now)).rowcount > 0

    def fail(self, job_id: str, error: str, usage: dict[str, Any] | None = None, now: float | None = None,
             owner: str | None = None) -> bool:
        """Mark a processing job failed with a message for the user."""
        now = time.time() if now is None else now
        j = self.jobs
        with self.transaction() as conn:
            return conn.execute(update(j).where(self._mine(job_id, owner)).values(
                status=JobStatus.FAILED, error=error, message="failed", finished_at=now, updated_at=now,
                usage=func.coalesce(_json_or_none(usage), j.c.usage))).rowcount > 0

    def requeue(self, job_id: str, message: str = "queued again", now: float | None = None,
                owner: str | None = None) -> bool:
        """Put a processing job back in the queue; its checkpoint is kept for resuming."""
        now = time.time() if now is None else now
        with self.transaction() as conn:
            return conn.execute(update(self.jobs).where(self._mine(job_id, owner)).values(
                status=JobStatus.QUEUED, message=message, updated_at=now, owner=None)).rowcount > 0

    def requeue_processing(self, now: float | None = None) -> int:
        """Re-queue every job left processing (by a runner that died); return how many."""
        now = time.time() if now is None else now
        j = self.jobs
        with self.transaction() as conn:
            # A job whose cancel was asked for ends cancelled: queued, it would never be claimed again.
            conn.execute(update(j).where(j.c.status == JobStatus.PROCESSING, j.c.cancel_requested != 0).values(
                status=JobStatus.CANCELLED, message="cancelled", finished_at=now, updated_at=now, owner=None))
            return conn.execute(update(j).where(j.c.status == JobStatus.PROCESSING).values(
                status=JobStatus.QUEUED, message="queued again after a restart", updated_at=now, owner=None)).rowcount

    def take_stalled(self, quiet_s: float, lease_s: float, now: float | None = None) -> list[str]:
        """Jobs whose broker message may be lost, taken to be published again; returns their ids.

        Queued jobs untouched for `quiet_s`, and processing jobs whose lease ran out `quiet_s`
        ago (put back in the queue, checkpoint kept). One UPDATE ... RETURNING each, which also
        stamps `updated_at`: among several workers exactly one gets each id, and a job comes
        back at most once every `quiet_s`. A kill -9 between the broker handing a message out
        and the worker recording it loses that message; the job stays in the store."""
        now = time.time() if now is None else now
        j = self.jobs
        with self.transaction() as conn:
            queued = conn.execute(update(j).where(j.c.status == JobStatus.QUEUED, j.c.cancel_requested == 0,
                                                  j.c.updated_at < now - quiet_s)
                                  .values(updated_at=now).returning(j.c.id)).scalars().all()
            stale = and_(j.c.status == JobStatus.PROCESSING, j.c.updated_at < now - lease_s - quiet_s)
            conn.execute(update(j).where(stale, j.c.cancel_requested != 0).values(
                status=JobStatus.CANCELLED, message="cancelled", finished_at=now, updated_at=now, owner=None))
            orphans = conn.execute(update(j).where(stale)
                                   .values(status=JobStatus.QUEUED, owner=None, updated_at=now,
                                           message="its worker stopped answering; queued again")
                                   .returning(j.c.id)).scalars().all()
        return [*queued, *orphans]

    def cancel(self, job_id: str, now: float | None = None) -> str | None:
        """Cancel a queued job at once, ask a processing one to stop, delete a finished one.

        Returns what was done: "cancelled", "cancelling", "deleted", or None for an unknown id.
        """
        now = time.time() if now is None else now
        j = self.jobs
        with self.transaction() as conn:
            # FOR UPDATE: on PostgreSQL the row stays as read until this transaction ends.
            status = conn.execute(select(j.c.status).where(j.c.id == job_id).with_for_update()).scalar()
            if status is None:
                return None
            if status == JobStatus.QUEUED:
                conn.execute(update(j).where(j.c.id == job_id).values(
                    status=JobStatus.CANCELLED, message="cancelled", finished_at=now, updated_at=now))
                return "cancelled"
            if status == JobStatus.PROCESSING:
                # updated_at is the holder's lease: asking to stop does not renew it.
                conn.execute(update(j).where(j.c.id == job_id).values(
                    cancel_requested=1, message="cancelling: stops before its next batch"))
                return "cancelling"
            self._delete_jobs(conn, j.c.id == job_id)
            return "deleted"

    def mark_cancelled(self, job_id: str, now: float | None = None, owner: str | None = None) -> bool:
        """A processing job stopped on request: it ends cancelled."""
        now = time.time() if now is None else now
        with self.transaction() as conn:
            return conn.execute(update(self.jobs).where(self._mine(job_id, owner)).values(
                status=JobStatus.CANCELLED, message="cancelled", finished_at=now,
                updated_at=now)).rowcount > 0

    def purge_finished(self, older_than_s: float, now: float | None = None) -> int:
        """Delete finished jobs that ended more than `older_than_s` seconds ago; return how many."""
        now = time.time() if now is None else now
        j = self.jobs
        with self.transaction() as conn:
            ended = j.c.status.in_(sorted(FINISHED_STATUSES))
            return self._delete_jobs(conn, and_(ended, j.c.finished_at < now - older_than_s))

    def beat(self, name: str, info: dict[str, Any] | None = None, now: float | None = None) -> None:
        """Record that a background process (e.g. the runner) is alive."""
        now = time.time() if now is None else now
        if self.is_sqlite:
            from sqlalchemy.dialects.sqlite import insert as upsert
        else:
            from sqlalchemy.dialects.postgresql import insert as upsert
        statement = upsert(self.heartbeats).values(name=name, at=now, info=json.dumps(info or {}))
        statement = statement.on_conflict_do_update(index_elements=["name"],
                                                    set_={"at": statement.excluded.at, "info": statement.excluded.info})
        with self.transaction() as conn:
            conn.execute(statement)


def open_store(settings: Any) -> JobStore:
    """The store the settings name: RESULT_DB_URL if set, else the SQLite file at --db_path."""
    return JobStore(settings.result_db_url or settings.db_path)
