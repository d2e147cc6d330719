"""The OpenAPI spec (flasgger) and Swagger UI, with the live service and flavor names in the spec."""
from __future__ import annotations

import copy
import logging
import os
from collections.abc import Mapping

import yaml
from flasgger import Swagger
from flask import Flask, jsonify

from app.services.manifests import Service
from app.settings import Settings
from app.web import context

log = logging.getLogger(__name__)

SPEC_ENDPOINT = "openapi"


def load_base_document(path: str) -> dict:
    """The OpenAPI document flasgger starts from (info, tags, paths, shared schemas)."""
    if not os.path.isfile(path):
        log.warning("swagger: %s not found; starting from an empty document", path)
        return {"openapi": "3.0.3", "info": {"title": "LLM Gateway", "version": "1.0.0"}}
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle) or {}


def add_live_names(spec: dict, services: Mapping[str, Service]) -> None:
    """Put the loaded service and flavor names into the spec (enums, examples, descriptions).

    `FlavorName` lists every flavor of every service (the spec cannot tie a flavor to the
    path's service); its description says which flavors each service has.
    """
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    names = sorted(services)
    service_name = schemas.setdefault("ServiceName", {"type": "string"})
    flavor_name = schemas["FlavorName"] = {
        "type": "string",
        "description": "The flavor to use (may be omitted when the service has only one).",
    }
    if names:
        service_name["enum"] = names
        service_name["example"] = names[0]
        flavor_name["enum"] = sorted({f.name for s in services.values() for f in s.flavors})
        flavor_name["example"] = services[names[0]].flavors[0].name
        flavor_name["description"] += " Flavors by service: " + "; ".join(
            f"`{name}`: {', '.join(f.name for f in services[name].flavors)}" for name in names) + "."
    for form in ("GenerateForm", "GenerateJson"):
        properties = schemas.get(form, {}).get("properties")
        if properties is not None:
            properties["flavor"] = {"$ref": "#/components/schemas/FlavorName"}


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
        """The spec, with the services and flavors loaded right now."""
        # get_apispecs caches the static part (outside debug mode); the live names are added
        # to a copy on every request, so a manifest change shows at the next load of /docs.
        spec = copy.deepcopy(swagger.get_apispecs(SPEC_ENDPOINT))
        spec.pop("definitions", None)
        if prefix:
            # Paths flasgger found in docstrings carry the prefixed rule; the prefix lives in `servers`.
            spec["paths"] = {(path[len(prefix):] or "/") if path.startswith(prefix + "/") else path: item
                             for path, item in spec.get("paths", {}).items()}
        add_live_names(spec, context.registry().snapshot.services)
        return jsonify(spec)

    app.view_functions[f"flasgger.{SPEC_ENDPOINT}"] = live_spec
