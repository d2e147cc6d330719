"""The Prometheus scrape route.

The routes' OpenAPI contract is in document/swagger_llm_gateway.yml.
"""
from __future__ import annotations

from flask import Blueprint, Response

from app import telemetry
from app.web import context

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def scrape():
    """Prometheus metrics: jobs by status, queue depth, engine latency, tokens and errors."""
    return Response(telemetry.scrape(context.store()), content_type=telemetry.CONTENT_TYPE)
