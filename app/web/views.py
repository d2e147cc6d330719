"""What a client sees of a job: the seed's wire contract, which LinTO Studio reads, and our richer fields.

LinTO Studio, the gateway's real client, reads `status`, `message` and `summarization` as the
first LinTO LLM gateway wrote them, and acts on their exact words:

| job        | status       | message                                  | HTTP |
|------------|--------------|------------------------------------------|------|
| queued     | "queued"     | "Processing 0%"                          | 202  |
| processing | "processing" | the percentage, a number (Studio shows `message + "%"`) | 202 |
| complete   | "complete"   | "success", with `summarization`          | 200  |
| failed     | "error"      | the reason                               | 200  |
| cancelled  | "error"      | "The job was cancelled." (`cancelled`: true) | 200 |

Human-readable detail ("engine unavailable, retrying (3/8)") goes to `detail`, never to
`message`. Everything else (progress, error, usage, warnings, checks, service, flavor, timestamps) is
ours; `state` keeps the store's own word (failed, cancelled) for filters and scripts.
The websocket (`task_view`) speaks the same words with the seed's v1 keys (`task_id`, `details`).
"""
from __future__ import annotations

from typing import Any

from app.jobs.model import Job, JobStatus

QUEUED_MESSAGE = "Processing 0%"
SUCCESS = "success"
CANCELLED_MESSAGE = "The job was cancelled."
ERROR = "error"


def wire_status(status: str) -> str:
    """The seed's status word for a store status: failed and cancelled are both "error"."""
    return ERROR if status in (JobStatus.FAILED.value, JobStatus.CANCELLED.value) else status


def http_status(status: str) -> int:
    """202 while the job runs, 200 once it has ended (whatever the outcome)."""
    return 202 if status in (JobStatus.QUEUED.value, JobStatus.PROCESSING.value) else 200


def _message(job: Job) -> Any:
    if job.status == JobStatus.QUEUED.value:
        return QUEUED_MESSAGE
    if job.status == JobStatus.PROCESSING.value:
        return float(job.progress)
    if job.status == JobStatus.COMPLETE.value:
        return SUCCESS
    if job.status == JobStatus.CANCELLED.value:
        return CANCELLED_MESSAGE
    return job.error or "The job failed."


def job_view(job: Job) -> dict[str, Any]:
    """A job as GET /results/<id> shows it."""
    body: dict[str, Any] = {
        "jobId": job.id,
        "status": wire_status(job.status),
        "message": _message(job),
        "progress": 100 if job.status == JobStatus.COMPLETE.value else job.progress,
        "state": job.status,
        "detail": job.message,
        "service": job.service,
        "flavor": job.flavor,
        "createdAt": job.created_at,
        "startedAt": job.started_at,
        "finishedAt": job.finished_at,
    }
    if job.status == JobStatus.COMPLETE.value:
        body["summarization"] = job.result
        if job.warnings:
            body["warnings"] = job.warnings
        if job.checks is not None:
            body["checks"] = job.checks
    elif job.status == JobStatus.FAILED.value:
        body["error"] = job.error
    elif job.status == JobStatus.CANCELLED.value:
        body["error"] = CANCELLED_MESSAGE
        body["cancelled"] = True
    if job.usage is not None:
        body["usage"] = job.usage
        if job.usage.get("flavor"):
            body["producedBy"] = job.usage["flavor"]  # differs from `flavor` after a fallback
    return body


def not_found_view(job_id: str) -> dict[str, Any]:
    """The seed's answer for an unknown id (404), with our error kind beside it."""
    return {"status": "nojob", "message": f"{job_id} does not exist", "error": "not_found"}


def task_view(job: Job) -> dict[str, Any]:
    """A job as the websocket reports it (the seed's v1 keys: task_id, details)."""
    task: dict[str, Any] = {"task_id": job.id, "status": wire_status(job.status), "message": _message(job),
                            "progress": 100 if job.status == JobStatus.COMPLETE.value else job.progress}
    if job.status == JobStatus.COMPLETE.value:
        task["summarization"] = job.result
    elif job.status in (JobStatus.FAILED.value, JobStatus.CANCELLED.value):
        task["error"] = task["details"] = task["message"]
    return task


def unknown_task(job_id: Any) -> dict[str, Any]:
    return {"task_id": job_id, "status": "unknown", "message": "Task does not exist"}
