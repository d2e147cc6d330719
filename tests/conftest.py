"""Shared fixtures: the fake OpenAI-compatible engine on an ephemeral loopback port; job stores; runners; deployments.

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


class RunnerFactory:
    """The one way the tests build a Runner (driven by tick(), its jobs in its own threads).

    `make_runner(services, **settings)` writes the services (file stem → manifest) to a folder
    under the test's tmp_path, opens a fresh job store (`backend`'s, else a SQLite file there),
    loads the registry and returns the runner: `runner.store`, `runner.registry`. A second runner
    on the same store and services (another node, a restart) is `make_runner.another(runner)`.
    """

    def __init__(self, tmp_path):
        self.folder = tmp_path / "services"
        self.db_path = str(tmp_path / "jobs.sqlite")
        self.made = []

    def __call__(self, services, *, backend=None, summarize_fn=None, **settings):
        from app.jobs.store import open_store
        from app.services.registry import ServiceRegistry
        from app.settings import Settings
        from tests.manifest_factory import write_service
        self.folder.mkdir(exist_ok=True)
        for stem, data in services.items():
            write_service(str(self.folder), stem, data)
        where = backend.settings_kwargs() if backend is not None else {"db_path": self.db_path}
        chosen = Settings(**where, services_dir=str(self.folder), **settings)
        store = open_store(chosen)
        store.init_schema()
        registry = ServiceRegistry(str(self.folder))
        registry.reload()
        return self._runner(chosen, store, registry, summarize_fn)

    def another(self, runner, *, summarize_fn=None, **settings):
        """One more runner on `runner`'s store and services, with these settings changed."""
        import dataclasses
        return self._runner(dataclasses.replace(runner.settings, **settings), runner.store, runner.registry,
                            summarize_fn)

    def _runner(self, settings, store, registry, summarize_fn):
        from app.jobs.runner import Runner
        from app.pipeline.summarize import summarize
        runner = Runner(settings, store, registry, summarize_fn or summarize)
        self.made.append(runner)
        return runner

    def close(self):
        """Shut every runner down (its running jobs back in the queue), then close the stores."""
        for runner in self.made:
            runner.shutdown(timeout=5)
        for store in {id(runner.store): runner.store for runner in self.made}.values():
            store.close()


@pytest.fixture
def make_runner(tmp_path):
    """A RunnerFactory; what it made is shut down after the test. Ask for it after `fake_engine` and
    `store_backend`, so the runners stop before the engine and the store they use go away."""
    factory = RunnerFactory(tmp_path)
    yield factory
    factory.close()


@pytest.fixture
def make_app(tmp_path):
    """make_app(**settings) → a Flask app (no server) serving one service "one" (fields 1, flavor
    "small"), its job store a SQLite file under tmp_path: for tests of one route's logic."""
    from app.services.registry import ServiceRegistry
    from app.settings import Settings
    from app.web import create_app
    from tests.manifest_factory import manifest, write_service

    def make(**settings):
        folder = tmp_path / "services"
        folder.mkdir(exist_ok=True)
        write_service(str(folder), "one", manifest(name="one", fields=1))
        registry = ServiceRegistry(str(folder))
        registry.reload()
        chosen = Settings(db_path=str(tmp_path / "jobs.sqlite"), services_dir=str(folder), **settings)
        return create_app(chosen, registry=registry)
    return make


@pytest.fixture
def engine_delay():
    """Seconds the `engine` fixture takes to answer; a test module overrides it to see jobs running."""
    return 0.02


@pytest.fixture
def engine(engine_delay):
    """A fake engine in its own process (loopback, ephemeral port), for tests of real gateways."""
    from tests.processes import FakeEngineProcess
    process = FakeEngineProcess("--delay", str(engine_delay))
    yield process
    process.stop()


@pytest.fixture
def services(tmp_path):
    """A copy of the shipped services folder, which the test may change."""
    import shutil
    folder = tmp_path / "services"
    shutil.copytree("services", folder)
    return folder


@pytest.fixture
def gateway(tmp_path, engine, services, deployment):
    """A real gateway (`python3 -m app`, or web + workers when scaled) on `services` and `engine`."""
    from tests.processes import Gateway
    started = Gateway(tmp_path, engine.base_url, services_dir=str(services), workers=2, deployment=deployment).start()
    yield started
    started.stop()


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
