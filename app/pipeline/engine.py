"""The OpenAI-compatible engine client: one call, our own error types, and retries.

Every openai/network error is translated here, at this one boundary, into:

    EngineError
     ├─ TransientEngineError      timeout, connection, 429, 5xx, malformed answer: retry later
     │   └─ EmptyAnswerError      200 with no text although nothing cut it: retry later
     └─ PermanentEngineError      other 4xx (unknown model, bad key, bad request): fail the job
         └─ ContextOverflowError  400 "maximum context length": send less and try again

so the rest of the gateway never imports openai. Messages name the cause and never contain
the API key.
"""
from __future__ import annotations

import email.utils
import logging
import random
import re
import threading
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

import openai

log = logging.getLogger(__name__)

T = TypeVar("T")

# How much of an engine's error text we repeat in ours: enough to diagnose, not a whole page.
_DETAIL_CHARS = 300
_CONTEXT_OVERFLOW = re.compile(
    r"context length|maximum context|context window|prompt is too long|too many tokens",
    re.IGNORECASE)
_PING_TIMEOUT = 5.0


class EngineError(Exception):
    """Any failure talking to the engine."""

    def __init__(self, message: str, *, status_code: int | None = None):
        super().__init__(message)
        self.status_code = status_code


class TransientEngineError(EngineError):
    """The engine is unreachable, overloaded or answered garbage: worth retrying."""

    def __init__(self, message: str, *, status_code: int | None = None,
                 retry_after: float | None = None):
        super().__init__(message, status_code=status_code)
        self.retry_after = retry_after    # seconds the engine asked us to wait, if it said


class EmptyAnswerError(TransientEngineError):
    """The engine answered without a word, and not because max_tokens cut it: a summary of
    nothing would silently lose the turns sent, so this is retried like an overloaded engine."""


class PermanentEngineError(EngineError):
    """The engine refused the request; sending it again will not help."""


class ContextOverflowError(PermanentEngineError):
    """The prompt plus max_tokens does not fit the model's context: send less."""


@dataclass(frozen=True)
class Completion:
    """One chat completion: the text, why it stopped, token usage and wall time.

    `cached_tokens`: how many of the prompt tokens the engine took from its prefix cache, as it
    reported them in usage.prompt_tokens_details.cached_tokens (vLLM with
    --enable-prompt-tokens-details, llama.cpp's server always); None when it did not say, which
    is not the same as 0 (said, and nothing was reused).
    """

    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    cached_tokens: int | None = None


class EngineClient:
    """A client for one OpenAI-compatible engine, limiting its concurrent requests."""

    def __init__(self, api_base: str, api_key: str | None, timeout: float,
                 max_concurrent: int = 8):
        self.api_base = api_base
        self.timeout = timeout
        self._api_key = api_key or ""
        # The openai client refuses an empty key; engines without auth accept anything.
        self._client = openai.OpenAI(base_url=api_base, api_key=api_key or "EMPTY",
                                     timeout=timeout, max_retries=0)
        self._slots = threading.BoundedSemaphore(max(1, max_concurrent))

    def __repr__(self) -> str:          # never show the key
        return f"EngineClient({self.api_base!r}, timeout={self.timeout})"

    def complete(self, *, model: str, prompt: str, temperature: float, top_p: float,
                 max_tokens: int) -> Completion:
        """Send `prompt` as the single user message; one try, errors as EngineError."""
        with self._slots:
            started = time.monotonic()
            try:
                response = self._client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": prompt}],
                    temperature=temperature, top_p=top_p, max_tokens=max_tokens)
            except Exception as exc:
                # `from None`: the openai exception may quote the engine's body verbatim
                # (an auth error can echo the key); ours carries a redacted summary.
                raise self._translate(exc, model) from None
            seconds = time.monotonic() - started
        choices = getattr(response, "choices", None)
        if not choices or getattr(choices[0], "message", None) is None:
            raise TransientEngineError(
                f"engine at {self.api_base} returned no completion choices for model {model!r}")
        content = choices[0].message.content
        if not (content or "").strip():
            # A reasoning model can spend all of max_tokens before writing any content: that
            # is a cut answer, for the caller to handle. Otherwise nothing came back, and the
            # same prompt may well get an answer on another try.
            if choices[0].finish_reason != "length":
                raise EmptyAnswerError(
                    f"engine at {self.api_base} returned an empty answer for model {model!r}")
            content = content or ""
        usage = getattr(response, "usage", None)
        return Completion(
            text=content,
            finish_reason=choices[0].finish_reason,
            prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
            seconds=seconds,
            cached_tokens=_cached_tokens(usage))

    def ping(self) -> bool:
        """True when the engine answers GET /models within a short timeout."""
        try:
            self._client.with_options(timeout=min(self.timeout, _PING_TIMEOUT)).models.list()
            return True
        except Exception:
            return False

    # --- error translation -------------------------------------------------------------

    def _redact(self, text: str) -> str:
        if self._api_key and len(self._api_key) >= 4:
            text = text.replace(self._api_key, "***")
        return text

    def _translate(self, exc: Exception, model: str) -> EngineError:
        """Map an openai/httpx error to our hierarchy, with a clear, key-free message."""
        where = f"engine at {self.api_base}"
        if isinstance(exc, openai.APITimeoutError):
            return TransientEngineError(f"{where} did not answer within {self.timeout:g} s")
        if isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__ or exc.__context__
            reason = f": {type(cause).__name__}: {cause}" if cause else ""
            return TransientEngineError(self._redact(
                f"cannot connect to {where}{_shorten(reason)}"))
        if isinstance(exc, openai.APIStatusError):
            return self._translate_status(exc, where, model)
        if isinstance(exc, (openai.APIResponseValidationError, ValueError)):
            # A 200 whose body is not the JSON we expect: engines do this while restarting.
            return TransientEngineError(self._redact(
                f"{where} returned a malformed answer: {_shorten(str(exc))}"))
        if isinstance(exc, openai.OpenAIError):
            return TransientEngineError(self._redact(
                f"{where} failed: {type(exc).__name__}: {_shorten(str(exc))}"))
        return EngineError(self._redact(
            f"unexpected error calling {where}: {type(exc).__name__}: {_shorten(str(exc))}"))

    def _translate_status(self, exc: openai.APIStatusError, where: str,
                          model: str) -> EngineError:
        status = exc.status_code
        detail = self._redact(_shorten(_engine_message(exc)))
        if status == 429:
            return TransientEngineError(f"{where} is overloaded (429 Too Many Requests): {detail}",
                                        status_code=status,
                                        retry_after=_retry_after(exc.response.headers))
        if status in (408, 500, 502, 503, 504) or status >= 500:
            return TransientEngineError(f"{where} is unavailable (HTTP {status}): {detail}",
                                        status_code=status,
                                        retry_after=_retry_after(exc.response.headers))
        if status == 400 and _CONTEXT_OVERFLOW.search(detail):
            return ContextOverflowError(f"prompt too long for model {model!r}: {detail}",
                                        status_code=status)
        if status == 404:
            return PermanentEngineError(
                f"{where} does not know model {model!r} (HTTP 404): {detail}", status_code=status)
        if status in (401, 403):
            return PermanentEngineError(
                f"{where} rejected the API key (HTTP {status}): {detail}", status_code=status)
        return PermanentEngineError(f"{where} refused the request (HTTP {status}): {detail}",
                                    status_code=status)


