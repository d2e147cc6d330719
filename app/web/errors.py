"""One error shape for every non-2xx response: {"error": <kind>, "message": <text>, "status": <code>}."""
from __future__ import annotations

import logging
import time

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException
from werkzeug.routing import WebsocketMismatch

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error answered to the client with a status code and a message."""

    def __init__(self, status: int, message: str, kind: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind


def error_body(status: int, message: str, kind: str | None = None) -> dict:
    """The one error shape."""
    return {"error": kind or _KINDS.get(status, "error"), "message": message, "status": status}


def error_response(status: int, message: str, kind: str | None = None, headers=None):
    """The JSON error body and status every error handler returns."""
    response = jsonify(error_body(status, message, kind))
    response.status_code = status
    for name, value in headers or ():
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


# A client that writes its whole body before reading the answer (Python's urllib, curl without
# Expect) sees a broken pipe, not our 413, if we close while it writes: what is left of a body
# over the limit is read and thrown away first, up to DRAIN_FACTOR times the limit and DRAIN_S.
DRAIN_FACTOR = 4
DRAIN_S = 60.0


def drain_body(limit: int) -> None:
    """Read and discard the rest of the request body (bounded in bytes and time)."""
    stream = request.environ.get("wsgi.input")
    length = request.content_length
    most = DRAIN_FACTOR * limit
    if stream is None or (length is not None and length > most):
        return          # too big to be worth reading: the connection is closed on it
    deadline = time.monotonic() + DRAIN_S
    read = 0
    try:
        while read < most and time.monotonic() < deadline:
            chunk = stream.read(min(1 << 16, most - read))
            if not chunk:
                return
            read += len(chunk)
    except (OSError, ValueError):
        return          # the client went away, or sent a broken chunked body


try:
    from gunicorn.http.errors import ParseException as _MALFORMED_BODY
except ImportError:           # not served by Gunicorn (tests' Flask client)
    _MALFORMED_BODY = ()

_KINDS = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
          406: "not_acceptable", 408: "request_timeout", 409: "conflict", 413: "payload_too_large",
          414: "uri_too_long", 415: "unsupported_media_type", 422: "unprocessable", 429: "too_many_requests",
          431: "headers_too_large", 500: "internal_error", 503: "unavailable"}


def init_app(app: Flask) -> None:
    """Route every error through error_response."""

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return error_response(exc.status, exc.message, exc.kind)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        if exc.code == 413:
            limit = app.config.get("MAX_CONTENT_LENGTH")
            message = f"The upload is larger than the limit of {limit // (1024 * 1024)} MB." if limit else exc.description
            if limit and request.content_length is not None and request.content_length <= limit:
                # Werkzeug's form parser answers 413 to too many parts in a small body too.
                message = (f"The form has too many fields or parts (at most {app.config.get('MAX_FORM_PARTS', 1000)}"
                           f" are read).")
            if limit:
                drain_body(limit)
            response = error_response(413, message)
            response.headers["Connection"] = "close"
            return response
        if isinstance(exc, WebsocketMismatch):
            return error_response(400, "This route is a websocket: connect with ws:// (or wss://) and upgrade.")
        # Keep the exception's own headers: a 405 must say which methods are allowed (Allow).
        return error_response(exc.code or 500, exc.description or exc.name, headers=exc.get_headers())

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        if isinstance(exc, _MALFORMED_BODY):
            # Gunicorn found the body broken while the app read it (an invalid chunk size).
            return error_response(400, f"The request body is malformed: {exc}.")
        log.exception("unexpected error while serving a request")
        return error_response(500, "Internal error; see the gateway's logs.")
