"""One engine call of a run: retries with backoff under the job's budget, usage and metrics."""
from __future__ import annotations

from typing import Callable

from app import telemetry
from app.pipeline.engine import (Completion, EmptyAnswerError, EngineError, TransientEngineError,
                                 call_with_retries)
from app.pipeline.run import Run


def call(run: Run, prompt: str | Callable[[], str], what: str = "a prompt") -> Completion:
    """One completion with retries on transient errors; counts usage (cached prompt tokens too).

    `prompt` may be a function that builds it: it is then built inside each attempt, so an
    engine that stops answering its /tokenize (used to fit the prompt) is retried too.
    `what` names what the prompt holds ("turns 3-10") in the error of an answer that stays empty.
    """
    request = run.request
    tries, last_empty = 0, False

    def on_retry(attempt: int, max_retries: int, error: Exception) -> None:
        if not run.take_retry():
            # The job's budget is spent: give up now (the runner may fall back).
            raise TransientEngineError(f"{error}{_budget_spent(run)}",
                                       status_code=getattr(error, "status_code", None)) from None
        trouble = "the engine returned an empty answer" if last_empty else "engine unavailable"
        run.post(f"{trouble}, retrying ({attempt}/{max_retries})")

    def attempt() -> Completion:
        nonlocal tries, last_empty
        tries += 1
        try:
            return run.engine.complete(
                model=request.flavor.model, prompt=prompt() if callable(prompt) else prompt,
                temperature=request.temperature, top_p=request.top_p,
                max_tokens=request.flavor.max_generation_length)
        except EngineError as error:
            last_empty = isinstance(error, EmptyAnswerError)
            telemetry.count_engine_error(error)
            run.add_usage(failed_calls=1)    # `calls` counts answers; every call that got an error counts here
            raise

    try:
        completion = call_with_retries(attempt, request.retry_policy, on_retry=on_retry,
                                       sleep=run.backoff_sleep)
    except TransientEngineError as error:
        if not last_empty:
            raise
        # Still transient: a fallback flavor (another model or engine) may answer. The
        # message names the turns, which would otherwise be missing from a "complete" summary.
        budget = "" if isinstance(error, EmptyAnswerError) else _budget_spent(run)
        raise EmptyAnswerError(f"the engine returned an empty answer for {what} after {tries} "
                               f"{'try' if tries == 1 else 'tries'}{budget}") from None
    telemetry.count_engine_call(request.flavor.name, completion)
    run.count_answer(completion)
    return completion


def _budget_spent(run: Run) -> str:
    return f" (the job's retry budget of {run.request.job_retries} is spent)"


def cut_at(flavor, completion: Completion) -> str:
    """Where a cut answer stopped, as the engine counted it: maxGenerationLength, or less when the
    engine's own context ran out first."""
    limit = flavor.max_generation_length
    tokens = completion.completion_tokens
    if tokens and tokens < limit:
        return f"{tokens} tokens (the engine's context was full before maxGenerationLength, {limit})"
    return f"{limit} tokens (maxGenerationLength)"
