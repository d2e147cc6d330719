"""Routes for jobs' results."""
from __future__ import annotations

from flask import Blueprint, jsonify

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
    job = context.store().get(job_id)
    if job is None:
        raise ApiError(404, f"No job with id '{job_id}'.")
    status = 202 if job.status in ("queued", "processing") else 200
    return jsonify(describe(job)), status
