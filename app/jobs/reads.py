"""Every read of the job store, and the fast path the pollers hit.

GET /results/<id>, the event streams and a running job's checks between batches read one
small row by id every half second or so. Those reads skip SQLAlchemy's per-execution work
(events, BEGIN/COMMIT, result objects), which costs several times the query itself on SQLite:
the statement is compiled once per store and run on a raw DBAPI connection, on SQLite one that
each OS thread keeps. One statement needs no transaction around it: it reads one consistent
snapshot on its own.
"""
from __future__ import annotations

import json
import os
import threading
from typing import Any

from sqlalchemy import bindparam, func, literal_column, select
from sqlalchemy.engine import Connection

from app.jobs.database import Database
from app.jobs.model import Job, JobStatus
from app.jobs.schema import NOT_VIEWED, PARTS, tables


class JobReads(Database):
    """The job store's reads (JobStore adds the writes)."""

    def __init__(self, path: str, busy_timeout_s: float = 30.0):
        super().__init__(path, busy_timeout_s)
        self.schema = tables(self.dialect)
        self.metadata, self.jobs, self.heartbeats = self.schema.metadata, self.schema.jobs, self.schema.heartbeats
        self.inputs, self.parts = self.schema.inputs, self.schema.parts
        self._job_columns = [c for c in self.jobs.c if c.name != "seq"]
        # Ties of created_at are ordered by insertion: rowid on SQLite, seq elsewhere.
        self._insertion = literal_column("rowid") if self.is_sqlite else self.jobs.c.seq
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

    def close(self) -> None:
        """Close this process's connections, the pollers' own ones first."""
        with self._lock:
            readers, self._reader_list = self._reader_list, []
            self._readers = _os_thread_local()
        for pid, reader in readers:
            if pid == os.getpid():          # a forked child leaves its parent's connections alone
                reader.close()              # back to the pool, which dispose() then closes
        super().close()

    # -- whole jobs and listings (SQLAlchemy) -----------------------------------------
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

    def count_by_status(self) -> dict[JobStatus, int]:
        """How many jobs are in each status."""
        j = self.jobs
        with self._reading() as conn:
            rows = conn.execute(select(j.c.status, func.count().label("n")).group_by(j.c.status)).all()
        return {JobStatus(row.status): row.n for row in rows}

    # -- the pollers' reads: one small row by id --------------------------------------
    def get_state(self, job_id: str) -> tuple[JobStatus, int, str] | None:
        """A job's (status, progress, message), or None: cheap enough to poll (no input, no result)."""
        row = self._read_by_id(self._select_state, job_id)
        return (JobStatus(row["status"]), row["progress"], row["message"]) if row else None

    def cancel_requested(self, job_id: str) -> bool:
        """Whether someone asked to cancel this job."""
        row = self._read_by_id(self._select_cancel, job_id)
        return bool(row and row["cancel_requested"])

    def holds(self, job_id: str, owner: str | None) -> bool:
        """Whether the job is still processing under this owner (False once another worker took it over)."""
        row = self._read_by_id(self._select_holder, job_id)
        return (row is not None and row["status"] == JobStatus.PROCESSING
                and (owner is None or row["owner"] == owner))     # as JobStore._mine() says

    def _read_by_id(self, statement, job_id: str) -> dict[str, Any] | None:
        """One row of a prebuilt single-statement read, on a raw DBAPI connection."""
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
