"""Checkpoints: the state a run hands to on_checkpoint after every batch, and how a run resumes
from one without sending finished batches again.

fields == 2 saves the summary so far ("lines") and how many virtual turns it covers ("done");
fields == 1, and fields == 2 with the transcript as context ("context": "transcript"), save each
finished batch's lines by its first virtual turn ("outputs"), in the order they finish. Both name
the plan they count in ("total" virtual turns, and their fingerprint "turns").
"""
from __future__ import annotations

import hashlib
from typing import Any

from app.pipeline.prompts import uses_transcript_context
from app.pipeline.run import Run

CHECKPOINT_VERSION = 2    # 2: the checkpoint names the virtual turns it counts in ("turns")


class Checkpoint(dict):
    """The state handed to on_checkpoint: a JSON dict, which also says how it differs from the
    previous one, so a store can append what is new instead of rewriting everything so far.

    `grows` names its key that only grows ("lines": the summary so far; "outputs": the finished
    batches), and `kept` how many items of it the previous checkpoint already held: the one this
    run resumed from, or the last one it handed out (0: none of them, e.g. after starting over).
    """

    def __init__(self, state: dict[str, Any], grows: str, kept: int):
        super().__init__(state)
        self.grows, self.kept = grows, kept


def resume_state(run: Run, checkpoint: dict | None) -> dict[str, Any]:
    """The state to start from: the checkpoint if it belongs to this plan, else fresh."""
    fresh = {"version": CHECKPOINT_VERSION, "fields": run.request.fields, "total": run.total,
             "turns": run.turns_digest}
    # The transcript as context keeps "outputs" by batch, the summary as context "lines": a
    # fallback flavor with the other contextSource cannot resume the other's checkpoint. Only
    # the new kind is marked, so checkpoints written before the key existed still resume.
    context = "transcript" if uses_transcript_context(run.request) else "summary"
    if context != "summary":
        fresh["context"] = context
    if not checkpoint:
        return fresh
    if (any(checkpoint.get(key) != value for key, value in fresh.items())
            or checkpoint.get("context", "summary") != context):
        run.post("the saved progress does not match this transcript as this flavor cuts it; starting over")
        return fresh
    run.carry_over(checkpoint.get("usage") or {}, checkpoint.get("warnings") or [], checkpoint.get("checks"),
                   int(checkpoint.get("findingsUnworded") or 0))
    return dict(checkpoint)


def partial_lines(checkpoint: dict | None) -> list[str]:
    """The report so far, from a checkpoint: the lines of the batches finished in transcript order
    from the first one, up to the first batch not finished (fields 1 finishes them in any order)."""
    if not checkpoint:
        return []
    if "lines" in checkpoint:                  # fields 2: the summary so far, in order
        return list(checkpoint["lines"])
    outputs, lines, start = checkpoint.get("outputs") or {}, [], 0
    while str(start) in outputs:
        lines += outputs[str(start)]["lines"]
        start += outputs[str(start)]["turns"]
    return lines


def digest_turns(batches) -> str:
    """A fingerprint of the virtual turns, in order: a checkpoint counts its progress in them.

    The same transcript cut by another flavor (a fallback with another createNewTurnAfter or
    tokenizer, an edited manifest) can give as many virtual turns cut elsewhere; resuming at
    turn k of another cut would send some text twice and skip some."""
    digest = hashlib.blake2b(digest_size=16)
    for batch in batches:
        for turn in batch.turns:
            digest.update(turn.speaker.encode("utf-8", "surrogatepass") + b"\x1e"
                          + turn.text.encode("utf-8", "surrogatepass") + b"\x1f")
    return digest.hexdigest()
