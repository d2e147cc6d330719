"""The job store's connections: one engine per process, write transactions, snapshot reads.

By default the store is one SQLite file (`--db_path`): WAL mode so readers never block the
writer, a busy timeout so concurrent writers wait instead of failing with "database is
locked", and every write transaction opened with BEGIN IMMEDIATE so a writer takes the write
lock up front instead of failing half-way. With `RESULT_DB_URL=postgresql://…` the same
statements run on PostgreSQL, shared by every API node and worker.
"""
from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from typing import Iterator

from sqlalchemy import create_engine, event, select
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import QueuePool

from app.jobs.schema import database_url, redacted


class Database:
    """Where the jobs are (a SQLite path or a database URL) and how to talk to it from any process."""

    def __init__(self, path: str, busy_timeout_s: float = 30.0):
        self.path = path                         # the SQLite path, or the database URL
        self.url = database_url(path)
        self.busy_timeout_s = busy_timeout_s
        self.dialect = make_url(self.url).get_backend_name()
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

    def ping(self) -> bool:
        """True when the database answers a query."""
        try:
            with self._reading() as conn:
                conn.execute(select(1)).scalar()
            return True
        except SQLAlchemyError:
            return False
