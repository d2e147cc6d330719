"""Liveness and health routes."""
from __future__ import annotations

import time

from flask import Blueprint, jsonify

from app import readiness
from app.web import context

bp = Blueprint("health", __name__)


@bp.get("/healthcheck")
def healthcheck():
    """Liveness: 200 while the app answers (used by the Docker healthcheck).
    ---
    tags: [health]
    responses:
      200:
        description: The app is up.
        content: {text/plain: {schema: {type: string}}}
    """
    return "1", 200, {"Content-Type": "text/plain"}


@bp.get("/health")
def health():
    """Health of the parts: database, services, runner, engine.
    ---
    tags: [health]
    responses:
      200:
        description: The report; `status` is ok, degraded (engine down) or down (database or runner).
        content: {application/json: {schema: {$ref: '#/components/schemas/Health'}}}
    """
    # Always 200: this is a report for people and dashboards; /healthcheck is the liveness probe.
    return jsonify(readiness.report(context.settings(), context.store(), context.registry(), now=time.time()))
