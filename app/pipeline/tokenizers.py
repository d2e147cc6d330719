"""Resolving and caching each flavor's tokenizer, and counting tokens with it.

Resolution order (first that works wins, nothing is ever downloaded):
1. `flavor.tokenizer`: a local folder or an HF repo id already in the local HF cache;
2. `flavor.model` from the local HF cache;
3. the engine's own tokenize endpoint (vLLM `/tokenize`, else llama.cpp `/tokenize`);
4. the Mistral sentencepiece model shipped with mistral-common (offline default);
5. a characters-based estimate, so that a missing package never stops the service.
"""
from __future__ import annotations

import functools
import logging
import math
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable

from app.pipeline.engine import TransientEngineError

logger = logging.getLogger(__name__)

# A user message used to measure what a chat template adds around it.
_PROBE = "Bonjour, voici le texte à résumer."
_CHECK = "Le Gouvernement ne laissera tomber personne."
# What we assume a chat template adds when it cannot be measured (role markers, BOS, …).
DEFAULT_CHAT_OVERHEAD = 16
_HTTP_TIMEOUT = 10.0
# Texts per sentencepiece call in count_many: bounds the token ids held at once.
_ENCODE_SLICE = 1024
_PROBE_TIMEOUT = 5.0


class Tokenizer:
    """What every resolved tokenizer offers: a name and exact token counts."""

    name: str = "unknown"

    def count(self, text: str) -> int:
        """Tokens of `text`, without BOS/EOS or other special tokens."""
        raise NotImplementedError

    def count_many(self, texts: Iterable[str]) -> list[int]:
        """Token counts of several texts; subclasses batch the work."""
        return [self.count(t) for t in texts]

    def chat_overhead(self) -> int:
        """Tokens the chat template adds around one user message, generation prompt included."""
        return DEFAULT_CHAT_OVERHEAD

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class SentencePieceTokenizer(Tokenizer):
    """A sentencepiece model used directly (the Mistral/Llama 32k vocab by default)."""

    def __init__(self, model_file: str, name: str | None = None):
        import sentencepiece

        self._sp = sentencepiece.SentencePieceProcessor(model_file=model_file)
        self.name = name or f"sentencepiece:{model_file}"
        self._overhead: int | None = None

    def count(self, text: str) -> int:
        """Tokens of `text` (sentencepiece adds no BOS unless asked)."""
        return len(self._sp.encode(text)) if text else 0

    def count_many(self, texts: Iterable[str]) -> list[int]:
        """Counts of many texts, a slice per call (sentencepiece spreads each over threads): only
        one slice's token ids are alive at once, not a whole transcript's."""
        texts = list(texts)
        counts: list[int] = []
        for i in range(0, len(texts), _ENCODE_SLICE):
            counts.extend(len(ids) for ids in self._sp.encode(texts[i:i + _ENCODE_SLICE]))
        return counts

    def chat_overhead(self) -> int:
        """BOS + "[INST] " + " [/INST]": the Mistral instruct template around one message."""
        if self._overhead is None:
            wrapped = self.count(f"[INST] {_PROBE} [/INST]")
            self._overhead = 1 + wrapped - self.count(_PROBE)
        return self._overhead


class HFTokenizer(Tokenizer):
    """A Hugging Face tokenizer loaded from local files."""

    def __init__(self, hf_tokenizer: Any, name: str):
        self._tok = hf_tokenizer
        # The Rust backend counts without the "sequence too long" warnings and in batches.
        self._fast = getattr(hf_tokenizer, "backend_tokenizer", None) if getattr(
            hf_tokenizer, "is_fast", False) else None
        self.name = name
        self._overhead: int | None = None

    def count(self, text: str) -> int:
        """Tokens of `text` without special tokens."""
        if not text:
            return 0
        if self._fast is not None:
            return len(self._fast.encode(text, add_special_tokens=False).ids)
        return len(self._tok.encode(text, add_special_tokens=False))

    def count_many(self, texts: Iterable[str]) -> list[int]:
        """Counts of many texts; the fast backend encodes them in parallel."""
        texts = list(texts)
        if self._fast is None or not texts:
            return [self.count(t) for t in texts]
        return [len(e.ids) for e in self._fast.encode_batch(texts, add_special_tokens=False)]

    def chat_overhead(self) -> int:
        """Measured with the tokenizer's chat template, or special tokens + a constant without one."""
        if self._overhead is None:
            self._overhead = self._measure_overhead()
        return self._overhead

    def _measure_overhead(self) -> int:
        messages = [{"role": "user", "content": _PROBE}]
        if getattr(self._tok, "chat_template", None):
            try:
                rendered = self._tok.apply_chat_template(
                    messages, add_generation_prompt=True, tokenize=False)
                # Special tokens written in the template ("<s>") are parsed as such here.
                return max(0, self.count(rendered) - self.count(_PROBE))
            except Exception:  # a template may reject a lone user message
                logger.warning("chat template of %s failed; assuming %d tokens",
                               self.name, DEFAULT_CHAT_OVERHEAD, exc_info=True)
        specials = len(self._tok.encode(_PROBE, add_special_tokens=True)) - self.count(_PROBE)
        return max(0, specials) + DEFAULT_CHAT_OVERHEAD


