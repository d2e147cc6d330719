"""Shared fixtures: the fake OpenAI-compatible engine on an ephemeral loopback port; job stores; deployments.

Also the "figures" section at the end of a run: what passing tests print (jobs lost, 5xx seen,
retries, calls resent, reload times) is shown there, so CI's log carries the figures without `-s`.
"""
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


DEPLOYMENTS = ["embedded", "scaled"]


@pytest.fixture(params=DEPLOYMENTS)
def deployment(request):
    """Process-level tests using it run twice: embedded (`python3 -m app`: SQLite, the local runner) and
    scaled (BROKER_URL + RESULT_DB_URL, two `python3 -m app worker`; skipped, saying why, without
    RESULT_DB_URL_TEST and BROKER_URL_TEST). Pass it to Gateway(deployment=...)."""
    from tests.store_backends import deployment_for
    with deployment_for(request.param) as chosen:
        yield chosen


@pytest.fixture(scope="module", params=DEPLOYMENTS)
def module_deployment(request):
    """The same, for a module-scoped gateway (one store and one queue for the whole module)."""
    from tests.store_backends import deployment_for
    with deployment_for(request.param) as chosen:
        yield chosen


FIGURES: list[tuple[str, str]] = []      # (test id, line) printed by passing tests


def pytest_runtest_logreport(report):
    if report.when == "call" and report.passed and report.capstdout.strip():
        FIGURES.extend((report.nodeid, line) for line in report.capstdout.strip().splitlines() if line.strip())


def pytest_terminal_summary(terminalreporter):
    if FIGURES:
        terminalreporter.section("figures printed by the tests")
        for nodeid, line in FIGURES:
            terminalreporter.write_line(f"{nodeid.split('::', 1)[-1]}: {line}")
