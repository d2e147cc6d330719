"""The Prometheus scrape route."""
from __future__ import annotations

from flask import Blueprint, Response

from app import telemetry
from app.web import context

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def scrape():
    """Prometheus metrics: jobs by status, queue depth, engine latency, tokens and errors.
    ---
    tags: [health]
    responses:
      200:
        description: >
          The Prometheus text format: llm_gateway_jobs{status}, llm_gateway_queue_depth,
          llm_gateway_engine_call_seconds{flavor} (histogram), llm_gateway_prompt_tokens_total{flavor},
          llm_gateway_completion_tokens_total{flavor}, llm_gateway_engine_errors_total{kind}.
        content: {text/plain: {schema: {type: string}}}
    """
    return Response(telemetry.scrape(context.store()), content_type=telemetry.CONTENT_TYPE)
