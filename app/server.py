"""Serving the Flask app with Gunicorn, started from Python (no gunicorn command line)."""
from __future__ import annotations

from gunicorn.app.base import BaseApplication

from app.settings import Settings


class GatewayServer(BaseApplication):
    """Gunicorn with gthread workers; each worker builds its own app after the fork."""

    def __init__(self, settings: Settings):
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        s = self.settings
        options = {
            "bind": f"{s.host}:{s.service_port}",
            "workers": s.workers,
            "timeout": s.timeout,
            # gthread: a slow client holds a thread, not the whole worker.
            "worker_class": "gthread",
            "threads": s.worker_threads,
            "graceful_timeout": 10,
            "loglevel": "debug" if s.debug else "info",
            "accesslog": None,
            "errorlog": "-",
            # Gunicorn's own lines go through our handler: one format (text or JSON) for the whole log.
            "logger_class": "app.logs.GunicornLogger",
            "post_worker_init": _streams_end_with_worker,
            "proc_name": f"{s.service_name}-web",
            # No preload: create_app (database, watched registry) runs in each worker,
            # so no thread is started before the fork.
            "preload_app": False,
            # The largest request line Gunicorn allows: long query strings get our JSON errors.
            "limit_request_line": 8190,
        }
        # Gunicorn >= 25.1 opens an admin socket at one fixed path per user ($HOME/.gunicorn):
        # two gateways on a host would take it from each other, and the supervisor already owns
        # the processes. Off.
        if "control_socket_disable" in self.cfg.settings:
            options["control_socket_disable"] = True
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self):
        from app.logs import configure_logging
        from app.web import create_app
        configure_logging(self.settings, "web")
        return create_app(self.settings)


def _streams_end_with_worker(worker) -> None:
    # An open event stream ends as soon as its worker is told to stop, instead of holding the
    # worker until Gunicorn's graceful timeout kills it; clients reconnect or poll.
    worker.wsgi.extensions["serving"] = lambda: worker.alive


def run_web(settings: Settings) -> None:
    """Run Gunicorn in this process until it is stopped (SIGTERM/SIGINT)."""
    GatewayServer(settings).run()