class RemoteTokenizer(Tokenizer):
    """The engine's own tokenize endpoint (vLLM or llama.cpp server), with a count cache."""

    _CACHE_SIZE = 200_000

    def __init__(self, root: str, kind: str, model: str, api_key: str | None = None,
                 timeout: float = _HTTP_TIMEOUT):
        import requests

        self._root = root
        self._kind = kind  # "vllm" or "llamacpp"
        self._model = model
        self._timeout = timeout
        self._session = requests.Session()
        if api_key:
            self._session.headers["Authorization"] = f"Bearer {api_key}"
        self.name = f"{kind}:{root}/tokenize"
        self._cache: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()
        self._overhead: int | None = None

    def _post(self, path: str, body: dict, timeout: float | None = None) -> dict:
        import requests

        try:
            resp = self._session.post(f"{self._root}{path}", json=body, timeout=timeout or self._timeout)
        except requests.RequestException as exc:
            # The engine restarting between two batches: a job retries this like a failed completion.
            raise TransientEngineError(f"the engine's {path} did not answer ({type(exc).__name__})") from exc
        if resp.status_code >= 500:
            raise TransientEngineError(f"the engine's {path} answered {resp.status_code}",
                                       status_code=resp.status_code)
        resp.raise_for_status()
        return resp.json()

    def _remote_count(self, text: str) -> int:
        if self._kind == "vllm":
            body = self._post("/tokenize", {"model": self._model, "prompt": text,
                                            "add_special_tokens": False})
            return int(body["count"]) if "count" in body else len(body["tokens"])
        body = self._post("/tokenize", {"content": text, "add_special": False})
        return len(body["tokens"])

    def count(self, text: str) -> int:
        """Tokens of `text`, asked to the engine once per distinct text."""
        return self.count_many([text])[0]

    def count_many(self, texts: Iterable[str]) -> list[int]:
        """Counts of many texts: cached ones are free, the rest go out on a few connections."""
        texts = list(texts)
        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if t and t not in self._cache))
        if missing:
            if len(missing) == 1:
                found = [self._remote_count(missing[0])]
            else:
                with ThreadPoolExecutor(max_workers=min(8, len(missing))) as pool:
                    found = list(pool.map(self._remote_count, missing))
            with self._lock:
                self._cache.update(zip(missing, found))
                while len(self._cache) > self._CACHE_SIZE:
                    self._cache.popitem(last=False)
        with self._lock:
            return [self._cache.get(t, 0) if t else 0 for t in texts]

    def chat_overhead(self) -> int:
        """Asks the engine to apply its chat template (vLLM, llama.cpp); else a constant."""
        if self._overhead is None:
            try:
                self._overhead = max(0, self._templated_count() - self.count(_PROBE))
            except Exception as exc:
                logger.info("%s cannot apply the chat template (%s); assuming %d tokens",
                            self.name, type(exc).__name__, DEFAULT_CHAT_OVERHEAD)
                self._overhead = DEFAULT_CHAT_OVERHEAD
        return self._overhead

    def _templated_count(self) -> int:
        messages = [{"role": "user", "content": _PROBE}]
        if self._kind == "vllm":
            body = self._post("/tokenize", {"model": self._model, "messages": messages,
                                            "add_generation_prompt": True})
            return int(body["count"]) if "count" in body else len(body["tokens"])
        prompt = self._post("/apply-template", {"messages": messages})["prompt"]
        return len(self._post("/tokenize", {"content": prompt, "add_special": True})["tokens"])


class CharEstimateTokenizer(Tokenizer):
    """Last resort when no tokenizer can be loaded: about 3 characters per token (French)."""

    name = "estimate:chars/3"

    def count(self, text: str) -> int:
        """An over-estimate of the tokens of `text`, so budgets stay safe."""
        return math.ceil(len(text) / 3)


# --- resolution --------------------------------------------------------------------------

def _check(tok: Tokenizer) -> Tokenizer:
    """Refuse tokenizers that load but encode text to nothing (transformers 5 can do that)."""
    n = tok.count(_CHECK)
    if not 3 <= n <= len(_CHECK):
        raise ValueError(f"{tok.name} gives {n} tokens for a {len(_CHECK)}-char sentence")
    return tok


def _load_hf(source: str) -> Tokenizer:
    """A tokenizer from a local folder or the local HF cache; never downloads."""
    if os.path.isdir(source):
        source = os.path.abspath(source)
        spm_file = os.path.join(source, "tokenizer.model")
    else:
        spm_file = ""
        if not _in_hf_cache(source):
            # Spares importing transformers (seconds) for a model that is not there anyway.
            raise FileNotFoundError(f"{source} is not in the local Hugging Face cache")
    try:
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(source, local_files_only=True)
        return _check(HFTokenizer(hf, f"hf:{source}"))
    except Exception:
        # A folder with only a sentencepiece tokenizer.model needs protobuf in transformers;
        # sentencepiece reads it directly.
        if spm_file and os.path.isfile(spm_file):
            return _check(SentencePieceTokenizer(spm_file, f"sentencepiece:{spm_file}"))
        raise


