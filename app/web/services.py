"""Routes for the services: list them, show one, submit a transcript to one.

The routes' OpenAPI contract is in document/swagger_llm_gateway.yml.
"""
from __future__ import annotations

import json

from flask import Blueprint, jsonify, request, url_for

from app.jobs import submit
from app.web import context
from app.web.errors import ApiError

bp = Blueprint("services", __name__)


def service_view(service) -> dict:
    """A service as the seed showed it: its manifest, as written."""
    return service.raw


@bp.get("/services")
def list_services():
    """List the loaded services: a JSON array of their manifests, as the seed answered."""
    snapshot = context.registry().snapshot
    return jsonify([service_view(s) for _, s in sorted(snapshot.services.items())])


@bp.get("/services/<name>")
def get_service(name: str):
    """Show one service's manifest."""
    service = context.registry().get(name)
    if service is None:
        raise ApiError(404, f"No service called '{name}'.")
    return jsonify(service_view(service))


def _number(name: str, raw) -> float | None:
    if raw is None or raw == "":
        return None
    if isinstance(raw, bool):
        raise ApiError(400, f"'{name}' must be a number, got {submit.shown(raw)}.")
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ApiError(400, f"'{name}' must be a number, got {submit.shown(raw)}.") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ApiError(400, f"'{name}' must be a finite number.")
    return value


def _read_submission() -> dict:
    """The submission from a multipart form or a JSON body, as plain values."""
    if request.mimetype == "application/json":
        try:
            data = request.get_json(silent=True)
        except RecursionError:            # silent=True only covers invalid JSON
            raise ApiError(400, "The JSON body is nested too deeply.") from None
        if not isinstance(data, dict):
            raise ApiError(400, "The JSON body must be an object: {\"content\": ..., \"flavor\": ...}.")
        content = data.get("content")
        if content is None:
            raise ApiError(400, "The JSON body needs 'content': the transcript text.")
        if not isinstance(content, (str, list, dict)):
            raise ApiError(400, "'content' must be the transcript text (or a list of segments).")
        if isinstance(content, (list, dict)):
            content = json.dumps(content)
        flavor = data.get("flavor")
        if flavor is not None and not isinstance(flavor, str):
            raise ApiError(400, "'flavor' must be a string.")
        return {"content": content, "filename": data.get("filename") if isinstance(data.get("filename"), str) else None,
                "flavor": flavor, "temperature": data.get("temperature"), "top_p": data.get("top_p")}
    if request.mimetype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        if len(request.files.getlist("file")) > 1:
            raise ApiError(400, "Send one transcript: the form has several 'file' parts.")
        upload = request.files.get("file")
        text = request.form.get("content")
        if upload is not None and text:
            raise ApiError(400, "Send the transcript once: either 'file' or 'content', not both.")
        if upload is None and text is None:
            raise ApiError(400, "No transcript: send it as the 'file' field (multipart) or as 'content'.")
        content = upload.read() if upload is not None else text
        return {"content": content, "filename": upload.filename if upload is not None else None,
                "flavor": request.form.get("flavor"), "temperature": request.form.get("temperature"),
                "top_p": request.form.get("top_p")}
    raise ApiError(415, "Send multipart/form-data (file=@transcript.txt) or application/json ({\"content\": ...}).")


@bp.post("/services/<name>/generate")
def generate(name: str):
    """Queue a transcript for summarization by a service."""
    values = _read_submission()
    temperature = _number("temperature", values["temperature"])
    top_p = _number("top_p", values["top_p"])
    flavor = values["flavor"] or None
    try:
        job_id = submit.submit(context.store(), context.registry(), name, content=values["content"],
                                    filename=values["filename"], flavor=flavor, temperature=temperature, top_p=top_p,
                                    queue=context.queue())
    except submit.QueueUnavailable as exc:
        raise ApiError(503, str(exc)) from None
    except submit.NotFound as exc:
        raise ApiError(404, str(exc)) from None
    except submit.InvalidSubmission as exc:
        raise ApiError(400, str(exc)) from None
    response = jsonify({"jobId": job_id, "message": "Request successfully queued"})
    response.status_code = 202
    response.headers["Location"] = url_for("results.get_result", job_id=job_id)
    return response
