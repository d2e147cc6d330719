"""The pipeline: turns -> batches -> engine calls -> summary, with progress and checkpoints.

fields == 2 (e.g. "cra"): batches run in order, each prompt carrying the end of the summary
so far for continuity. fields == 1 (e.g. "cred"): batches are independent and run
concurrently. Either way a batch whose answer is cut (finish_reason "length") or whose prompt
overflows the context is retried in two halves (unless the answer was cut because the model went
into a loop: app/pipeline/repetition.py), and the state after every batch is handed to
`on_checkpoint` so an interrupted job resumes without sending finished batches again.
"""
from __future__ import annotations

import contextvars
import difflib
import hashlib
import logging
import queue
import re
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from app import telemetry
from app.pipeline import chunking
from app.pipeline.engine import (Completion, ContextOverflowError, EmptyAnswerError, EngineClient, EngineError,
                        RetryPolicy, TransientEngineError, call_with_retries)
from app.pipeline.repetition import trim_repetition
from app.services.manifests import Flavor
from app.pipeline.transcript import Turn

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 2    # 2: the checkpoint names the virtual turns it counts in ("turns")
_SPEAKER_LINE = re.compile(r"^([^:\n]{1,100}?)\s*:(?:\s+(.*))?$")   # "12:30" is no speaker
_FENCE = re.compile(r"^```[\w-]*\s*$")
_MAX_REDUCE_PASSES = 8
_POLL_SECONDS = 0.5     # how often the concurrent loop looks at should_stop while waiting
_PLAN_CHECK_SECONDS = 0.25   # how often planning asks should_stop (it may query the job store)
_SLEEP_SLICE = 1.0      # backoff sleeps are cut in slices so a stop is not held up
_FUZZY_ECHO = 0.9       # a line this similar to a template line (difflib ratio) is an echo
_FUZZY_ECHO_MIN = 30    # ... if the template line is this long: short lines must match exactly


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


class JobInterrupted(Exception):
    """should_stop() asked to stop; the last checkpoint saved is where the job resumes."""


@dataclass
class SummaryResult:
    """The summary text, engine usage totals, and warnings the user must see."""

    text: str
    usage: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


def summarize(turns: Sequence[Turn], *, template: str, fields: int, flavor: Flavor, tokenizer,
              engine: EngineClient, temperature: float, top_p: float,
              reduce_template: str | None = None, checkpoint: dict | None = None,
              on_checkpoint: Callable[[int, dict], None] = lambda progress, state: None,
              on_message: Callable[[str], None] = lambda msg: None,
              should_stop: Callable[[], bool] = lambda: False, concurrency: int = 8,
              retry_policy: RetryPolicy | None = None, job_retries: int | None = None,
              sleep: Callable[[float], None] = time.sleep) -> SummaryResult:
    """Summarize `turns` with the flavor's model; resumes from `checkpoint` when given.

    `retry_policy` bounds the retries of one engine call; `job_retries`, when given, bounds the
    retries of the whole job (every call together, resumed runs included).
    """
    if fields not in (1, 2):
        raise ValueError(f"a template must have 1 or 2 fields, not {fields}")
    reserve = chunking.default_context_reserve(flavor) if fields == 2 else 0
    batches = chunking.plan_batches(list(turns), template, fields, flavor, tokenizer,
                                    context_reserve=reserve, check=_planning_check(should_stop))
    job = _Job(template=template, fields=fields, flavor=flavor, tokenizer=tokenizer,
               engine=engine, temperature=temperature, top_p=top_p, reserve=reserve,
               total=sum(len(b.turns) for b in batches), turns_digest=digest_turns(batches),
               on_checkpoint=on_checkpoint,
               on_message=on_message, should_stop=should_stop,
               policy=retry_policy or RetryPolicy(), sleep=sleep)
    job.job_retries = job_retries
    state = job.resume_state(checkpoint)
    try:
        if fields == 2:
            lines = job.run_in_order(batches, state)
        else:
            lines = job.run_concurrently(batches, state, max(1, concurrency))
        if flavor.reduce_summary and lines:
            if reduce_template:
                lines = job.reduce(lines, reduce_template)
            else:
                job.warn("reduceSummary is set but the flavor has no reduce prompt; not reduced")
    except EngineError as error:
        error.usage = job.usage_report()    # a failed job still reports the calls and retries it spent
        raise
    if flavor.consolidate_summary:
        lines = consolidate(lines)
    return SummaryResult("\n".join(lines), job.usage_report(), list(job.warnings))


