"""Serving the Flask app with Gunicorn, started from Python (no gunicorn command line)."""
from __future__ import annotations

import json

from gunicorn import util as gunicorn_util
from gunicorn.app.base import BaseApplication

from app.settings import Settings

WORKER_CONNECTIONS = 1000


class GatewayServer(BaseApplication):
    """Gunicorn with gevent workers; each worker builds its own app after the fork.

    gevent, not threads: a connection that waits (a client trickling its body or its headers,
    an event stream, a websocket) costs a greenlet, not one of a few threads, so slow or hostile
    clients cannot hold every worker's threads and take the API down (gthread's 2 x 8 threads
    were held by 16 such connections). The worker monkey-patches the standard library before
    the app is loaded, so the app's threads (the watched registry) become greenlets and its
    sockets cooperate; psycopg sees the patch and waits cooperatively too.
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        s = self.settings
        options = {
            "bind": f"{s.host}:{s.service_port}",
            "workers": s.workers,
            "timeout": s.timeout,
            "worker_class": "app.server.GeventWorker",
            # Connections a worker holds at once (greenlets are cheap; the OS's file limit is the bound).
            "worker_connections": WORKER_CONNECTIONS,
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
        # Gunicorn answers what it refuses itself (a malformed request line, a header section too
        # large: 400, 414, 431) with an HTML page; ours is the gateway's one JSON error shape.
        gunicorn_util.write_error = write_json_error

    def load(self):
        from app.logs import configure_logging
        from app.web import create_app
        configure_logging(self.settings, "web")
        return create_app(self.settings)


try:
    from gunicorn.workers.ggevent import GeventWorker as _GunicornGeventWorker
except ImportError:          # gevent missing: Gunicorn says so when it loads the worker class
    _GunicornGeventWorker = object


class GeventWorker(_GunicornGeventWorker):
    """Gunicorn's gevent worker, with the standard library's queue classes left as they are.

    gevent replaces queue.Queue with its own class, whose internals differ; watchdog subclasses
    queue.Queue for its event queue and then fails on the first file event, so hot reload
    stopped in every web worker. The standard Queue is built on threading's locks, which the
    patch makes cooperative anyway. SimpleQueue stays gevent's: the standard one is written in
    C, and a get() that waits on it blocks the whole worker (every greenlet shares its OS
    thread); watchdog 7.1 waits on one for its inotify events, so the worker never answered.
    """

    def patch(self) -> None:
        super().patch()
        import queue

        from gevent import monkey
        for name in ("Queue", "LifoQueue", "PriorityQueue"):
            original = monkey.get_original("queue", name)
            if original is not None:
                setattr(queue, name, original)


def write_json_error(sock, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn.util.write_error's signature, writing the JSON error shape (app/web/errors.py)."""
    from app.web.errors import error_body
    body = json.dumps(error_body(status_int, f"{reason}: {mesg}" if mesg else reason)).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1")
    gunicorn_util.write_nonblock(sock, head + body)


def _streams_end_with_worker(worker) -> None:
    # An open event stream ends as soon as its worker is told to stop, instead of holding the
    # worker until Gunicorn's graceful timeout kills it; clients reconnect or poll.
    worker.wsgi.extensions["serving"] = lambda: worker.alive


def run_web(settings: Settings) -> None:
    """Run Gunicorn in this process until it is stopped (SIGTERM/SIGINT)."""
    GatewayServer(settings).run()
