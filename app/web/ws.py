"""Job updates over a websocket, as the seed's v1 served them to LinTO Studio.

`ws /ws/results`: the client sends a JSON array of job ids, and may send more arrays later on
the same socket. The server answers each array with one array frame, the current state of each
id (`views.task_view`; an unknown id is `status: "unknown"`), then pushes one object frame per
change of state (status or progress) of any job, and `{"status": "alive"}` every HEARTBEAT_S.
Every job, not only the ids sent: Studio remembers ids across reconnects but never sends them
again, and the seed's v1 pushed every job's changes; a client skips the ids it does not know.

`ws /ws/results/<id>`: one job's state at once and at each change, without `alive`; the socket
is closed once the job has ended.

A socket is a greenlet of its Gunicorn worker, like an event stream, and takes one of the same
slots (`events.init_app`): over the cap, the upgrade is answered 503 and the client polls instead.
Bad input closes the socket with a reason (1003 not JSON text, 1008 not an array of ids or too
many, 1009 a message over MAX_MESSAGE_BYTES) and touches nothing else. A client that stops
reading is found out by the ping it does not answer (PING_S) or by a send that cannot complete
(SEND_TIMEOUT_S), and closed; no other socket or job waits for it.
"""
from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from typing import Any

from flask import Blueprint, current_app, g
from flask_sock import ConnectionClosed, Sock

from app.jobs.model import Job
from app.jobs.store import JobStore
from app.web import context
from app.web.errors import error_response
from app.web.views import task_view, unknown_task

log = logging.getLogger(__name__)

bp = Blueprint("ws", __name__)
sock = Sock()

TICK_S = 0.5                  # how often the store is read for changes
HEARTBEAT_S = 3.0             # the seed's v1 interval for {"status": "alive"}
PING_S = 10.0                 # a websocket ping; a client that does not answer two is closed
SEND_TIMEOUT_S = 10.0         # a send blocked this long (the client reads nothing) closes the socket
WINDOW_S = 5.0                # changes are read over this window each tick, so a late or skewed clock loses none
MAX_MESSAGE_BYTES = 1 << 20
MAX_IDS_PER_MESSAGE = 1000
MAX_REMEMBERED = 10_000       # states remembered per socket, to send only what changed


class BadMessage(Exception):
    """What the client sent cannot be served; the socket is closed with `code` and this reason."""

    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code, self.reason = code, reason


def parse_ids(message: Any) -> list[str]:
    """The job ids of one client message: a JSON array of strings."""
    if not isinstance(message, str):
        raise BadMessage(1003, "Send text frames: a JSON array of job ids.")
    try:
        ids = json.loads(message)
    except ValueError:
        raise BadMessage(1003, "The message is not JSON: send a JSON array of job ids.") from None
    if not isinstance(ids, list):
        raise BadMessage(1008, "The message must be a JSON array of job ids.")
    if len(ids) > MAX_IDS_PER_MESSAGE:
        raise BadMessage(1008, f"At most {MAX_IDS_PER_MESSAGE} job ids per message.")
    if not all(isinstance(i, str) and 0 < len(i) <= 200 for i in ids):
        raise BadMessage(1008, "Job ids must be non-empty strings of at most 200 characters.")
    return ids


class Watch:
    """What one socket has been told, so that only changes are sent."""

    def __init__(self, store: JobStore):
        self.store = store
        self.sent: OrderedDict[str, tuple[str, int]] = OrderedDict()

    def remember(self, job: Job) -> None:
        self.sent[job.id] = (job.status, job.progress)
        self.sent.move_to_end(job.id)
        while len(self.sent) > MAX_REMEMBERED:
            self.sent.popitem(last=False)

    def states(self, ids: list[str]) -> list[dict[str, Any]]:
        """The current state of each id, in order (the answer to an array)."""
        out = []
        for job_id in ids:
            job = self.store.get(job_id, full=False)
            if job is None:
                out.append(unknown_task(job_id))
            else:
                self.remember(job)
                out.append(task_view(job))
        return out

    def changes(self, since: float) -> list[dict[str, Any]]:
        """Jobs whose state differs from what this socket was told (read from `since` on)."""
        out = []
        for job in self.store.changed_since(since):
            if self.sent.get(job.id) != (job.status, job.progress):
                self.remember(job)
                out.append(task_view(job))
        return out


def _send(ws, data: Any) -> None:
    ws.send(json.dumps(data, ensure_ascii=False))


def _close(ws, code: int, reason: str) -> None:
    try:
        ws.close(code, reason)
    except (ConnectionClosed, OSError):
        pass


@sock.route("/ws/results", bp=bp)
def results_socket(ws):
    """Follow jobs: arrays of ids in, their states and every later change out, `alive` in between."""
    serving = current_app.extensions.get("serving", lambda: True)
    watch = Watch(context.store())
    ws.sock.settimeout(SEND_TIMEOUT_S)       # the reader thread selects first (ping_interval): sends only
    since = time.time() - WINDOW_S
    next_beat = time.monotonic() + HEARTBEAT_S
    try:
        while serving():
            message = ws.receive(timeout=TICK_S)
            if message is not None:
                _send(ws, watch.states(parse_ids(message)))
            now = time.time()
            for task in watch.changes(since):
                _send(ws, task)
            since = now - WINDOW_S
            if time.monotonic() >= next_beat:
                _send(ws, {"status": "alive"})
                next_beat = time.monotonic() + HEARTBEAT_S
        _close(ws, 1001, "The gateway is restarting; connect again.")
    except BadMessage as exc:
        _close(ws, exc.code, exc.reason)
    except (ConnectionClosed, OSError):
        pass          # the client left, stopped reading, or stopped answering pings


@sock.route("/ws/results/<job_id>", bp=bp)
def result_socket(ws, job_id: str):
    """Follow one job until it ends: its state at once and at each change."""
    serving = current_app.extensions.get("serving", lambda: True)
    store = context.store()
    ws.sock.settimeout(SEND_TIMEOUT_S)
    last = None
    try:
        while serving():
            job = store.get(job_id, full=False)
            if job is None:
                _send(ws, unknown_task(job_id))
                _close(ws, 1000, "Task does not exist")
                return
            if (job.status, job.progress) != last:
                _send(ws, task_view(job))
                last = (job.status, job.progress)
            if job.status.finished:
                _close(ws, 1000, "The job has ended.")
                return
            message = ws.receive(timeout=TICK_S)      # nothing is expected; a close is noticed here
            if message is not None:
                raise BadMessage(1008, "This socket follows one job; send nothing.")
        _close(ws, 1001, "The gateway is restarting; connect again.")
    except BadMessage as exc:
        _close(ws, exc.code, exc.reason)
    except (ConnectionClosed, OSError):
        pass


@bp.before_request
def _take_slot():
    """One of the worker's stream slots for the socket's life, or 503 before the upgrade."""
    slots = current_app.extensions["event_streams"]
    if not slots.acquire(blocking=False):
        response = error_response(503, "Too many open sockets and streams on this worker; poll GET /results/<id>.")
        response.headers["Retry-After"] = "5"
        return response
    g.ws_slot = slots
    return None


@bp.teardown_request
def _free_slot(_exc):
    slots = g.pop("ws_slot", None)
    if slots is not None:
        slots.release()


def init_app(app) -> None:
    app.config["SOCK_SERVER_OPTIONS"] = {"ping_interval": PING_S, "max_message_size": MAX_MESSAGE_BYTES}
    sock.init_app(app)
