"""The order batches run in. fields == 2: one after the other, each prompt carrying the end of
the summary so far for continuity. fields == 1, or fields == 2 with contextSource "transcript"
(the context is the turns before the batch, known from the plan): independent batches run
concurrently, their outputs kept in transcript order. Either way a checkpoint is saved after
every batch, with the checks of the batches it holds (each batch's Tally is added to the run
then, and only then: a batch redone after a kill -9 is counted once)."""
from __future__ import annotations

import contextvars
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from app.pipeline.checkpoint import Checkpoint
from app.pipeline.checks import Tally
from app.pipeline.halving import summarize_turns
from app.pipeline.prompts import transcript_before, uses_transcript_context
from app.pipeline.run import Run

_POLL_SECONDS = 0.5     # how often the concurrent loop looks at should_stop while waiting


def in_order(run: Run, batches, state: dict[str, Any]) -> list[str]:
    """fields == 2: batch after batch, each with the end of the summary so far."""
    tally = Tally()      # the checks since the last save: what it saves holds exactly their turns

    def save(upto: int, so_far: list[str]) -> None:
        # so_far always extends the lines saved last (halves included): only the rest is new.
        run.finish_batch(tally)
        run.save(Checkpoint({**state, "done": upto, "lines": list(so_far)}, "lines", saved[0]), upto)
        saved[0] = len(so_far)

    done = int(state.get("done", 0))
    lines = list(state.get("lines", []))
    saved = [len(lines)]           # lines the stored checkpoint holds (a fresh state has none)
    run.advance(done)
    for batch in batches:
        end = batch.start + len(batch.turns)
        if end <= done:
            continue                  # finished before the checkpoint
        run.check_stop()
        # A checkpoint falls inside a batch when the plan moved or the batch was halved
        # (on_half: save after its first half); skip the turns that are done.
        skip = max(0, done - batch.start)
        lines += summarize_turns(run, batch.start + skip, batch.turns[skip:], lines, tally, on_half=save)
        done = end
        save(done, lines)
    return lines


def concurrently(run: Run, batches, state: dict[str, Any]) -> list[str]:
    """Independent batches (fields == 1, or the transcript as context), up to the request's
    concurrency in flight, kept in order."""
    concurrency = max(1, run.request.concurrency)
    if uses_transcript_context(run.request):
        every_turn = [turn for batch in batches for turn in batch.turns]
        keep = run.request.flavor.summary_turns

        def context(batch) -> list[str] | None:
            return transcript_before(every_turn, batch.start, keep)
    else:
        def context(batch) -> list[str] | None:
            return None
    saved = state.get("outputs", {})
    sizes = {b.start: len(b.turns) for b in batches}
    # An output is reused only if a batch with the same start and size still exists.
    outputs: dict[int, list[str]] = {
        int(k): v["lines"] for k, v in saved.items() if sizes.get(int(k)) == v["turns"]}
    # The stored outputs are a prefix of the next checkpoint's unless some were dropped here.
    kept = len(outputs) if len(outputs) == len(saved) else 0
    done = sum(sizes[s] for s in outputs)
    run.advance(done)
    todo = [b for b in batches if b.start not in outputs]
    in_flight: dict[Future, tuple[Any, Tally]] = {}
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="summarize")
    try:
        while todo or in_flight:
            while todo and len(in_flight) < concurrency:
                run.check_stop()
                batch, tally = todo.pop(0), Tally()
                # A copy of the context per batch: its log lines carry the job id.
                in_flight[pool.submit(contextvars.copy_context().run, summarize_turns,
                                      run, batch.start, batch.turns, context(batch), tally)] = batch, tally
            finished, _ = wait(in_flight, timeout=_POLL_SECONDS, return_when=FIRST_COMPLETED)
            run.deliver_messages()
            for future in finished:
                batch, tally = in_flight.pop(future)
                outputs[batch.start] = future.result()   # a permanent error stops the job
                run.finish_batch(tally)
                done += len(batch.turns)
                run.save(Checkpoint({**state, "outputs": {
                    str(s): {"turns": sizes[s], "lines": out} for s, out in outputs.items()}},
                    "outputs", kept), done)
                kept = len(outputs)
            run.check_stop()
    finally:
        # Interrupted or failed: wake workers out of their backoff, drop queued batches.
        if todo or in_flight:
            run.stopping.set()
        pool.shutdown(wait=False, cancel_futures=True)
        run.deliver_messages()
    return [line for start in sorted(outputs) for line in outputs[start]]