def _in_hf_cache(repo_id: str) -> bool:
    """True when the local HF cache holds a tokenizer file of `repo_id` (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return True  # cannot tell: let transformers try
    for filename in ("tokenizer_config.json", "tokenizer.json"):
        try:
            if isinstance(try_to_load_from_cache(repo_id, filename), str):
                return True
        except Exception:  # an invalid repo id
            return False
    return False


def server_root(api_base: str) -> str:
    """The engine's root URL: api_base without a trailing "/v1"."""
    root = api_base.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


def _load_remote(api_base: str, model: str, api_key: str | None) -> Tokenizer:
    """Probe the engine's tokenize endpoint: vLLM's shape first, then llama.cpp's."""
    root = server_root(api_base)
    errors = []
    for kind in ("vllm", "llamacpp"):
        tok = RemoteTokenizer(root, kind, model, api_key, timeout=_PROBE_TIMEOUT)
        try:
            # llama.cpp answers vLLM's body with {"tokens": []}: _check rejects that.
            _check(tok)
            tok._timeout = _HTTP_TIMEOUT
            return tok
        except Exception as exc:
            errors.append(f"{kind}: {type(exc).__name__}")
    raise ConnectionError("no tokenize endpoint at " + root + " (" + ", ".join(errors) + ")")


@functools.lru_cache(maxsize=1)
def default_tokenizer() -> Tokenizer:
    """The offline default: Mistral's 32k sentencepiece model shipped in mistral-common."""
    try:
        import mistral_common

        path = os.path.join(os.path.dirname(mistral_common.__file__), "data", "tokenizer.model.v1")
        return _check(SentencePieceTokenizer(path, "sentencepiece:mistral-common/tokenizer.model.v1"))
    except Exception:
        logger.warning("mistral-common's tokenizer is unavailable; estimating tokens from characters",
                       exc_info=True)
        return CharEstimateTokenizer()


def _resolve(tokenizer: str | None, model: str | None, api_base: str | None,
             api_key: str | None) -> Tokenizer:
    attempts = []
    if tokenizer:
        attempts.append((f"tokenizer {tokenizer!r}", lambda: _load_hf(tokenizer)))
    if model:
        attempts.append((f"model {model!r} from the local HF cache", lambda: _load_hf(model)))
    if api_base:
        attempts.append((f"the engine at {server_root(api_base)}",
                         lambda: _load_remote(api_base, model or "", api_key)))
    for what, load in attempts:
        try:
            return load()
        except Exception as exc:
            logger.info("tokenizer: %s is not usable (%s: %s)", what, type(exc).__name__,
                        str(exc).splitlines()[0][:200] if str(exc) else "")
    return default_tokenizer()


_cache: dict[tuple, Tokenizer] = {}
_key_locks: dict[tuple, threading.Lock] = {}
_cache_lock = threading.Lock()
# A flavor that fell back to the default although an engine is configured (the engine may
# just be starting) is resolved again after this many seconds, so it gets its real tokenizer.
FALLBACK_RETRY_S = 60.0
_fallback_until: dict[tuple, float] = {}


def _cached(key: tuple) -> Tokenizer | None:
    tok = _cache.get(key)
    if tok is not None and key in _fallback_until and time.monotonic() >= _fallback_until[key]:
        return None
    return tok


def get_tokenizer(flavor: Any, api_base: str | None = None, api_key: str | None = None) -> Tokenizer:
    """The tokenizer for `flavor`, resolved once per process and shared between threads."""
    base = api_base or getattr(flavor, "api_base", None)
    key = (getattr(flavor, "tokenizer", None), flavor.model, server_root(base) if base else None)
    with _cache_lock:
        tok = _cached(key)
        if tok is not None:
            return tok
        key_lock = _key_locks.setdefault(key, threading.Lock())
    # Resolving may load files or probe the engine: do it outside the global lock, once per key.
    with key_lock:
        with _cache_lock:
            tok = _cached(key)
            if tok is not None:
                return tok
        tok = _resolve(key[0], key[1], base, api_key)
        logger.info("tokenizer for flavor %r (model %r): %s",
                    getattr(flavor, "name", "?"), flavor.model, tok.name)
        with _cache_lock:
            _cache[key] = tok
            if base and tok is default_tokenizer():
                _fallback_until[key] = time.monotonic() + FALLBACK_RETRY_S
            else:
                _fallback_until.pop(key, None)
    return tok


def clear_cache() -> None:
    """Forget resolved tokenizers (tests; a registry reload that changes tokenizers)."""
    with _cache_lock:
        _cache.clear()
        _key_locks.clear()
        _fallback_until.clear()
    default_tokenizer.cache_clear()