def _planning_check(should_stop: Callable[[], bool]) -> Callable[[], None]:
    """The `check` planning calls at every piece: it asks should_stop a few times a second
    (often enough that a cancel or a shutdown need not wait for a huge transcript to be planned,
    seldom enough that the store's queries cost nothing) and raises JobInterrupted when told."""
    asked = [float("-inf")]

    def check() -> None:
        now = time.monotonic()
        if now - asked[0] < _PLAN_CHECK_SECONDS:
            return
        asked[0] = now
        if should_stop():
            raise JobInterrupted("stopped while planning the batches")
    return check


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


def clean_output(text: str, template: str = "") -> list[str]:
    """The model's answer as summary lines: no wrapping code fence, no blank lines, stripped,
    no line that repeats a line of the prompt template (small models echo their instructions,
    sometimes with a letter changed), and no line twice in a row (a model stuttering)."""
    lines = text.strip().splitlines()
    if lines and _FENCE.match(lines[0].strip()):
        lines = lines[1:]
    if lines and lines[-1].strip() == "```":
        lines = lines[:-1]
    instructions = [line.strip() for line in template.replace("{}", "").splitlines() if line.strip()]
    kept: list[str] = []
    for line in (line.strip() for line in lines):
        if line and not _echoes(line, instructions) and not (kept and kept[-1] == line):
            kept.append(line)
    return kept


def _echoes(line: str, instructions: list[str]) -> bool:
    """The line is one of the template's lines, word for word or nearly (a long line only)."""
    for instruction in instructions:
        if line == instruction:
            return True
        if len(instruction) >= _FUZZY_ECHO_MIN:
            matcher = difflib.SequenceMatcher(None, line, instruction, autojunk=False)
            # The two cheap upper bounds first: most lines differ at once in length or letters.
            if (matcher.real_quick_ratio() >= _FUZZY_ECHO and matcher.quick_ratio() >= _FUZZY_ECHO
                    and matcher.ratio() >= _FUZZY_ECHO):
                return True
    return False


def consolidate(lines: list[str]) -> list[str]:
    """Merge consecutive lines of the same speaker: "Alice : a" + "Alice : b" -> "Alice : a b"."""
    merged: list[str] = []
    last_speaker = None
    for line in lines:
        match = _SPEAKER_LINE.match(line)
        speaker = match.group(1).strip() if match else None
        if speaker and speaker == last_speaker:
            text = (match.group(2) or "").strip()
            if text:
                merged[-1] = f"{merged[-1]} {text}"
            continue
        merged.append(line)
        last_speaker = speaker
    return merged


