"""Accessors for what create_app attached to the app (settings, job store, registry)."""
from __future__ import annotations

from flask import current_app

from app.jobs.store import JobStore
from app.services.registry import ServiceRegistry
from app.settings import Settings


def settings() -> Settings:
    """The running app's settings."""
    return current_app.extensions["settings"]


def store() -> JobStore:
    """The running app's job store."""
    return current_app.extensions["store"]


def queue():
    """The running app's job queue (a JobQueue with BROKER_URL, else None: the local runner claims jobs)."""
    return current_app.extensions.get("queue")


def registry() -> ServiceRegistry:
    """The running app's service registry."""
    return current_app.extensions["registry"]
