"""The HTTP API: `create_app(settings)` builds the Flask app; nothing happens at import time."""
from __future__ import annotations

import logging

from flask import Flask

from app.jobs.store import JobStore, open_store
from app.services.registry import ServiceRegistry
from app.settings import Settings


def create_app(settings: Settings | None = None, *, registry: ServiceRegistry | None = None,
               store: JobStore | None = None) -> Flask:
    """Build the app: open the job store, load and watch the services folder, register routes."""
    from app import logs
    from app.web import auth, errors, events, health, metrics, openapi, results, services, ws

    settings = settings or Settings()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_mb * 1024 * 1024
    app.json.sort_keys = False
    app.extensions["settings"] = settings
    if store is None:
        store = open_store(settings)
        store.init_schema()
    app.extensions["store"] = store
    # With BROKER_URL, accepted jobs are handed to the Celery workers (app/jobs/broker.py).
    if settings.broker_url:
        from app.jobs.broker import JobQueue
        app.extensions["queue"] = JobQueue(settings)
    else:
        app.extensions["queue"] = None
    if registry is None:
        registry = ServiceRegistry(settings.services_dir, settings.reload_debounce).start()
    app.extensions["registry"] = registry

    logs.init_app(app)         # before auth: a refused request gets a request id too
    errors.init_app(app)
    auth.init_app(app, settings)
    events.init_app(app, settings)
    ws.init_app(app)
    if settings.cors_origins:
        from flask_cors import CORS
        CORS(app, origins=[o.strip() for o in settings.cors_origins.split(",") if o.strip()])
    prefix = settings.swagger_prefix.rstrip("/") or None
    for blueprint in (services.bp, results.bp, events.bp, ws.bp, health.bp, metrics.bp):
        app.register_blueprint(blueprint, url_prefix=prefix)
    openapi.init_app(app, settings)
    logging.getLogger(__name__).debug("app created with %s", settings.public())
    return app
