"""The job stores the tests run against: SQLite (always) and PostgreSQL / Redis (when given).

`RESULT_DB_URL_TEST` (a postgresql:// URL) and `BROKER_URL_TEST` (a redis:// URL) name the
servers; `eval "$(bash scripts/services.sh)"` starts both on loopback and exports them. When
one is not set or does not answer, the tests that need it are skipped, saying why; with
`LLM_GATEWAY_REQUIRE_SERVICES=1` (CI) they fail instead, so a broken set-up cannot pass as skips.

Each PostgreSQL test gets its own schema (`search_path` in the URL), dropped afterwards, so
tests never see each other's jobs, even from processes they started. A scaled deployment
(`deployment_for("scaled")`) also gets the Redis database flushed before and after.
"""
from __future__ import annotations

import contextlib
import os
import urllib.parse
import uuid
from dataclasses import dataclass
from typing import Iterator

import pytest

from tests.processes import EMBEDDED, Deployment

PG_ENV = "RESULT_DB_URL_TEST"
BROKER_ENV = "BROKER_URL_TEST"
REQUIRE_ENV = "LLM_GATEWAY_REQUIRE_SERVICES"
HOW = "start them with: eval \"$(bash scripts/services.sh)\""


def _unavailable(reason: str):
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1)")
    pytest.skip(reason)


def postgres_url_or_skip() -> str:
    """The PostgreSQL test URL, after checking it answers; skip (or fail in CI) otherwise."""
    url = os.environ.get(PG_ENV)
    if not url:
        _unavailable(f"PostgreSQL variant: {PG_ENV} is not set; {HOW}")
    try:
        import psycopg
        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:  # not installed, not running, wrong password: all say the same
        _unavailable(f"PostgreSQL variant: {PG_ENV} does not answer ({type(exc).__name__}: {exc}); {HOW}")
    return url


def broker_url_or_skip() -> str:
    """The Redis test URL, after checking it answers; skip (or fail in CI) otherwise."""
    url = os.environ.get(BROKER_ENV)
    if not url:
        _unavailable(f"Celery + Redis: {BROKER_ENV} is not set; {HOW}")
    try:
        import redis
        redis.Redis.from_url(url, socket_connect_timeout=3).ping()
    except Exception as exc:
        _unavailable(f"Celery + Redis: {BROKER_ENV} does not answer ({type(exc).__name__}: {exc}); {HOW}")
    return url


def with_search_path(url: str, schema: str) -> str:
    """The URL with `options=-csearch_path=<schema>`: every connection made from it uses that schema."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query)
    query.append(("options", f"-csearch_path={schema}"))
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


@dataclass
class StoreBackend:
    """Where one test keeps its jobs: `location` is what JobStore takes (a path or a URL)."""

    name: str
    location: str
    db_path: str

    def settings_kwargs(self) -> dict[str, str]:
        """The Settings fields that point the gateway at this store."""
        if self.name == "sqlite":
            return {"db_path": self.db_path}
        return {"db_path": self.db_path, "result_db_url": self.location}

    def env(self) -> dict[str, str]:
        """The environment variables that point `python3 -m app` at this store."""
        return {"RESULT_DB_URL": self.location} if self.name != "sqlite" else {}


class PostgresSchema:
    """A fresh schema in the test database, dropped (with its tables) on close."""

    def __init__(self, url: str):
        import psycopg
        self.base = url
        self.schema = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {self.schema}")
        self.url = with_search_path(url, self.schema)

    def close(self) -> None:
        import psycopg
        with psycopg.connect(self.base, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")


def make_backend(name: str, tmp_path) -> tuple[StoreBackend, PostgresSchema | None]:
    """A backend for one test: a SQLite file under tmp_path, or a fresh PostgreSQL schema."""
    db_path = str(tmp_path / "jobs.sqlite")
    if name == "sqlite":
        return StoreBackend("sqlite", db_path, db_path), None
    schema = PostgresSchema(postgres_url_or_skip())
    return StoreBackend("postgresql", schema.url, db_path), schema


@contextlib.contextmanager
def deployment_for(name: str) -> Iterator[Deployment]:
    """What a test hands to Gateway: "embedded", or "scaled" on a flushed Redis database and a fresh
    PostgreSQL schema (both cleaned afterwards), with short timeouts so a dead worker's jobs come back
    within seconds (VISIBILITY_TIMEOUT=10, JOB_LEASE=4). Skips (or fails in CI) without the servers."""
    if name == "embedded":
        yield EMBEDDED
        return
    broker = broker_url_or_skip()
    schema = PostgresSchema(postgres_url_or_skip())
    import redis
    queue = redis.Redis.from_url(broker)
    queue.flushdb()
    try:
        yield Deployment("scaled", {"BROKER_URL": broker, "RESULT_DB_URL": schema.url,
                                    "VISIBILITY_TIMEOUT": "10", "JOB_LEASE": "4"})
    finally:
        queue.flushdb()      # no message of this test's jobs reaches the next test's workers
        queue.close()
        schema.close()
