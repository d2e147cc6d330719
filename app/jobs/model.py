"""What a job is: its status and the row the store gives back, with its JSON columns decoded."""
from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class JobStatus(StrEnum):
    """The life of a job: queued → processing → complete | failed (cancelled on request).

    The one spelling of a status (as rq's JobStatus): a StrEnum, so a member equals, hashes and
    prints as the word stored in the database and sent on the wire.
    """

    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETE = "complete"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def __repr__(self) -> str:
        # In lists and printed figures a status reads as the word it stands for.
        return repr(self.value)

    @property
    def finished(self) -> bool:
        """True once the job has ended: it never changes again (only a purge deletes it)."""
        return self in FINISHED_STATUSES


# The statuses a job ends in, for the queries and loops that ask about all of them at once.
FINISHED_STATUSES = frozenset({JobStatus.COMPLETE, JobStatus.FAILED, JobStatus.CANCELLED})


@dataclass(frozen=True)
class Job:
    """One job row, with its JSON columns decoded."""

    id: str
    service: str
    flavor: str
    params: dict[str, Any]
    input_text: str
    input_name: str | None
    status: JobStatus
    progress: int
    message: str
    result: str | None
    error: str | None
    attempts: int
    checkpoint: dict[str, Any] | None
    usage: dict[str, Any] | None
    warnings: list[str]
    cancel_requested: bool
    created_at: float
    started_at: float | None
    finished_at: float | None
    updated_at: float
    manifest: dict[str, Any] | None = None
    owner: str | None = None
    checks: dict[str, int] | None = None

    @classmethod
    def from_row(cls, row: Any) -> "Job":
        """Build a Job from a row of the jobs table (a SQLAlchemy Row or any mapping)."""
        data = dict(row._mapping) if hasattr(row, "_mapping") else dict(row)
        data.pop("seq", None)
        data["status"] = JobStatus(data["status"])
        data["params"] = json.loads(data["params"] or "{}")
        if isinstance(data["checkpoint"], str):      # else already decoded (JobReads._full_job)
            data["checkpoint"] = json.loads(data["checkpoint"]) if data["checkpoint"] else None
        data["usage"] = json.loads(data["usage"]) if data["usage"] else None
        data["warnings"] = json.loads(data["warnings"]) if data["warnings"] else []
        data["cancel_requested"] = bool(data["cancel_requested"])
        data["manifest"] = json.loads(data["manifest"]) if data.get("manifest") else None
        data["checks"] = json.loads(data["checks"]) if data.get("checks") else None
        return cls(**data)
