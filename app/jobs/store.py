"""The job store: the schema and every query of the gateway live here (SQLAlchemy Core, two dialects).

By default the store is one SQLite file (`--db_path`): WAL mode so readers never block the
writer, a busy timeout so concurrent writers wait instead of failing with "database is
locked", and every write transaction opened with BEGIN IMMEDIATE so a writer takes the write
lock up front instead of failing half-way. With `RESULT_DB_URL=postgresql://…` the same
tables and the same statements run on PostgreSQL, shared by every API node and worker.

Claiming a job is one `UPDATE … WHERE id = (SELECT … FOR UPDATE SKIP LOCKED) RETURNING`
statement (SQLite's single writer makes the same statement atomic without the lock clause),
so two runners or workers never take the same job. A claim gives the job an `owner` token
and a lease: whoever runs it renews `updated_at`, and a job left `processing` by a worker
that died can be claimed again once its lease has run out; the late writes of a worker that
lost its job are refused (every write made for an owner checks it still owns the job).

What a running job writes is kept apart from what it never changes, because SQLite (and
PostgreSQL's MVCC) rewrite a whole row on UPDATE: the upload lives in `job_inputs`, written
once, and a checkpoint's growing part (the summary lines so far, the finished batches) lives
in `job_parts`, one row per checkpoint holding only what that checkpoint added. The `jobs` row,
updated at every batch, holds the small rest (progress, message, the checkpoint's counters).
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from typing import Any, Iterable, Iterator, Mapping

from sqlalchemy import (BigInteger, bindparam, Column, Float, Identity, Index, Integer, MetaData, Table, Text, and_, case,
                        create_engine, delete, event, func, inspect, insert, literal_column, or_, select, text,
                        update)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import QueuePool


class JobStatus(str, Enum):
    """The life of a job: queued → processing → complete | failed (cancelled on request)."""

    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETE = "complete"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED = (JobStatus.COMPLETE.value, JobStatus.FAILED.value, JobStatus.CANCELLED.value)
QUEUED, PROCESSING = JobStatus.QUEUED.value, JobStatus.PROCESSING.value

# Columns added after the first release: an existing database gets them at init_schema().
ADDED_COLUMNS = ("manifest", "template", "owner")
# The key of a stored checkpoint head saying which of its keys lives in job_parts, and whether
# that key is a list (parts concatenated) or a dict (parts merged, in insertion order).
PARTS = "_parts"
# Columns a view of a job (GET /results, listings) never shows and that can be large: the
# upload (megabytes), the checkpoint (the summary so far), the manifest and template snapshot.
# Views read them as empty, so a poll reads a few hundred bytes, not the whole row.
NOT_VIEWED = {"input_text": "''", "checkpoint": "NULL", "manifest": "NULL", "template": "NULL"}


def _tables(dialect: str) -> tuple[MetaData, Table, Table, Table, Table]:
    """The schema, identical on both dialects but for the insertion-order column.

    SQLite orders ties of `created_at` by its implicit `rowid`; PostgreSQL has no rowid, so
    its table has an identity column `seq` for the same purpose.
    """
    metadata = MetaData()
    columns = [
        Column("id", Text, primary_key=True),
        Column("service", Text, nullable=False),
        Column("flavor", Text, nullable=False),
        Column("params", Text, nullable=False, server_default=text("'{}'")),
        Column("input_text", Text, nullable=False),   # '' since job_inputs; older jobs' uploads stay here
        Column("input_name", Text),
        Column("status", Text, nullable=False),
        Column("progress", Integer, nullable=False, server_default=text("0")),
        Column("message", Text, nullable=False, server_default=text("''")),
        Column("result", Text),
        Column("error", Text),
        Column("attempts", Integer, nullable=False, server_default=text("0")),
        Column("checkpoint", Text),
        Column("usage", Text),
        Column("warnings", Text),
        Column("cancel_requested", Integer, nullable=False, server_default=text("0")),
        Column("created_at", Float, nullable=False),
        Column("started_at", Float),
        Column("finished_at", Float),
        Column("updated_at", Float, nullable=False),
        Column("manifest", Text),      # the service's manifest (JSON) when the job was accepted
        Column("template", Text),      # its prompt template then
        Column("owner", Text),         # who holds the job while processing: "host:pid:token"
    ]
    if dialect != "sqlite":
        columns.append(Column("seq", BigInteger, Identity(), nullable=False))
    jobs = Table("jobs", metadata, *columns)
    Index("jobs_status_created", jobs.c.status, jobs.c.created_at)
    # The websocket reads the jobs that changed in the last seconds (`changed_since`).
    Index("jobs_updated", jobs.c.updated_at)
    heartbeats = Table("heartbeats", metadata,
                       Column("name", Text, primary_key=True),
                       Column("at", Float, nullable=False),
                       Column("info", Text, nullable=False, server_default=text("'{}'")))
    # The upload, written once at create_job: never in the row every progress write rewrites.
    inputs = Table("job_inputs", metadata,
                   Column("id", Text, primary_key=True),
                   Column("input_text", Text, nullable=False))
    # A checkpoint's growing part, appended: `seq` is how many items the parts before it hold,
    # so the parts of a job read in seq order rebuild it, and "keep the first k" is seq < k.
    # WITHOUT ROWID on SQLite: the parts are stored in their key's order, in one b-tree.
    parts = Table("job_parts", metadata,
                  Column("job_id", Text, primary_key=True),
                  Column("seq", Integer, primary_key=True, autoincrement=False),
                  Column("data", Text, nullable=False),
                  sqlite_with_rowid=False)
    return metadata, jobs, heartbeats, inputs, parts


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
    manifest: dict[str, Any] | None = None
    template: str | None = None
    owner: str | None = None

    @classmethod
    def from_row(cls, row: Any) -> "Job":
        """Build a Job from a row of the jobs table (a SQLAlchemy Row or any mapping)."""
        data = dict(row._mapping) if hasattr(row, "_mapping") else dict(row)
        data.pop("seq", None)
        data["params"] = json.loads(data["params"] or "{}")
        if isinstance(data["checkpoint"], str):      # else already decoded (JobStore._full_job)
            data["checkpoint"] = json.loads(data["checkpoint"]) if data["checkpoint"] else None
        data["usage"] = json.loads(data["usage"]) if data["usage"] else None
        data["warnings"] = json.loads(data["warnings"]) if data["warnings"] else []
        data["cancel_requested"] = bool(data["cancel_requested"])
        data["manifest"] = json.loads(data["manifest"]) if data.get("manifest") else None
        return cls(**data)


def database_url(location: str) -> str:
    """A SQLAlchemy URL for a SQLite path or a database URL (postgresql:// uses psycopg 3)."""
    if "://" not in location:
        return f"sqlite:///{location}"
    for prefix in ("postgresql://", "postgres://"):
        if location.startswith(prefix):
            return "postgresql+psycopg://" + location[len(prefix):]
    return location


def redacted(location: str) -> str:
    """The location with any password masked (for logs and /health)."""
    if "://" not in location:
        return location
    try:
        return make_url(location).render_as_string(hide_password=True)
    except Exception:
        return "***"


def _fetch_by_id(connection, sql: str, positions: tuple[str, ...] | None, job_id: str) -> dict[str, Any] | None:
    """One row of a compiled single-statement read (its one parameter is the job id), on a DBAPI connection."""
    cursor = connection.cursor()
    try:
        params = {"job_id": job_id}
        cursor.execute(sql, params if positions is None else tuple(params[name] for name in positions))
        row = cursor.fetchone()
        return dict(zip((d[0] for d in cursor.description), row)) if row is not None else None
    finally:
        cursor.close()


def new_owner() -> str:
    """A claim token that also says which process holds the job: host:pid:random."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _json_or_none(value: Any) -> str | None:
    # default=str: a YAML manifest may hold values JSON has no type for (dates).
    return json.dumps(value, default=str) if value is not None else None


class JobStore:
    """Every read and write of jobs, on SQLite (a path) or PostgreSQL (a postgresql:// URL)."""

    def __init__(self, path: str, busy_timeout_s: float = 30.0):
        self.path = path                         # the SQLite path, or the database URL
        self.url = database_url(path)
        self.busy_timeout_s = busy_timeout_s
        self.dialect = make_url(self.url).get_backend_name()
        self.metadata, self.jobs, self.heartbeats, self.inputs, self.parts = _tables(self.dialect)
        self._job_columns = [c for c in self.jobs.c if c.name != "seq"]
        # Ties of created_at are ordered by insertion: rowid on SQLite, seq elsewhere.
        self._insertion = literal_column("rowid") if self.is_sqlite else self.jobs.c.seq
        self._next = self.jobs.alias("nxt")      # the claim's subquery (built once: aliases are costly)
        # The hot reads, built once (pollers call them every half second).
        j = self.jobs
        self._select_job = select(*self._job_columns).where(j.c.id == bindparam("job_id"))
        self._view_columns = [literal_column(NOT_VIEWED[c.name]).label(c.name) if c.name in NOT_VIEWED else c
                              for c in self._job_columns]
        self._select_view = select(*self._view_columns).where(j.c.id == bindparam("job_id"))
        self._select_state = select(j.c.status, j.c.progress, j.c.message).where(j.c.id == bindparam("job_id"))
        self._select_cancel = select(j.c.cancel_requested).where(j.c.id == bindparam("job_id"))
        self._select_holder = select(j.c.status, j.c.owner).where(j.c.id == bindparam("job_id"))
        self._compiled: dict[int, tuple[str, tuple[str, ...] | None]] = {}
        self._readers = _os_thread_local()     # SQLite: each thread's read connection (_read_sqlite)
        self._reader_list: list[tuple[int, Any]] = []   # (pid, connection) of every thread, for close()
        self._engine: Engine | None = None
        self._pid = 0
        self._lock = threading.Lock()

    @property
    def is_sqlite(self) -> bool:
        """True for the embedded default (one machine)."""
        return self.dialect == "sqlite"

    @property
    def shared(self) -> bool:
        """True when several machines may use this store at once (anything but SQLite)."""
        return not self.is_sqlite

    def describe(self) -> str:
        """Where the jobs are, password masked."""
        return f"sqlite:{self.path}" if self.is_sqlite else redacted(self.path)

    # -- connection lifecycle -------------------------------------------------------
    def _get_engine(self) -> Engine:
        # One engine (connection pool) per process: after a fork the child builds its own and
        # leaves the parent's connections alone (closing them would break the parent's).
        if self._engine is None or self._pid != os.getpid():
            with self._lock:
                if self._engine is None or self._pid != os.getpid():
                    if self._engine is not None:
                        self._engine.dispose(close=False)
                    self._engine = self._make_engine()
                    self._pid = os.getpid()
        return self._engine

    def _make_engine(self) -> Engine:
        if not self.is_sqlite:
            return create_engine(self.url, pool_size=4, max_overflow=16, pool_pre_ping=True, pool_recycle=1800)
        engine = create_engine(self.url, poolclass=QueuePool, pool_size=8, max_overflow=-1,
                               connect_args={"timeout": self.busy_timeout_s, "check_same_thread": False})
        busy_ms = int(self.busy_timeout_s * 1000)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn, _record):
            # pysqlite's own transaction handling off: we open transactions ourselves below.
            dbapi_conn.isolation_level = None
            cursor = dbapi_conn.cursor()
            cursor.execute(f"PRAGMA busy_timeout = {busy_ms}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn):
            # A writer takes the write lock up front (waiting up to the busy timeout) instead of
            # failing half-way with "database is locked"; a reader takes a plain snapshot.
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("write") else "BEGIN")

        return engine

    def close(self) -> None:
        """Close this process's connections."""
        with self._lock:
            readers, self._reader_list = self._reader_list, []
            self._readers = _os_thread_local()
        for pid, reader in readers:
            if pid == os.getpid():          # a forked child leaves its parent's connections alone
                reader.close()              # back to the pool, which dispose() then closes
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A write transaction: committed on success, rolled back on any error."""
        with self._get_engine().connect() as conn:
            conn = conn.execution_options(write=True)
            with conn.begin():
                yield conn

    @contextmanager
    def _reading(self, snapshot: bool = False) -> Iterator[Connection]:
        with self._get_engine().connect() as conn:
            if snapshot and not self.is_sqlite:
                # Several statements that must agree (a job's row and its parts): one snapshot.
                # SQLite's read transaction is one snapshot already.
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                yield conn

    def init_schema(self) -> None:
        """Create the tables if they are missing, and add the columns a newer version needs."""
        with self.transaction() as conn:
            if not self.is_sqlite:
                # Several API nodes and workers start at once: one creates, the others wait.
                conn.execute(text("SELECT pg_advisory_xact_lock(7291004)"))
            self.metadata.create_all(conn, checkfirst=True)
            present = {c["name"] for c in inspect(conn).get_columns("jobs")}
            for name in ADDED_COLUMNS:
                if name not in present:
                    conn.execute(text(f"ALTER TABLE jobs ADD COLUMN {name} TEXT"))
            # create_all makes a new table's indexes only: an index added later is made here.
            for index in self.jobs.indexes:
                index.create(conn, checkfirst=True)

    def ping(self) -> bool:
        """True when the database answers a query."""
        try:
            with self._reading() as conn:
                conn.execute(select(1)).scalar()
            return True
        except SQLAlchemyError:
            return False

    # -- writes ---------------------------------------------------------------------
    def create_job(self, *, service: str, flavor: str, input_text: str, params: dict[str, Any] | None = None,
                   input_name: str | None = None, now: float | None = None, manifest: dict[str, Any] | None = None,
                   template: str | None = None) -> str:
        """Queue a new job and return its id (with the manifest and template it was accepted with)."""
        now = time.time() if now is None else now
        job_id = str(uuid.uuid4())
        with self.transaction() as conn:
            conn.execute(insert(self.jobs).values(
                id=job_id, service=service, flavor=flavor, params=json.dumps(params or {}), input_text="",
                input_name=input_name, status=QUEUED, message="queued", created_at=now, updated_at=now,
                manifest=_json_or_none(manifest), template=template))
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
        return {"status": PROCESSING, "attempts": j.c.attempts + 1, "message": "processing",
                "started_at": func.coalesce(j.c.started_at, now), "updated_at": now, "owner": owner or new_owner()}

    def claim_next(self, now: float | None = None, lease_s: float | None = None, owner: str | None = None) -> Job | None:
        """Atomically take the oldest claimable job and mark it processing, or return None.

        Claimable: queued; or, when `lease_s` is given, processing with no sign of life from
        its holder for `lease_s` seconds (it died).
        """
        now = time.time() if now is None else now
        nxt = self._next
        claimable = nxt.c.status == QUEUED
        if lease_s is not None:
            claimable = or_(claimable, and_(nxt.c.status == PROCESSING, nxt.c.updated_at < now - lease_s))
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
            row = conn.execute(update(j).where(
                j.c.id == job_id, j.c.cancel_requested == 0,
                or_(j.c.status == QUEUED, and_(j.c.status == PROCESSING, j.c.updated_at < now - lease_s)))
                .values(**self._claim_values(now, owner)).returning(*self._job_columns)).first()
            return self._full_job(conn, row) if row else None

    def _mine(self, job_id: str, owner: str | None):
        """The WHERE clause of a write by a job's holder: still processing, and still its own."""
        j = self.jobs
        clause = and_(j.c.id == job_id, j.c.status == PROCESSING)
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
                 now: float | None = None, owner: str | None = None) -> bool:
        """Mark a processing job complete with its summary; False if it was not (or no longer) held."""
        now = time.time() if now is None else now
        with self.transaction() as conn:
            return conn.execute(update(self.jobs).where(self._mine(job_id, owner)).values(
                status=JobStatus.COMPLETE.value, progress=100, result=result, usage=json.dumps(usage),
                warnings=json.dumps(warnings or []), error=None, message="complete", finished_at=now,
                updated_at=now)).rowcount > 0

    def fail(self, job_id: str, error: str, usage: dict[str, Any] | None = None, now: float | None = None,
             owner: str | None = None) -> bool:
        """Mark a processing job failed with a message for the user."""
        now = time.time() if now is None else now
        j = self.jobs
        with self.transaction() as conn:
            return conn.execute(update(j).where(self._mine(job_id, owner)).values(
                status=JobStatus.FAILED.value, error=error, message="failed", finished_at=now, updated_at=now,
                usage=func.coalesce(_json_or_none(usage), j.c.usage))).rowcount > 0

    def requeue(self, job_id: str, message: str = "queued again", now: float | None = None,
                owner: str | None = None) -> bool:
        """Put a processing job back in the queue; its checkpoint is kept for resuming."""
        now = time.time() if now is None else now
        with self.transaction() as conn:
            return conn.execute(update(self.jobs).where(self._mine(job_id, owner)).values(
                status=QUEUED, message=message, updated_at=now, owner=None)).rowcount > 0

    def requeue_processing(self, now: float | None = None) -> int:
        """Re-queue every job left processing (by a runner that died); return how many."""
        now = time.time() if now is None else now
        j = self.jobs
        with self.transaction() as conn:
            # A job whose cancel was asked for ends cancelled: queued, it would never be claimed again.
            conn.execute(update(j).where(j.c.status == PROCESSING, j.c.cancel_requested != 0).values(
                status=JobStatus.CANCELLED.value, message="cancelled", finished_at=now, updated_at=now, owner=None))
            return conn.execute(update(j).where(j.c.status == PROCESSING).values(
                status=QUEUED, message="queued again after a restart", updated_at=now, owner=None)).rowcount

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
            queued = conn.execute(update(j).where(j.c.status == QUEUED, j.c.cancel_requested == 0,
                                                  j.c.updated_at < now - quiet_s)
                                  .values(updated_at=now).returning(j.c.id)).scalars().all()
            stale = and_(j.c.status == PROCESSING, j.c.updated_at < now - lease_s - quiet_s)
            conn.execute(update(j).where(stale, j.c.cancel_requested != 0).values(
                status=JobStatus.CANCELLED.value, message="cancelled", finished_at=now, updated_at=now, owner=None))
            orphans = conn.execute(update(j).where(stale)
                                   .values(status=QUEUED, owner=None, updated_at=now,
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
            if status == QUEUED:
                conn.execute(update(j).where(j.c.id == job_id).values(
                    status=JobStatus.CANCELLED.value, message="cancelled", finished_at=now, updated_at=now))
                return "cancelled"
            if status == PROCESSING:
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
                status=JobStatus.CANCELLED.value, message="cancelled", finished_at=now,
                updated_at=now)).rowcount > 0

    def purge_finished(self, older_than_s: float, now: float | None = None) -> int:
        """Delete finished jobs that ended more than `older_than_s` seconds ago; return how many."""
        now = time.time() if now is None else now
        j = self.jobs
        with self.transaction() as conn:
            return self._delete_jobs(conn, and_(j.c.status.in_(FINISHED), j.c.finished_at < now - older_than_s))

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

    # -- reads ----------------------------------------------------------------------
    def last_beat(self, name: str) -> tuple[float, dict[str, Any]] | None:
        """When a background process last said it was alive, and what it said."""
        h = self.heartbeats
        with self._reading() as conn:
            row = conn.execute(select(h.c.at, h.c.info).where(h.c.name == name)).first()
        return (row.at, json.loads(row.info)) if row else None

    def get(self, job_id: str, *, full: bool = True) -> Job | None:
        """One job, or None; with full=False, without the columns a view never shows (NOT_VIEWED)."""
        if not full:
            row = self._read_by_id(self._select_view, job_id)
            return Job.from_row(row) if row else None
        with self._reading(snapshot=True) as conn:
            row = conn.execute(self._select_job, {"job_id": job_id}).first()
            return self._full_job(conn, row) if row else None

    def _full_job(self, conn: Connection, row: Any) -> Job:
        """The job of a jobs row with its upload and its whole checkpoint, read on `conn` (the
        same transaction as the row, so the checkpoint's head and parts agree)."""
        data = dict(row._mapping)
        stored = conn.execute(select(self.inputs.c.input_text).where(self.inputs.c.id == data["id"])).scalar()
        if stored is not None:          # else a job created before job_inputs: its upload is in the row
            data["input_text"] = stored
        data["checkpoint"] = self._assemble(conn, data["id"], data["checkpoint"])
        return Job.from_row(data)

    def _assemble(self, conn: Connection, job_id: str, head_json: str | None) -> dict[str, Any] | None:
        """The whole checkpoint: its head, with the growing key rebuilt from its parts in order."""
        if not head_json:
            return None
        head = json.loads(head_json)
        spec = head.pop(PARTS, None)
        if spec is None:                # written whole (by a caller without `grows`, or before job_parts)
            return head
        p = self.parts
        rows = conn.execute(select(p.c.seq, p.c.data).where(p.c.job_id == job_id).order_by(p.c.seq)).all()
        items: Any = {} if spec["dict"] else []
        for seq, data in rows:
            if seq != len(items):
                # Never resume from a checkpoint with a hole: starting over re-sends batches, a
                # hole would drop their summary.
                return None
            chunk = json.loads(data)
            items.update(chunk) if spec["dict"] else items.extend(chunk)
        head[spec["key"]] = items
        return head

    def checkpoint(self, job_id: str) -> dict[str, Any] | None:
        """A job's whole checkpoint (head and parts), without its upload: the report so far."""
        with self._reading(snapshot=True) as conn:
            head = conn.execute(select(self.jobs.c.checkpoint).where(self.jobs.c.id == job_id)).scalar()
            return self._assemble(conn, job_id, head)

    def get_state(self, job_id: str) -> tuple[str, int, str] | None:
        """A job's (status, progress, message), or None: cheap enough to poll (no input, no result)."""
        row = self._read_by_id(self._select_state, job_id)
        return (row["status"], row["progress"], row["message"]) if row else None

    def _read_by_id(self, statement, job_id: str) -> dict[str, Any] | None:
        """One row of a prebuilt single-statement read, on a pooled DBAPI connection.

        These reads are what pollers hit (GET /results/<id>, event streams). The statement is
        compiled once per store; SQLAlchemy's per-execution work (events, BEGIN/COMMIT, result
        objects) costs several times the query itself on SQLite, and one statement needs no
        transaction around it: it reads one consistent snapshot on its own.
        """
        sql, positions = self._compile(statement)
        if self.is_sqlite:
            return self._read_sqlite(sql, positions, job_id)
        connection = self._get_engine().raw_connection()
        try:
            row = _fetch_by_id(connection, sql, positions, job_id)
            connection.rollback()            # end the implicit transaction before the pool takes it back
        finally:
            connection.close()
        return row

    def _read_sqlite(self, sql: str, positions, job_id: str) -> dict[str, Any] | None:
        """The SQLite read on a connection this thread keeps: a pool checkout and check-in (with
        its reset) cost about as much as the query. Autocommit, so it holds no snapshot between reads."""
        local = self._readers               # read once: close() may swap it meanwhile
        reader = getattr(local, "connection", None)
        if reader is None or getattr(local, "pid", None) != os.getpid():
            reader = self._get_engine().raw_connection()
            local.connection, local.pid = reader, os.getpid()
            with self._lock:
                self._reader_list.append((os.getpid(), reader))
        return _fetch_by_id(reader, sql, positions, job_id)

    def _compile(self, statement) -> tuple[str, tuple[str, ...] | None]:
        found = self._compiled.get(id(statement))
        if found is None:
            compiled = statement.compile(dialect=self._get_engine().dialect)
            found = (compiled.string, tuple(compiled.positiontup) if compiled.positional else None)
            self._compiled[id(statement)] = found
        return found

    def cancel_requested(self, job_id: str) -> bool:
        """Whether someone asked to cancel this job."""
        row = self._read_by_id(self._select_cancel, job_id)
        return bool(row and row["cancel_requested"])

    def holds(self, job_id: str, owner: str | None) -> bool:
        """Whether the job is still processing under this owner (False once another worker took it over)."""
        row = self._read_by_id(self._select_holder, job_id)
        return (row is not None and row["status"] == PROCESSING
                and (owner is None or row["owner"] == owner))     # as _mine() says

    def list_jobs(self, status: str | list[str] | None = None, service: str | None = None, limit: int = 50,
                  offset: int = 0) -> tuple[list[Job], int]:
        """Jobs newest first, filtered by status (one or several) and service; and how many match in all."""
        j = self.jobs
        where = []
        if isinstance(status, list):
            where.append(j.c.status.in_(status))
        elif status:
            where.append(j.c.status == status)
        if service:
            where.append(j.c.service == service)
        with self._reading() as conn:
            total = conn.execute(select(func.count()).select_from(j).where(*where)).scalar()
            rows = conn.execute(select(*self._view_columns).where(*where)
                                .order_by(j.c.created_at.desc(), self._insertion.desc())
                                .limit(limit).offset(offset)).all()
        return [Job.from_row(row) for row in rows], total

    def changed_since(self, since: float) -> list[Job]:
        """Jobs written to since `since` (a time.time()), oldest change first, as views (no input)."""
        j = self.jobs
        with self._reading() as conn:
            rows = conn.execute(select(*self._view_columns).where(j.c.updated_at >= since)
                                .order_by(j.c.updated_at)).all()
        return [Job.from_row(row) for row in rows]

    def count_by_status(self) -> dict[str, int]:
        """How many jobs are in each status."""
        j = self.jobs
        with self._reading() as conn:
            rows = conn.execute(select(j.c.status, func.count().label("n")).group_by(j.c.status)).all()
        return {row.status: row.n for row in rows}


def _os_thread_local():
    """Storage per OS thread. Under gevent's patch (the web workers), threading.local is per
    greenlet: every request would open a read connection of its own and keep it for ever (a
    file descriptor each). Greenlets of one thread share its connection safely: a sqlite3 call
    never yields to another greenlet midway."""
    try:
        from gevent import monkey
    except ImportError:
        return threading.local()
    if monkey.is_module_patched("threading"):
        return monkey.get_original("threading", "local")()
    return threading.local()


def open_store(settings: Any) -> JobStore:
    """The store the settings name: RESULT_DB_URL if set, else the SQLite file at --db_path."""
    return JobStore(settings.result_db_url or settings.db_path)
