"""Shared fixtures: the fake OpenAI-compatible engine on an ephemeral loopback port."""
import pytest

from tests.fake_engine import FakeEngine


@pytest.fixture
def fake_engine():
    """A running FakeEngine (real HTTP on 127.0.0.1, port 0); stopped after the test."""
    with FakeEngine() as engine:
        yield engine
