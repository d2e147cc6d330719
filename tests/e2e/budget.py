"""How long an end-to-end job may take here: the engine's measured speed times the work the job needs.

A CPU engine's speed differs several times over between machines of one kind (vLLM generated
about 16 tokens/s in all on an AMD EPYC without AVX-512, several times that on a Sapphire
Rapids), so a fixed timeout is either too short on the slow machine or blind on the fast one.
Instead the engine is measured once when it starts (`calibrate`), each job's work is planned
with the gateway's own planner and the engine's own tokenizer (`plan_work`), and a job's
deadline is that work at the measured speed, with a wide margin (`deadline`). A job that misses
it fails with the speed, the work planned and what the gateway had done (`progress_report`), so
a slow machine is told apart from a stuck job.
"""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass

import requests

# On top of the worst case of the work (every answer cut, every batch redone in halves): a busy
# machine (the other engine preparing, the gateway's own processes) slows the engine down.
MARGIN = float(os.environ.get("LLM_GATEWAY_E2E_MARGIN", "2"))
# What does not scale with tokens: queueing, polls, the gateway's /tokenize round trips.
SLACK_S = 60.0


@dataclass(frozen=True)
class Speed:
    """One sequence's speed on this engine: tokens generated per second, prompt tokens read per second."""

    decode: float
    prefill: float

    def __str__(self) -> str:
        return f"decode {self.decode:.1f} tokens/s, prefill {self.prefill:.0f} tokens/s (one sequence)"


def _chat(api_base: str, model: str, prompt: str, max_tokens: int) -> tuple[dict, float]:
    started = time.monotonic()
    response = requests.post(f"{api_base}/chat/completions", timeout=600, json={
        "model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
        "temperature": 0, "ignore_eos": True})      # vLLM and llama.cpp both honour ignore_eos
    seconds = time.monotonic() - started
    assert response.status_code == 200, response.text
    return response.json()["usage"], seconds


def calibrate(api_base: str, model: str, long_text: str) -> Speed:
    """Measure prefill (a long prompt, one token out) and decode (a short prompt, 64 tokens out)."""
    _chat(api_base, model, "Hello.", 2)                      # the first call warms the engine up
    usage, seconds = _chat(api_base, model, long_text, 1)
    prefill = usage["prompt_tokens"] / max(seconds, 1e-3)
    usage, seconds = _chat(api_base, model, "Count from one to one hundred in words.", 64)
    decoding = max(seconds - usage["prompt_tokens"] / prefill, 1e-3)
    return Speed(decode=max(usage["completion_tokens"] - 1, 1) / decoding, prefill=prefill)


@dataclass(frozen=True)
class Work:
    """The most one job can ask of the engine.

    The worst case is the one a rambling model makes: every answer is cut at maxGenerationLength
    and is no loop, so each batch of n turns is redone in halves down to single turns, 2n - 1
    calls in all, each prompt at most the batch's own; and for a per-turn service ("output":
    "turns"), each of the n single-turn answers leaves its turn out and is asked again once:
    n calls more.
    """

    label: str
    batches: int
    calls: int                 # at most
    prompt_tokens: int         # at most, counted by the engine's tokenizer
    completion_tokens: int     # at most: every call runs to maxGenerationLength

    def seconds(self, speed: Speed) -> float:
        return self.prompt_tokens / speed.prefill + self.completion_tokens / speed.decode

    def __str__(self) -> str:
        return (f"{self.label}: {self.batches} batches, at most {self.calls} calls,"
                f" {self.prompt_tokens} prompt tokens and {self.completion_tokens} tokens to generate")


def plan_work(label: str, text: str, manifest: str, flavor_name: str, api_base: str) -> Work:
    """The most the gateway can send for `text`: its own planner's batches, the engine's tokenizer."""
    from app.pipeline import chunking
    from app.services.manifests import load_service
    from app.pipeline.tokenizers import get_tokenizer
    from app.pipeline.transcript import parse_transcript

    service = load_service(manifest)
    flavor = service.flavor(flavor_name)
    assert flavor is not None, f"{manifest} has no flavor {flavor_name}"
    with open(os.path.join(os.path.dirname(manifest), f"{service.name}.txt"), encoding="utf-8") as handle:
        template = handle.read()
    tokenizer = get_tokenizer(flavor, api_base)
    reserve = chunking.default_context_reserve(flavor) if service.fields == 2 else 0
    batches = chunking.plan_batches(parse_transcript(text), template, service.fields, flavor, tokenizer,
                                    context_reserve=reserve)
    values = lambda turns: ["", turns] if service.fields == 2 else [turns]       # noqa: E731
    calls = prompt_tokens = 0
    for batch in batches:
        prompt = chunking.fill_template(template, values("\n".join(chunking.render_turn(t) for t in batch.turns)))
        n = 2 * len(batch.turns) - 1 + (len(batch.turns) if service.output == "turns" else 0)
        # fields: 2 prompts also carry the previous summary lines, up to the reserve.
        calls, prompt_tokens = calls + n, prompt_tokens + n * (tokenizer.count(prompt) + tokenizer.chat_overhead() + reserve)
    return Work(label, len(batches), calls, prompt_tokens, calls * flavor.max_generation_length)


def first_calls(label: str, calls: int, context: int, max_tokens: int) -> Work:
    """The most `calls` engine calls can take: each a whole context's prompt, each answer max_tokens."""
    return Work(label, calls, calls, calls * context, calls * max_tokens)


def deadline(works: list[Work], speed: Speed) -> float:
    """Seconds the works may take together on this engine: their time at its speed, times MARGIN, plus SLACK_S."""
    return SLACK_S + MARGIN * sum(work.seconds(speed) for work in works)


def _metric_sum(text: str, name: str) -> float:
    return sum(float(value) for value in re.findall(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+]+)$", text, re.M))


def progress_report(gateway_url: str) -> str:
    """What the gateway has sent the engine so far (its /metrics: calls and tokens of every job)."""
    try:
        text = requests.get(f"{gateway_url}/metrics", timeout=10).text
    except requests.RequestException as exc:
        return f"the gateway's /metrics did not answer ({exc})"
    calls = _metric_sum(text, "llm_gateway_engine_call_seconds_count")
    generated = _metric_sum(text, "llm_gateway_completion_tokens_total")
    prompts = _metric_sum(text, "llm_gateway_prompt_tokens_total")
    return (f"the gateway made {calls:.0f} engine calls in all: {prompts:.0f} prompt tokens,"
            f" {generated:.0f} tokens generated")
