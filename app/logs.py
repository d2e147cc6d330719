"""Logging set-up shared by every process of the gateway: text or JSON lines, job and request ids."""
from __future__ import annotations

import contextvars
import json
import logging
import re
import time
import uuid
from contextlib import contextmanager
from typing import IO, Iterator

from gunicorn import glogging

from app.settings import Settings

# Set by the runner around a job and by the web app around a request; every line logged
# meanwhile (in this thread, or in a thread started with a copy of the context) carries it.
job_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("job_id", default=None)
request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

REQUEST_ID_HEADER = "X-Request-ID"
# A client's request id is echoed in logs and headers: keep it short and printable.
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
# Probes and scrapes arrive every few seconds; at info they would drown the useful lines.
QUIET_ENDPOINTS = {"health.healthcheck", "health.health", "metrics.scrape"}
# Each waiting client polls its result every second or so: a poll that finds its job is logged
# at debug too; a miss (4xx, 5xx) is logged like any other request.
QUIET_POLLS = {"results.get_result"}


class ContextFilter(logging.Filter):
    """Put the current job id and request id on every record (None when unset)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.job_id = job_id_var.get()
        record.request_id = request_id_var.get()
        return True


class TextFormatter(logging.Formatter):
    """`time LEVEL [role pid] logger: [job=… request=…] message`."""

    def __init__(self, role: str):
        super().__init__(f"%(asctime)s %(levelname)s [{role} %(process)d] %(name)s: %(context)s%(message)s")

    def format(self, record: logging.LogRecord) -> str:
        tags = [f"job={record.job_id}" if getattr(record, "job_id", None) else "",
                f"request={record.request_id}" if getattr(record, "request_id", None) else ""]
        record.context = "".join(f"[{' '.join(t for t in tags if t)}] ") if any(tags) else ""
        return super().format(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, role, pid, logger, message, job_id, request_id, exc."""

    def __init__(self, role: str):
        super().__init__()
        self.role = role

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                 + f".{int(record.msecs):03d}Z",
                 "level": record.levelname, "role": self.role, "pid": record.process, "logger": record.name,
                 "message": record.getMessage()}
        for key in ("job_id", "request_id"):
            if getattr(record, key, None):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(settings: Settings, role: str, stream: IO[str] | None = None) -> logging.Handler:
    """Log to stderr (or `stream`) in the configured format, with the process role and pid."""
    level = logging.DEBUG if settings.debug else logging.INFO
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(role) if settings.log_format == "json" else TextFormatter(role))
    handler.addFilter(ContextFilter())
    root.addHandler(handler)
    root.setLevel(level)
    # Libraries that log request details at debug level stay at info: no headers (keys) in logs.
    for noisy in ("openai", "httpcore", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(max(level, logging.INFO))
    # httpx logs every request at info: each engine call, and the engine ping of every /health probe.
    for noisy in ("httpx", "httpx2", "watchdog"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return handler


@contextmanager
def job_context(job_id: str) -> Iterator[None]:
    """Within this block, every log line of this thread carries `job_id`."""
    token = job_id_var.set(job_id)
    try:
        yield
    finally:
        job_id_var.reset(token)


class GunicornLogger(glogging.Logger):
    """Gunicorn's own lines (boot, worker exits) go through our handler, so one format covers the log."""

    def setup(self, cfg) -> None:
        super().setup(cfg)
        for handler in list(self.error_log.handlers):
            self.error_log.removeHandler(handler)
        self.error_log.propagate = True


def init_app(app) -> None:
    """Give each request an id (X-Request-ID in, or a new one; echoed back) and log it when done."""
    from flask import g, request

    log = logging.getLogger("app.web.access")

    @app.before_request
    def _request_id():
        given = request.headers.get(REQUEST_ID_HEADER, "")
        g.request_id = given if _SAFE_REQUEST_ID.match(given) else uuid.uuid4().hex
        g.request_token = request_id_var.set(g.request_id)
        g.request_started = time.monotonic()

    @app.after_request
    def _log_request(response):
        request_id = g.get("request_id")
        if request_id is None:          # a failure before our before_request ran
            return response
        response.headers[REQUEST_ID_HEADER] = request_id
        status = response.status_code
        quiet = ((request.endpoint in QUIET_ENDPOINTS and status < 500)
                 or (request.endpoint in QUIET_POLLS and status < 300))
        path = request.full_path if request.query_string else request.path
        log.log(logging.DEBUG if quiet else logging.INFO, "%s %s %d %.1f ms", request.method, path,
                response.status_code, (time.monotonic() - g.request_started) * 1000)
        return response

    @app.teardown_request
    def _forget_request_id(exc=None):
        # Gunicorn reuses threads: the next request on this one must not inherit the id.
        token = g.pop("request_token", None)
        if token is not None:
            request_id_var.reset(token)
