"""The distributed job queue (BROKER_URL): a Celery app and the one message the gateway sends.

API nodes only publish `llm_gateway.run_job(job_id)` once a job is stored; the job itself
(input, progress, checkpoint, result) stays in the job store. `python3 -m app worker`
(app/jobs/worker.py) consumes the messages. Delivery is at-least-once and made safe by the store:

- late acknowledgement (`task_acks_late`): a message is acknowledged when its job has ended,
  not when a worker takes it, so a worker killed mid-job leaves it unacknowledged;
- `task_reject_on_worker_lost`: a pool process that dies hands its message back at once;
- the broker's visibility timeout (`VISIBILITY_TIMEOUT`): an unacknowledged message whose
  worker disappeared (kill -9, a machine lost) is delivered again after that many seconds;
- the worker claims the job by id atomically (JobStore.claim): a second delivery of a job that
  runs elsewhere finds it held, and only takes it over once its lease has run out.

Nothing here connects at import time; `make_celery(settings)` builds the app.
"""
from __future__ import annotations

from typing import Any

from celery import Celery

from app.settings import Settings

TASK_NAME = "llm_gateway.run_job"
QUEUE_NAME = "llm-gateway"


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery settings every API node and worker shares."""
    timeout = settings.visibility_timeout
    return {
        "broker_url": settings.broker_url,
        "broker_transport_options": {
            "visibility_timeout": timeout,
            # How often a worker looks for messages whose worker died: a fraction of the timeout.
            "unacked_restore_interval": max(1, min(10, timeout // 5)),
            "unacked_restore_throttle": 1,
        },
        "broker_connection_retry_on_startup": True,
        "task_default_queue": QUEUE_NAME,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_ignore_result": True,          # results live in the job store, not in Celery
        "task_serializer": "json",
        "accept_content": ["json"],
        # A stored job whose message cannot be published is removed and the client told (503).
        "task_publish_retry_policy": {"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5,
                                      "interval_max": 1.0},
        "worker_prefetch_multiplier": 1,     # a worker takes a job only when it has a free slot
        "worker_hijack_root_logger": False,  # our log format (text or JSON) stays
        "worker_redirect_stdouts": False,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "worker_send_task_events": False,
    }


def make_celery(settings: Settings) -> Celery:
    """The gateway's Celery app on BROKER_URL (no connection is opened until used)."""
    app = Celery("llm_gateway", set_as_current=False)
    app.conf.update(celery_config(settings))
    return app


class JobQueue:
    """What an API node needs from the queue: hand a stored job to the workers."""

    def __init__(self, settings: Settings, celery: Celery | None = None):
        self.celery = celery or make_celery(settings)

    def enqueue(self, job_id: str, countdown: float | None = None) -> None:
        """Publish `run_job(job_id)`; raises if the broker cannot be reached."""
        self.celery.send_task(TASK_NAME, args=[job_id], queue=QUEUE_NAME, countdown=countdown)