class _Job:
    """One summarize() run: engine calls, usage, warnings, progress and checkpoints."""

    def __init__(self, *, template, fields, flavor, tokenizer, engine, temperature, top_p,
                 reserve, total, turns_digest, on_checkpoint, on_message, should_stop, policy, sleep):
        self.template, self.fields, self.flavor = template, fields, flavor
        self.tokenizer, self.engine = tokenizer, engine
        self.temperature, self.top_p = temperature, top_p
        self.reserve, self.total, self.turns_digest = reserve, total, turns_digest
        self.on_checkpoint, self.on_message, self.should_stop = on_checkpoint, on_message, should_stop
        self.policy, self.sleep = policy, sleep
        self.usage = {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0,
                      "engine_seconds": 0.0, "retries": 0, "failed_calls": 0}
        self.warnings: list[str] = []
        self.job_retries: int | None = None   # the whole job's retry budget (None: no limit)
        self.progress = 0
        self.lock = threading.Lock()
        # Worker threads never call the caller's callbacks (they may touch SQLite, which is
        # per-thread): they queue messages and read a stop flag the main thread maintains.
        self.main_thread = threading.current_thread()
        self.messages: queue.Queue[str] = queue.Queue()
        self.stopping = threading.Event()

    # --- callbacks, usage, progress ----------------------------------------------------

    def post(self, message: str) -> None:
        if threading.current_thread() is self.main_thread:
            self.on_message(message)
        else:
            self.messages.put(message)

    def deliver_messages(self) -> None:
        while True:
            try:
                self.on_message(self.messages.get_nowait())
            except queue.Empty:
                return

    def warn(self, warning: str) -> None:
        log.warning("summarize: %s", warning)
        with self.lock:
            self.warnings.append(warning)

    def stop_requested(self) -> bool:
        if threading.current_thread() is self.main_thread and self.should_stop():
            self.stopping.set()
        return self.stopping.is_set()

    def check_stop(self) -> None:
        if self.stop_requested():
            raise JobInterrupted(f"stopped at {self.progress}%")

    def usage_report(self) -> dict[str, Any]:
        with self.lock:
            return {**self.usage, "engine_seconds": round(self.usage["engine_seconds"], 3)}

    def advance(self, done: int) -> int:
        """Progress after `done` virtual turns: only grows, and 100 is the caller's to set."""
        if self.total:
            self.progress = max(self.progress, min(99, done * 100 // self.total))
        return self.progress

    def checkpoint(self, state: dict[str, Any], done: int) -> None:
        state.update(usage=self.usage_report(), warnings=list(self.warnings))
        self.on_checkpoint(self.advance(done), state)

    def resume_state(self, checkpoint: dict | None) -> dict[str, Any]:
        """The state to start from: the checkpoint if it belongs to this plan, else fresh."""
        fresh = {"version": CHECKPOINT_VERSION, "fields": self.fields, "total": self.total,
                 "turns": self.turns_digest}
        if not checkpoint:
            return fresh
        if any(checkpoint.get(key) != value for key, value in fresh.items()):
            self.post("the saved progress does not match this transcript as this flavor cuts it; starting over")
            return fresh
        with self.lock:
            for key, value in (checkpoint.get("usage") or {}).items():
                if key in self.usage:
                    self.usage[key] += value
            self.warnings.extend(checkpoint.get("warnings") or [])
        return dict(checkpoint)

    # --- one engine call -----------------------------------------------------------------

    def call(self, prompt: str | Callable[[], str], what: str = "a prompt") -> Completion:
        """One completion with retries on transient errors; counts usage.

        `prompt` may be a function that builds it: it is then built inside each attempt, so an
        engine that stops answering its /tokenize (used to fit the prompt) is retried too.
        `what` names what the prompt holds ("turns 3-10") in the error of an answer that stays empty.
        """
        tries, last_empty = 0, False

        def on_retry(attempt: int, max_retries: int, error: Exception) -> None:
            with self.lock:
                spent = self.usage["retries"]
                if self.job_retries is not None and spent >= self.job_retries:
                    # The job's budget is spent: give up now (the runner may fall back).
                    raise TransientEngineError(f"{error} (the job's retry budget of {self.job_retries} is spent)",
                                               status_code=getattr(error, "status_code", None)) from None
                self.usage["retries"] += 1
            trouble = "the engine returned an empty answer" if last_empty else "engine unavailable"
            self.post(f"{trouble}, retrying ({attempt}/{max_retries})")

        def attempt() -> Completion:
            nonlocal tries, last_empty
            tries += 1
            try:
                return self.engine.complete(
                    model=self.flavor.model, prompt=prompt() if callable(prompt) else prompt,
                    temperature=self.temperature,
                    top_p=self.top_p, max_tokens=self.flavor.max_generation_length)
            except EngineError as error:
                last_empty = isinstance(error, EmptyAnswerError)
                telemetry.count_engine_error(error)
                with self.lock:       # `calls` counts answers; every call that got an error counts here
                    self.usage["failed_calls"] += 1
                raise

        try:
            completion = call_with_retries(attempt, self.policy, on_retry=on_retry,
                                           sleep=self.backoff_sleep)
        except TransientEngineError as error:
            if not last_empty:
                raise
            # Still transient: a fallback flavor (another model or engine) may answer. The
            # message names the turns, which would otherwise be missing from a "complete" summary.
            budget = "" if isinstance(error, EmptyAnswerError) else \
                f" (the job's retry budget of {self.job_retries} is spent)"
            raise EmptyAnswerError(f"the engine returned an empty answer for {what} after {tries} "
                                   f"{'try' if tries == 1 else 'tries'}{budget}") from None
        telemetry.count_engine_call(self.flavor.name, completion)
        with self.lock:
            self.usage["calls"] += 1
            self.usage["prompt_tokens"] += completion.prompt_tokens
            self.usage["completion_tokens"] += completion.completion_tokens
            self.usage["engine_seconds"] += completion.seconds
        return completion

    def cut_at(self, completion: Completion) -> str:
        """Where a cut answer stopped, as the engine counted it: maxGenerationLength, or less when the
        engine's own context ran out first."""
        limit = self.flavor.max_generation_length
        tokens = completion.completion_tokens
        if tokens and tokens < limit:
            return f"{tokens} tokens (the engine's context was full before maxGenerationLength, {limit})"
        return f"{limit} tokens (maxGenerationLength)"

    def backoff_sleep(self, seconds: float) -> None:
        """Wait between retries, giving up early when the job is asked to stop."""
        while seconds > 0:
            self.check_stop()
            step = min(_SLEEP_SLICE, seconds)
            self.sleep(step)
            seconds -= step
        self.check_stop()

    # --- turns -> summary lines ----------------------------------------------------------

    def context(self, lines: list[str], reserve: int) -> str:
        """The last summary_turns lines of the summary, trimmed from the start to `reserve` tokens."""
        keep = self.flavor.summary_turns
        if keep <= 0 or not lines or reserve <= 0:
            return ""
        tail = lines[-keep:]
        while len(tail) > 1 and self.tokenizer.count("\n".join(tail)) > reserve:
            tail = tail[1:]
        text = "\n".join(tail)
        if self.tokenizer.count(text) > reserve:
            text = _keep_end(text, reserve, self.tokenizer)
        return text

    def turns_prompt(self, turns: Sequence[Turn], prior: list[str] | None) -> str:
        new_turns = "\n".join(chunking.render_turn(t) for t in turns)
        if self.fields == 1:
            return chunking.fill_template(self.template, [new_turns])
        # The planner counted the batch with an empty context and the context on its own; where
        # the context meets the template, tokens can merge so that the whole costs a little more
        # than its parts. A prompt with a context is counted whole, and any excess comes off the
        # context: no prompt past the context length is ever sent (some engines cut it silently).
        limit = chunking.prompt_limit(self.flavor, self.tokenizer)
        reserve = self.reserve
        while True:
            context = self.context(prior or [], reserve)
            prompt = chunking.fill_template(self.template, [context, new_turns])
            if not context:
                return prompt        # the very prompt the planner fitted: no need to count it again
            excess = self.tokenizer.count(prompt) - limit
            if excess <= 0:
                return prompt
            reserve -= excess

    def summarize_turns(self, start: int, turns: Sequence[Turn], prior: list[str] | None,
                        on_half: Callable[[int, list[str]], None] | None = None) -> list[str]:
        """Summary lines of these turns; halves them when the answer is cut or too long.

        `on_half(done, lines)` is called when the first half of a batch cut between whole turns
        is summarized (fields == 2: `lines` is the whole summary so far), to save a checkpoint.
        """
        try:
            completion = self.call(lambda: self.turns_prompt(turns, prior), _turns_label(start, turns))
        except ContextOverflowError:
            halves = _halve_turns(turns)
            if halves is None:
                raise
            log.info("summarize: prompt of turn %d (%d turns) overflows; halving", start, len(turns))
            # One turn halved is cut by words: its first half is not a whole turn done.
            return self.summarize_halves(start, halves, prior, on_half if len(turns) > 1 else None)
        if completion.finish_reason == "length":
            looped = trim_repetition(completion.text)
            if looped is not None:       # smaller batches would loop again: see app/pipeline/repetition.py
                self.warn(f"the answer for {_turns_label(start, turns)} went into a loop (the same words "
                          f"repeated up to maxGenerationLength); the repetition was cut off")
                return clean_output(looped, self.template)
            if len(turns) > 1:
                log.info("summarize: answer for turn %d (%d turns) cut; halving", start, len(turns))
                return self.summarize_halves(start, (turns[:len(turns) // 2],
                                                     turns[len(turns) // 2:]), prior, on_half)
            self.warn(f"the summary of {_turns_label(start, turns)} was cut at {self.cut_at(completion)}; kept as is")
        return clean_output(completion.text, self.template)

    def summarize_halves(self, start: int, halves: tuple[Sequence[Turn], Sequence[Turn]],
                         prior: list[str] | None,
                         on_half: Callable[[int, list[str]], None] | None = None) -> list[str]:
        first, second = halves
        out = self.summarize_turns(start, first, prior, on_half)
        # With fields == 2 the second half's context is the summary including the first half.
        after = (prior or []) + out if self.fields == 2 else prior
        # A batch whose answers keep being cut can take many calls (a small model rambling to
        # maxGenerationLength): save the half that is done, and honour a stop or cancel here
        # rather than at the end of the whole batch.
        if on_half is not None:
            on_half(start + len(first), after)
        self.check_stop()
        return out + self.summarize_turns(start + len(first), second, after, on_half)

    def run_in_order(self, batches, state: dict[str, Any]) -> list[str]:
        """fields == 2: batch after batch, each with the end of the summary so far."""
        def save(upto: int, so_far: list[str]) -> None:
            # so_far always extends the lines saved last (halves included): only the rest is new.
            self.checkpoint(Checkpoint({**state, "done": upto, "lines": list(so_far)}, "lines", saved[0]), upto)
            saved[0] = len(so_far)

        done = int(state.get("done", 0))
        lines = list(state.get("lines", []))
        saved = [len(lines)]           # lines the stored checkpoint holds (a fresh state has none)
        self.advance(done)
        for batch in batches:
            end = batch.start + len(batch.turns)
            if end <= done:
                continue                  # finished before the checkpoint
            self.check_stop()
            # A checkpoint falls inside a batch when the plan moved or the batch was halved
            # (on_half: save after its first half); skip the turns that are done.
            skip = max(0, done - batch.start)
            lines += self.summarize_turns(batch.start + skip, batch.turns[skip:], lines, on_half=save)
            done = end
            save(done, lines)
        return lines

    def run_concurrently(self, batches, state: dict[str, Any], concurrency: int) -> list[str]:
        """fields == 1: independent batches, up to `concurrency` in flight, kept in order."""
        saved = state.get("outputs", {})
        sizes = {b.start: len(b.turns) for b in batches}
        # An output is reused only if a batch with the same start and size still exists.
        outputs: dict[int, list[str]] = {
            int(k): v["lines"] for k, v in saved.items() if sizes.get(int(k)) == v["turns"]}
        # The stored outputs are a prefix of the next checkpoint's unless some were dropped here.
        kept = len(outputs) if len(outputs) == len(saved) else 0
        done = sum(sizes[s] for s in outputs)
        self.advance(done)
        todo = [b for b in batches if b.start not in outputs]
        in_flight: dict[Future, Any] = {}
        pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="summarize")
        try:
            while todo or in_flight:
                while todo and len(in_flight) < concurrency:
                    self.check_stop()
                    batch = todo.pop(0)
                    # A copy of the context per batch: its log lines carry the job id.
                    in_flight[pool.submit(contextvars.copy_context().run, self.summarize_turns,
                                          batch.start, batch.turns, None)] = batch
                finished, _ = wait(in_flight, timeout=_POLL_SECONDS, return_when=FIRST_COMPLETED)
                self.deliver_messages()
                for future in finished:
                    batch = in_flight.pop(future)
                    outputs[batch.start] = future.result()   # a permanent error stops the job
                    done += len(batch.turns)
                    self.checkpoint(Checkpoint({**state, "outputs": {
                        str(s): {"turns": sizes[s], "lines": out} for s, out in outputs.items()}},
                        "outputs", kept), done)
                    kept = len(outputs)
                self.check_stop()
        finally:
            # Interrupted or failed: wake workers out of their backoff, drop queued batches.
            if todo or in_flight:
                self.stopping.set()
            pool.shutdown(wait=False, cancel_futures=True)
            self.deliver_messages()
        return [line for start in sorted(outputs) for line in outputs[start]]

    # --- reduce --------------------------------------------------------------------------

    def reduce(self, lines: list[str], template: str) -> list[str]:
        """Condense the summary with the reduce prompt, in groups of lines until it fits one call."""
        budget = (self.flavor.total_context_length - self.flavor.max_generation_length
                  - self.tokenizer.chat_overhead()
                  - self.tokenizer.count(chunking.fill_template(template, [""])))
        for _ in range(_MAX_REDUCE_PASSES):
            if self.tokenizer.count("\n".join(lines)) <= budget:
                return self.reduce_lines(lines, template)
            groups = _group_lines(lines, budget, self.tokenizer)
            self.post(f"reducing the summary in {len(groups)} parts")
            reduced = [out for group in groups for out in self.reduce_lines(group, template)]
            if self.tokenizer.count("\n".join(reduced)) >= self.tokenizer.count("\n".join(lines)):
                self.warn("the summary did not get shorter when reduced; kept the last pass")
                return reduced
            lines = reduced
        self.warn(f"the summary still did not fit one call after {_MAX_REDUCE_PASSES} reduce passes")
        return lines

    def reduce_lines(self, lines: list[str], template: str) -> list[str]:
        """One reduce call over these lines; halves them when the answer is cut or too long."""
        try:
            completion = self.call(chunking.fill_template(template, ["\n".join(lines)]),
                                   f"a reduce of {len(lines)} summary line{'s' if len(lines) > 1 else ''}")
        except ContextOverflowError:
            if len(lines) < 2:
                raise
            return self.reduce_halves(lines, template)
        if completion.finish_reason == "length":
            looped = trim_repetition(completion.text)
            if looped is not None:
                self.warn("a reduced part of the summary went into a loop; the repetition was cut off")
                return clean_output(looped, template)
            if len(lines) > 1:
                return self.reduce_halves(lines, template)
            self.warn(f"a reduced part of the summary was cut at {self.cut_at(completion)}; kept as is")
        return clean_output(completion.text, template)

    def reduce_halves(self, lines: list[str], template: str) -> list[str]:
        middle = len(lines) // 2
        return self.reduce_lines(lines[:middle], template) + self.reduce_lines(lines[middle:], template)


def _turns_label(start: int, turns: Sequence[Turn]) -> str:
    """'turns 3-10' or 'turn 3 (Speaker)', numbered from 1 like the warnings users read."""
    if len(turns) == 1:
        return f"turn {start + 1}" + (f" ({turns[0].speaker})" if turns[0].speaker else "")
    return f"turns {start + 1}-{start + len(turns)}"


def _halve_turns(turns: Sequence[Turn]) -> tuple[Sequence[Turn], Sequence[Turn]] | None:
    """Two halves of the turns; a single turn is cut in two by words; None if it cannot be."""
    if len(turns) > 1:
        return turns[:len(turns) // 2], turns[len(turns) // 2:]
    words = turns[0].text.split()
    if len(words) < 2:
        return None
    middle = len(words) // 2
    speaker = turns[0].speaker
    return ((Turn(speaker, " ".join(words[:middle])),),
            (Turn(speaker, " ".join(words[middle:])),))


def _keep_end(text: str, max_tokens: int, tokenizer) -> str:
    """The longest end of `text`, cut at a word boundary, that fits max_tokens."""
    words = text.split(" ")
    low, high = 0, len(words)          # find the fewest leading words to drop
    while low < high:
        middle = (low + high) // 2
        if tokenizer.count(" ".join(words[middle:])) <= max_tokens:
            high = middle
        else:
            low = middle + 1
    return " ".join(words[low:])


def _group_lines(lines: list[str], budget: int, tokenizer) -> list[list[str]]:
    """Consecutive groups of lines, each within budget tokens (a longer line goes alone)."""
    groups: list[list[str]] = []
    current: list[str] = []
    size = 0
    for line in lines:
        cost = tokenizer.count(line) + 1      # + the line break; an overflow halves the group
        if current and size + cost > budget:
            groups.append(current)
            current, size = [], 0
        current.append(line)
        size += cost
    if current:
        groups.append(current)
    return groups
