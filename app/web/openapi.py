"""The OpenAPI spec (flasgger) and Swagger UI, with the live service names in the spec."""
from __future__ import annotations

import copy
import logging
import os

import yaml
from flasgger import Swagger
from flask import Flask, jsonify

from app.settings import Settings
from app.web import context

log = logging.getLogger(__name__)

SPEC_ENDPOINT = "openapi"


def load_base_document(path: str) -> dict:
    """The base document flasgger starts from (info, tags, shared schemas)."""
    if not os.path.isfile(path):
        log.warning("swagger: %s not found; starting from an empty document", path)
        return {"openapi": "3.0.3", "info": {"title": "LLM Gateway", "version": "1.0.0"}}
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle) or {}


def init_app(app: Flask, settings: Settings) -> None:
    """Serve the spec at <prefix>/openapi.json and Swagger UI at <prefix><swagger_url>."""
    prefix = settings.swagger_prefix.rstrip("/")
    base = load_base_document(settings.swagger_path)
    base.setdefault("info", {})["title"] = settings.service_name
    if prefix:
        base["servers"] = [{"url": prefix}]
    config = {
        "headers": [],
        "specs": [{"endpoint": SPEC_ENDPOINT, "route": f"{prefix}/openapi.json",
                   "rule_filter": lambda rule: not rule.endpoint.startswith(("flasgger", "static")),
                   "model_filter": lambda tag: True}],
        "static_url_path": f"{prefix}/flasgger_static",
        "swagger_ui": True,
        "specs_route": f"{prefix}{settings.swagger_url}",
        "openapi": base.get("openapi", "3.0.3"),
    }
    swagger = Swagger(app, template=base, config=config, merge=True)
    app.extensions["swagger"] = swagger

    def live_spec():
        """The spec, with the service names loaded right now."""
        spec = copy.deepcopy(swagger.get_apispecs(SPEC_ENDPOINT))
        spec.pop("definitions", None)
        if prefix:
            # flasgger writes the prefixed rule; the prefix lives in `servers` instead.
            spec["paths"] = {path[len(prefix):] or "/": item for path, item in spec.get("paths", {}).items()}
        names = sorted(context.registry().snapshot.services)
        schema = spec.setdefault("components", {}).setdefault("schemas", {}).setdefault("ServiceName", {})
        if names:
            schema["enum"] = names
            schema["example"] = names[0]
        return jsonify(spec)

    app.view_functions[f"flasgger.{SPEC_ENDPOINT}"] = live_spec
