"""Routes for jobs' results.

The routes' OpenAPI contract is in document/swagger_llm_gateway.yml.
"""
from __future__ import annotations

from flask import Blueprint, jsonify, request

from app.jobs.model import JobStatus
from app.pipeline.summarize import partial_lines
from app.web import context
from app.web.errors import ApiError
from app.web.views import ERROR, http_status, job_view, not_found_view

bp = Blueprint("results", __name__)


@bp.get("/results/<job_id>")
def get_result(job_id: str):
    """A job's status, progress and, once complete, its summary."""
    store = context.store()
    job = store.get(job_id, full=False)     # polled often: no input, no checkpoint
    if job is None:
        return jsonify(not_found_view(job_id)), 404
    body = job_view(job)
    if job.status == JobStatus.PROCESSING:
        # The report of the batches finished so far, in order (Studio ignores it).
        body["partial"] = "\n".join(partial_lines(store.checkpoint(job_id)))
    return jsonify(body), http_status(job.status)


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
    """List jobs, newest first."""
    status = _single_arg("status") or None
    words = [s.value for s in JobStatus] + [ERROR]
    if status is not None and status not in words:
        raise ApiError(400, f"'status' must be one of {', '.join(words)}.")
    # "error" is the wire word for failed and cancelled jobs alike.
    statuses = [s for s in JobStatus if s.finished and s != JobStatus.COMPLETE] if status == ERROR else status
    limit = _int_arg("limit", 50, 1, 500)
    offset = _int_arg("offset", 0, 0, 10**9)
    jobs, total = context.store().list_jobs(statuses, _single_arg("service") or None, limit, offset)
    items = []
    for job in jobs:
        item = job_view(job)
        item.pop("summarization", None)
        items.append(item)
    return jsonify({"jobs": items, "total": total, "limit": limit, "offset": offset})


@bp.delete("/results/<job_id>")
def delete_result(job_id: str):
    """Cancel a queued or running job, or delete a finished one."""
    outcome = context.store().cancel(job_id)
    if outcome is None:
        raise ApiError(404, f"No job with id '{job_id}'.")
    messages = {"cancelled": "The job was cancelled before it started.",
                "cancelling": "The job stops before its next batch and ends cancelled.",
                "deleted": "The finished job was deleted."}
    return jsonify({"jobId": job_id, "outcome": outcome, "message": messages[outcome]})