def _cached_tokens(usage) -> int | None:
    """usage.prompt_tokens_details.cached_tokens, or None when the engine did not report it.

    vLLM sends "prompt_tokens_details": null unless started with --enable-prompt-tokens-details;
    llama.cpp's server fills it with the tokens its slot reused (its timings.cache_n, the same
    number, is not read: one field for both engines). Anything but a non-negative integer is
    treated as not reported, so a malformed field never turns into a false share.
    """
    value = getattr(getattr(usage, "prompt_tokens_details", None), "cached_tokens", None)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def _engine_message(exc: openai.APIStatusError) -> str:
    """The engine's own message (OpenAI and vLLM shapes), else the client's text."""
    body = exc.body
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"]
    return exc.message


def _shorten(text: str) -> str:
    return text if len(text) <= _DETAIL_CHARS else text[:_DETAIL_CHARS] + "…"


def _retry_after(headers) -> float | None:
    """Seconds from Retry-After (seconds or HTTP date) or retry-after-ms; None if absent."""
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(0.0, float(value) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


# --- retries -----------------------------------------------------------------------------

# A bogus Retry-After must not park a job for hours.
MAX_RETRY_AFTER = 300.0


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff with jitter, honoring the engine's Retry-After.

    The defaults ride out an engine restart of well over 60 s: the waits before retries
    1..8 are 1, 2, 4, 8, 16, 30, 30, 30 s = 121 s nominal; jitter only shortens each wait by
    up to 25 %, so at least 0.75 x 121 = 90.75 s of waiting (plus each failed attempt's own
    time) pass before the last try. vLLM loading a 7B model takes ~30-90 s.
    """

    max_retries: int = 8
    base_delay: float = 1.0
    max_delay: float = 30.0
    jitter: float = 0.25   # each wait is scaled by a random factor in [1 - jitter, 1]

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number `attempt` (1-based)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), MAX_RETRY_AFTER)
        nominal = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        # Jitter spreads the retries of many jobs so a restarted engine is not stampeded.
        return nominal * random.uniform(1.0 - self.jitter, 1.0)


def call_with_retries(fn: Callable[[], T], policy: RetryPolicy | None = None,
                      on_retry: Callable[[int, int, TransientEngineError], None] | None = None,
                      sleep: Callable[[float], None] = time.sleep) -> T:
    """Call fn(), retrying TransientEngineError per policy; other errors propagate."""
    policy = policy or RetryPolicy()
    attempt = 0
    while True:
        try:
            return fn()
        except TransientEngineError as error:
            attempt += 1
            if attempt > policy.max_retries:
                raise
            wait = policy.delay(attempt, error.retry_after)
            log.warning("engine call failed (%s); retry %d/%d in %.1f s",
                        error, attempt, policy.max_retries, wait)
            if on_retry is not None:
                on_retry(attempt, policy.max_retries, error)
            sleep(wait)


# --- one client per engine per process ------------------------------------------------------

_engines: dict[tuple, EngineClient] = {}
_engines_lock = threading.Lock()


def get_engine(api_base: str, api_key: str | None, timeout: float,
               max_concurrent: int = 8) -> EngineClient:
    """The process-wide client for this engine (created once, then shared by threads)."""
    key = (api_base, api_key, timeout, max_concurrent)
    with _engines_lock:
        client = _engines.get(key)
        if client is None:
            client = _engines[key] = EngineClient(api_base, api_key, timeout, max_concurrent)
        return client
