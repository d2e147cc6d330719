"""Shared fixtures: the fake OpenAI-compatible engine on an ephemeral loopback port."""
import pytest

from tests.fake_engine import FakeEngine


@pytest.fixture
def fake_engine():
    """A running FakeEngine (real HTTP on 127.0.0.1, port 0); stopped after the test."""
    with FakeEngine() as engine:
        yield engine


@pytest.fixture(params=["sqlite", "postgresql"])
def store_backend(request, tmp_path):
    """Each test using it runs twice: on SQLite and on PostgreSQL (skipped, saying why, without RESULT_DB_URL_TEST)."""
    from tests.store_backends import make_backend
    backend, schema = make_backend(request.param, tmp_path)
    yield backend
    if schema is not None:
        schema.close()
