"""Routes for jobs' results."""
from __future__ import annotations

from flask import Blueprint, jsonify, request

from app.jobs import JobStatus
from app.submissions import describe
from app.web import context
from app.web.errors import ApiError

bp = Blueprint("results", __name__)


@bp.get("/results/<job_id>")
def get_result(job_id: str):
    """A job's status, progress and, once complete, its summary.
    ---
    tags: [results]
    parameters:
      - {name: job_id, in: path, required: true, schema: {type: string}}
    responses:
      200:
        description: The job is finished (complete or failed).
        content: {application/json: {schema: {$ref: '#/components/schemas/Result'}}}
      202:
        description: The job is queued or processing.
        content: {application/json: {schema: {$ref: '#/components/schemas/Result'}}}
      404:
        description: No such job.
        content: {application/json: {schema: {$ref: '#/components/schemas/Error'}}}
    """
    job = context.store().get(job_id, full=False)     # polled often: no input, no checkpoint
    if job is None:
        raise ApiError(404, f"No job with id '{job_id}'.")
    status = 202 if job.status in ("queued", "processing") else 200
    return jsonify(describe(job)), status


def _single_arg(name: str) -> str | None:
    """A query parameter given at most once."""
    values = request.args.getlist(name)
    if len(values) > 1:
        raise ApiError(400, f"'{name}' may be given only once.")
    return values[0] if values else None


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = _single_arg(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"'{name}' must be an integer, got {raw!r}.") from None
    if not low <= value <= high:
        raise ApiError(400, f"'{name}' must be between {low} and {high}.")
    return value


@bp.get("/results")
def list_results():
    """List jobs, newest first.
    ---
    tags: [results]
    parameters:
      - {name: status, in: query, schema: {type: string, enum: [queued, processing, complete, failed, cancelled]}}
      - {name: service, in: query, schema: {type: string}}
      - {name: limit, in: query, schema: {type: integer, minimum: 1, maximum: 500, default: 50}}
      - {name: offset, in: query, schema: {type: integer, minimum: 0, default: 0}}
    responses:
      200:
        description: A page of jobs (without their summaries) and the total count.
        content: {application/json: {schema: {$ref: '#/components/schemas/ResultList'}}}
      400:
        description: Invalid filter.
        content: {application/json: {schema: {$ref: '#/components/schemas/Error'}}}
    """
    status = _single_arg("status") or None
    if status is not None and status not in {s.value for s in JobStatus}:
        raise ApiError(400, f"'status' must be one of {', '.join(s.value for s in JobStatus)}.")
    limit = _int_arg("limit", 50, 1, 500)
    offset = _int_arg("offset", 0, 0, 10**9)
    jobs, total = context.store().list_jobs(status, _single_arg("service") or None, limit, offset)
    items = []
    for job in jobs:
        item = describe(job)
        item.pop("summarization", None)
        items.append(item)
    return jsonify({"jobs": items, "total": total, "limit": limit, "offset": offset})


@bp.delete("/results/<job_id>")
def delete_result(job_id: str):
    """Cancel a queued or running job, or delete a finished one.
    ---
    tags: [results]
    parameters:
      - {name: job_id, in: path, required: true, schema: {type: string}}
    responses:
      200:
        description: What was done (cancelled, cancelling, deleted).
        content: {application/json: {schema: {$ref: '#/components/schemas/Deleted'}}}
      404:
        description: No such job.
        content: {application/json: {schema: {$ref: '#/components/schemas/Error'}}}
    """
    outcome = context.store().cancel(job_id)
    if outcome is None:
        raise ApiError(404, f"No job with id '{job_id}'.")
    messages = {"cancelled": "The job was cancelled before it started.",
                "cancelling": "The job stops before its next batch and ends cancelled.",
                "deleted": "The finished job was deleted."}
    return jsonify({"jobId": job_id, "outcome": outcome, "message": messages[outcome]})
