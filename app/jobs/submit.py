"""Accepting a transcript for a service: validate everything, then queue one job."""
from __future__ import annotations

import logging
from typing import Any

from app.jobs.store import JobStore
from app.services.registry import ServiceRegistry
from app.pipeline.transcript import TranscriptError, decode_bytes, parse_transcript

log = logging.getLogger(__name__)


class NotFound(LookupError):
    """The service or flavor asked for does not exist."""


class InvalidSubmission(ValueError):
    """The submission cannot be processed; the message says why."""


class QueueUnavailable(RuntimeError):
    """The job could not be handed to the workers' queue (the broker does not answer); nothing was kept."""


def shown(value, most: int = 80) -> str:
    """A value as an error message may echo it: quoted, and cut (a 5 MB flavor is not sent back)."""
    text = repr(value) if not isinstance(value, str) else f"'{value}'"
    return text if len(text) <= most else text[:most] + "…'"


def check_text(name: str, value: str | None) -> None:
    """Refuse text that cannot be stored: a lone surrogate ('\\ud800' in JSON) is not UTF-8."""
    if value is not None:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidSubmission(f"'{name}' contains invalid Unicode (a lone surrogate); send UTF-8 text.") from None


def _check_range(name: str, value: float | None, low: float, high: float, low_open: bool = False) -> None:
    if value is None:
        return
    if (value <= low if low_open else value < low) or value > high:
        bound = f"greater than {low}" if low_open else f"at least {low}"
        raise InvalidSubmission(f"'{name}' must be {bound} and at most {high}, got {value}")


def submit(store: JobStore, registry: ServiceRegistry, service_name: str, *, content: bytes | str,
           filename: str | None = None, flavor: str | None = None, temperature: float | None = None,
           top_p: float | None = None, queue: Any = None) -> str:
    """Validate a submission against the live services, store it, hand it to `queue` if any; return the job id.

    Without a queue the local runner claims the stored job. With one (BROKER_URL), the job is
    sent to the Celery workers once stored; if the broker does not answer, the stored job is
    removed again and QueueUnavailable is raised, so a client never holds an id nobody will run.
    """
    check_text("flavor", flavor)
    service = registry.get(service_name)
    if service is None:
        raise NotFound(f"No service called {shown(service_name)}. Known services: "
                       f"{', '.join(sorted(registry.snapshot.services)) or 'none'}.")
    chosen = service.flavor(flavor)
    if chosen is None:
        names = ", ".join(f.name for f in service.flavors)
        if not flavor:
            raise InvalidSubmission(f"Service '{service.name}' has several flavors; choose one with 'flavor' ({names}).")
        raise NotFound(f"Service '{service.name}' has no flavor {shown(flavor)}. Its flavors: {names}.")
    _check_range("temperature", temperature, 0.0, 2.0)
    _check_range("top_p", top_p, 0.0, 1.0, low_open=True)
    try:
        # Decoded once and stored as text, so the runner parses exactly what was validated here;
        # parse_transcript raises when the text has no words.
        text = content if isinstance(content, str) else decode_bytes(content)
        check_text("content", text)
        parse_transcript(text, filename)
    except TranscriptError as exc:
        raise InvalidSubmission(str(exc)) from None
    params: dict[str, Any] = {}
    if temperature is not None:
        params["temperature"] = temperature
    if top_p is not None:
        params["top_p"] = top_p
    # Recorded with the job: the manifest it was accepted with, whatever happens to the folder later
    # (its template is read when the job starts: app/jobs/execute.py).
    job_id = store.create_job(service=service.name, flavor=chosen.name, input_text=text, params=params,
                              input_name=filename, manifest=service.recorded_for(chosen.name))
    if queue is not None:
        try:
            queue.enqueue(job_id)
        except Exception as exc:
            log.error("submissions: job %s could not be queued (%s: %s); it was not kept", job_id,
                      type(exc).__name__, exc)
            store.delete(job_id)
            raise QueueUnavailable("The job queue is unavailable; nothing was queued. Try again shortly.") from None
    return job_id
