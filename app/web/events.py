"""Live progress of a job as Server-Sent Events: GET /results/<id>/events.

Each stream is a greenlet of its Gunicorn worker that reads the job's state from the store (one
small indexed read every POLL_S). Cheap, but not free: a worker serves at most `max_streams`
streams and websockets together, and one over the cap gets 503 (clients then poll GET /results/<id>).

The routes' OpenAPI contract is in document/swagger_llm_gateway.yml.
"""
from __future__ import annotations

import json
import threading
import time
from typing import Any, Callable, Iterator

from flask import Blueprint, Response, current_app

from app.jobs.model import JobStatus
from app.jobs.store import JobStore
from app.pipeline.summarize import partial_lines
from app.web import context
from app.web.errors import ApiError, error_response
from app.web.views import QUEUED_MESSAGE, job_view, wire_status

bp = Blueprint("events", __name__)

POLL_S = 0.5          # how often a stream reads the job's state
HEARTBEAT_S = 10.0    # a comment line this often keeps proxies (and us) aware the stream is alive
RETRY_MS = 2000       # EventSource reconnects after this long; it then gets the current state


@bp.get("/results/<job_id>/events")
def job_events(job_id: str):
    """Follow a job live: Server-Sent Events until it ends."""
    store = context.store()
    if store.get_state(job_id) is None:
        raise ApiError(404, f"No job with id '{job_id}'.")
    slots = current_app.extensions["event_streams"]
    if not slots.acquire(blocking=False):
        response = error_response(503, "Too many event streams on this worker; poll GET /results/<id> instead.")
        response.headers["Retry-After"] = "5"
        return response
    serving = current_app.extensions.get("serving", lambda: True)    # set under Gunicorn (app/server.py)
    response = Response(follow(store, job_id, serving), mimetype="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    # Called when the server closes the response: at the end, or when the client went away.
    response.call_on_close(slots.release)
    return response


def init_app(app, settings) -> None:
    """Cap this worker's streams (event streams and websockets together)."""
    app.extensions["event_streams"] = threading.BoundedSemaphore(settings.max_streams)


def follow(store: JobStore, job_id: str, serving: Callable[[], bool] = lambda: True) -> Iterator[str]:
    """The event stream of one job: progress when it changes, heartbeats, then the final event.

    It also ends, without a final event, when `serving()` turns false (the worker is stopping).
    """
    yield f"retry: {RETRY_MS}\n\n"
    last = None
    sent_lines = 0                              # lines of the partial report sent so far
    last_sent = time.monotonic()
    while serving():
        state = store.get_state(job_id)
        if state is None:
            yield sse("error", {"error": "not_found", "message": f"The job '{job_id}' was deleted.", "status": 404})
            return
        status, progress, message = state
        if status.finished:
            job = store.get(job_id, full=False)
            if job is not None:
                yield sse(wire_status(status), job_view(job))
                return
            continue                                  # deleted in between: the next read says so
        now = time.monotonic()
        if state != last:
            yield sse("progress", {"jobId": job_id, "status": status, "progress": progress,
                                   "message": QUEUED_MESSAGE if status == JobStatus.QUEUED else float(progress),
                                   "detail": message})
            if status == JobStatus.PROCESSING and (last is None or progress != last[1]):
                # The report grew (a batch finished): its new lines, and where they start.
                lines = partial_lines(store.checkpoint(job_id))
                if len(lines) > sent_lines:
                    yield sse("partial", {"jobId": job_id, "start": sent_lines, "lines": lines[sent_lines:]})
                    sent_lines = len(lines)
            last, last_sent = state, now
        elif now - last_sent >= HEARTBEAT_S:
            # A write is also how a stream learns its client left: it fails, and the thread is freed.
            yield ": heartbeat\n\n"
            last_sent = now
        time.sleep(POLL_S)


def sse(event: str, data: dict[str, Any]) -> str:
    """One Server-Sent Event (the JSON is on one line, so one data field)."""
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"
