"""Running transcripts through a live gateway: submit them all, follow the jobs with one progress bar,
write each summary to `OUT/NAME.txt`, and keep what each job cost.

HTTP, the API key and polling are app/client.py's: this module only adds the batch around them.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from app.client import GatewayClient, GatewayError, PollTimeout, poll

RUN_KEYS = ("calls", "tokens", "seconds")       # averaged over the jobs, beside the scores


def submit_all(client: GatewayClient, transcripts: list[Path], service: str, flavor: str) -> list[dict[str, Any]]:
    """Queue every transcript; one row per file: {"name", "jobId"}, or {"name", "state": "refused", "error"}.

    A transcript the gateway refuses (an HTTP error) does not stop the others; an unreachable gateway does.
    """
    rows = []
    for path in transcripts:
        try:
            rows.append({"name": path.stem, "jobId": client.submit(service, str(path), flavor)})
        except GatewayError as exc:
            if exc.status is None:
                raise
            rows.append({"name": path.stem, "state": "refused", "error": str(exc)})
    return rows


def follow_all(client: GatewayClient, rows: list[dict[str, Any]], out: Path, timeout: float | None = None,
               quiet: bool = False) -> None:
    """Wait for every submitted job, in order, with a bar of jobs done; complete rows with the outcome
    and write each summary to `out/NAME.txt`. Jobs still going at the deadline are marked "timeout"."""
    from tqdm import tqdm

    deadline = time.monotonic() + timeout if timeout else None
    pending = [row for row in rows if "jobId" in row]
    with tqdm(total=len(pending), unit="job", file=sys.stderr, disable=quiet, dynamic_ncols=True) as bar:
        for row in pending:
            def on_update(data: dict[str, Any], name: str = row["name"]) -> None:
                bar.set_postfix_str(f"{name[:30]} {data.get('progress', 0)}%")

            # One deadline for the whole run: a job reached after it is still looked at once.
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                result = poll(client, row["jobId"], on_update, timeout=left)
            except PollTimeout:
                row.update(state="timeout", error=f"still running after {timeout:g} s")
                continue
            except GatewayError as exc:
                if exc.status is None:        # poll() already waited out a restart: the gateway is gone
                    raise
                row.update(state="lost", error=str(exc))      # e.g. the job was deleted meanwhile
                continue
            finally:
                bar.update(1)
            row.update(job_figures(result))
            if result["status"] == "complete":
                (out / f"{row['name']}.txt").write_text(result["summarization"] + "\n", encoding="utf-8")


def checks_total(rows: list[dict[str, Any]]) -> dict[str, int]:
    """The jobs' `checks` added up, count by count (empty when no job reported any)."""
    total: dict[str, int] = {}
    for row in rows:
        for key, count in (row.get("checks") or {}).items():
            total[key] = total.get(key, 0) + count
    return total


def job_figures(result: dict[str, Any]) -> dict[str, Any]:
    """What a finished job says about itself: state, error, calls, tokens, seconds, and `checks` when
    the gateway reports them."""
    usage = result.get("usage") or {}
    figures: dict[str, Any] = {"state": result.get("state") or result["status"]}
    if result["status"] != "complete":
        figures["error"] = result.get("error") or result.get("message")
    if usage:
        figures.update(calls=usage.get("calls"), prompt_tokens=usage.get("prompt_tokens"),
                       completion_tokens=usage.get("completion_tokens"),
                       tokens=(usage.get("prompt_tokens") or 0) + (usage.get("completion_tokens") or 0))
    if result.get("finishedAt") is not None and result.get("createdAt") is not None:
        # From the submission on: a job's time in the queue is part of what a user waits.
        figures["seconds"] = result["finishedAt"] - result["createdAt"]
    if "checks" in result:
        figures["checks"] = result["checks"]
    return figures
