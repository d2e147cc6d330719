"""Liveness and health routes."""
from __future__ import annotations

import time

from flask import Blueprint, jsonify

from app import health as health_checks
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
        description: Every part is healthy.
        content: {application/json: {schema: {$ref: '#/components/schemas/Health'}}}
      503:
        description: A part is down (the body says which).
        content: {application/json: {schema: {$ref: '#/components/schemas/Health'}}}
    """
    report = health_checks.report(context.settings(), context.store(), context.registry(), now=time.time())
    return jsonify(report), 200 if report["status"] == "ok" else 503
