"""Prometheus metrics: engine calls, tokens and errors (counted where jobs run) and the store's jobs (at scrape).

Under `python3 -m app` the runner and the web workers are separate processes, so the
counters live in files under PROMETHEUS_MULTIPROC_DIR (the supervisor provides one) and a
scrape sums them. Without that variable (tests, one role alone) they live in this process.
Every metric here has labels, so importing this module creates no file.
"""
from __future__ import annotations

import os
from typing import Iterable

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric

from app.pipeline.engine import Completion, ContextOverflowError, PermanentEngineError, TransientEngineError
from app.jobs.model import JobStatus
from app.jobs.store import JobStore

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST

ENGINE_SECONDS = Histogram(
    "llm_gateway_engine_call_seconds", "Wall time of successful engine calls.", ["flavor"],
    # From a tiny local model (tenths of a second) to a long generation on a loaded vLLM.
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600))
PROMPT_TOKENS = Counter("llm_gateway_prompt_tokens", "Prompt tokens the engine reported.", ["flavor"])
COMPLETION_TOKENS = Counter("llm_gateway_completion_tokens", "Completion tokens the engine reported.", ["flavor"])
ENGINE_ERRORS = Counter(
    "llm_gateway_engine_errors",
    "Failed engine calls by kind: transient (retried), permanent (job fails), context (prompt re-planned).",
    ["kind"])


def error_kind(error: Exception) -> str:
    """transient, permanent, context or other: the label an engine error is counted under."""
    if isinstance(error, ContextOverflowError):
        return "context"
    if isinstance(error, PermanentEngineError):
        return "permanent"
    if isinstance(error, TransientEngineError):
        return "transient"
    return "other"


def count_engine_call(flavor: str, completion: Completion) -> None:
    """Record one successful engine call: its time and tokens."""
    ENGINE_SECONDS.labels(flavor).observe(completion.seconds)
    PROMPT_TOKENS.labels(flavor).inc(completion.prompt_tokens)
    COMPLETION_TOKENS.labels(flavor).inc(completion.completion_tokens)


def count_engine_error(error: Exception) -> None:
    """Record one failed engine call."""
    ENGINE_ERRORS.labels(error_kind(error)).inc()


class StoreCollector:
    """Jobs by status and the queue depth, read from the store when scraped (always current)."""

    def __init__(self, store: JobStore):
        self.store = store

    def collect(self) -> Iterable[Metric]:
        counts = self.store.count_by_status()
        jobs = GaugeMetricFamily("llm_gateway_jobs", "Jobs in the store by status.", labels=["status"])
        for status in JobStatus:
            jobs.add_metric([status.value], counts.get(status.value, 0))
        yield jobs
        yield GaugeMetricFamily("llm_gateway_queue_depth", "Jobs queued, waiting for the runner.",
                                value=counts.get(JobStatus.QUEUED.value, 0))


class _Sources:
    """Several collectors read as one registry by generate_latest."""

    def __init__(self, *collectors):
        self.collectors = collectors

    def collect(self) -> Iterable[Metric]:
        for collector in self.collectors:
            yield from collector.collect()


def scrape(store: JobStore) -> bytes:
    """The exposition text: counters of every process (or this one) and the store's gauges."""
    if os.environ.get(MULTIPROC_ENV):
        counters = multiprocess.MultiProcessCollector(None)
    else:
        counters = REGISTRY
    return generate_latest(_Sources(counters, StoreCollector(store)))


def reset_multiproc_dir(path: str) -> None:
    """Empty a metrics folder left by a previous run (its counters belonged to dead processes)."""
    os.makedirs(path, exist_ok=True)
    for name in os.listdir(path):
        if name.endswith(".db"):
            os.remove(os.path.join(path, name))
