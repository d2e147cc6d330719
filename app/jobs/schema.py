"""The job store's tables, on both dialects, and bringing an existing database up to date.

What a running job writes is kept apart from what it never changes, because SQLite (and
PostgreSQL's MVCC) rewrite a whole row on UPDATE: the upload lives in `job_inputs`, written
once, and a checkpoint's growing part (the summary lines so far, the finished batches) lives
in `job_parts`, one row per checkpoint holding only what that checkpoint added. The `jobs` row,
updated at every batch, holds the small rest (progress, message, the checkpoint's counters).
"""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import BigInteger, Column, Float, Identity, Index, Integer, MetaData, Table, Text, inspect, text
from sqlalchemy.engine import Connection, make_url

# Columns added after the first release: an existing database gets them at upgrade().
# A `template` column, written by earlier versions and never read, stays in the databases that
# have it: it was always nullable, so leaving it out of every statement is enough.
ADDED_COLUMNS = ("manifest", "owner", "checks")
# The key of a stored checkpoint head saying which of its keys lives in job_parts, and whether
# that key is a list (parts concatenated) or a dict (parts merged, in insertion order).
PARTS = "_parts"
# Columns a view of a job (GET /results, listings) never shows and that can be large: the
# upload (megabytes), the checkpoint (the summary so far), the manifest snapshot.
# Views read them as empty, so a poll reads a few hundred bytes, not the whole row.
NOT_VIEWED = {"input_text": "''", "checkpoint": "NULL", "manifest": "NULL"}
# Several API nodes and workers start at once on PostgreSQL: one creates, the others wait.
_SCHEMA_LOCK = 7291004


@dataclass(frozen=True)
class Schema:
    """The tables of one dialect: `jobs`, `heartbeats`, `job_inputs`, `job_parts`."""

    metadata: MetaData
    jobs: Table
    heartbeats: Table
    inputs: Table
    parts: Table


def tables(dialect: str) -> Schema:
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
        Column("owner", Text),         # who holds the job while processing: "host:pid:token"
        Column("checks", Text),        # the answer checks' counts (JSON), once complete
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
    return Schema(metadata, jobs, heartbeats, inputs, parts)


def upgrade(conn: Connection, schema: Schema) -> None:
    """Create the tables if they are missing, and add the columns and indexes a newer version needs
    (inside the caller's write transaction)."""
    if conn.dialect.name != "sqlite":
        conn.execute(text(f"SELECT pg_advisory_xact_lock({_SCHEMA_LOCK})"))
    schema.metadata.create_all(conn, checkfirst=True)
    present = {c["name"] for c in inspect(conn).get_columns("jobs")}
    for name in ADDED_COLUMNS:
        if name not in present:
            conn.execute(text(f"ALTER TABLE jobs ADD COLUMN {name} TEXT"))
    # create_all makes a new table's indexes only: an index added later is made here.
    for index in schema.jobs.indexes:
        index.create(conn, checkfirst=True)


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
