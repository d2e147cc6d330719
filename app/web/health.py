"""Liveness and health routes.

The routes' OpenAPI contract is in document/swagger_llm_gateway.yml.
"""
from __future__ import annotations

import time

from flask import Blueprint, jsonify

from app import readiness
from app.web import context

bp = Blueprint("health", __name__)


@bp.get("/healthcheck")
def healthcheck():
    """Liveness: 200 while the app answers (used by the Docker healthcheck)."""
    return "1", 200, {"Content-Type": "text/plain"}


@bp.get("/health")
def health():
    """Health of the parts: database, services, runner, engine."""
    # Always 200: this is a report for people and dashboards; /healthcheck is the liveness probe.
    return jsonify(readiness.report(context.settings(), context.store(), context.registry(), now=time.time()))
