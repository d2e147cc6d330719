"""A fake OpenAI-compatible engine (vLLM-like) on loopback, for tests.

In-process:

    with FakeEngine() as eng:             # port 0: an ephemeral port
        eng.base_url                       # "http://127.0.0.1:PORT/v1"
        eng.add_fault("503")               # the next chat call gets a 503
        ...
        eng.chat_requests()                # what was received, in arrival order

As a process (for tests that run the real server in a subprocess):

    python3 -m tests.fake_engine --port 9000 --delay 0.05 --fault 503 --fault "429:retry_after=2"

and, while it runs, `POST /_control` with JSON {"faults": [...], "delay": .., "reset": true, ...}
and `GET /_control` for the recorded requests (see `_control`).

The latency model (scripts/bench.py runs it so): a chat call costs `delay` + `token_delay` x its
completion tokens, at most `max_in_flight` calls are served at once and the others wait in
arrival order (a batching engine such as vLLM), `out_tokens` makes every answer that long so
every call costs the same, and `--tokenize none` leaves out /tokenize so the gateway counts with
its own default tokenizer. The time is spent waiting, so the fake needs almost no CPU.

    python3 -m tests.fake_engine --delay 0.15 --token-delay 0.01 --max-in-flight 8 --tokenize none

With `prefix_cache` (`--prefix-cache`), every answer's usage carries
prompt_tokens_details.cached_tokens as vLLM's --enable-prompt-tokens-details does: here the
length of the longest common token prefix with the previous prompt served (one cache entry,
no blocks), so a test knows exactly what a prompt laid out for the cache should get.

Tokens are whitespace-separated words, everywhere (usage, /tokenize, context checks), unless
`encode` and `chat_template` are given (tests of the gateway's tokenizers count with a real one).
The default completion echoes, for every line of the prompt's last section (text after the
last blank line that contains a "Speaker : text" line) that looks like "Speaker : text",
one line "Speaker : <first `words_per_line` words of text>": so a test can check that every
turn was sent exactly once, in order, with its speaker.

Answer faults (`answers`, a dict: FakeEngine(answers=...), configure(answers=...), POST /_control
{"answers": {...}}, --answers '<json>') make that echo wrong on purpose, for tests of the gateway's
check of an answer against the turns it sent (ANSWER_KEYS): the turns `picked` by N are left out
(`skip_always_every`, or `skip_once_every`: only the first time the engine sees the turn, which it
remembers until reset()) or merged into the line before (`merge_every`); `invent_figure` ends the
first line with a text, `invent_speaker` adds a line by that name after it, and `reverse` turns the
lines around. Each chat record's "answer_faults" says what was done ("skip_once 2 Bob", ...). They
leave a custom `reply` alone, come before the `out_tokens` padding, and the queued faults still apply.

The server never asserts; it records, and tests assert on the records.
"""
from __future__ import annotations

import argparse
import json
import re
import threading
import time
import zlib
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

SPEAKER_LINE = re.compile(r"^(.+?) : (.+)$")
CHAT_OVERHEAD = 4   # "tokens" the fake's chat template adds around each message

# Fault kinds understood by add_fault / --fault / POST /_control.
FAULT_KINDS = (
    "drop",            # close the connection without any response
    "hang",            # wait `seconds` (default 30) before answering: past the client timeout
    "429",             # rate limited; option retry_after=<seconds> adds a Retry-After header
                       # (every error kind takes message=<text> to replace the engine's text)
    "500", "502", "503", "504",   # server errors (also take retry_after)
    "401",             # bad API key
    "404",             # unknown model (vLLM's message)
    "context",         # 400 "This model's maximum context length is N tokens. However, ..."
    "malformed",       # 200 with a body that is not JSON
    "empty_choices",   # 200 with "choices": []
    "empty",           # 200, finish_reason "stop", content "" (option content=<text> sends that
                       # instead, e.g. only whitespace): an engine answering with nothing
    "length",          # 200, output cut to `words` words (default 3), finish_reason "length"
    "loop",            # 200, the answer's first line, then `phrase` repeated up to max_tokens:
                       # a small model stuck in a loop; finish_reason "length"
)


def count_tokens(text: str) -> int:
    """The fake's token count: whitespace-separated words."""
    return len(text.split())


def word_ids(text: str, add_special: bool = False) -> list[int]:
    """The fake's token ids: one per whitespace-separated word (there are no special tokens)."""
    return [zlib.crc32(word.encode()) % 32000 for word in text.split()]


def chat_text(messages: list[dict[str, Any]]) -> str:
    """The fake's chat template: CHAT_OVERHEAD marker words around each message's content."""
    return " ".join(f"<s> <|{m.get('role', 'user')}|> {m.get('content', '')} <|end|> </s>" for m in messages)


# What /tokenize speaks: vLLM's API, llama.cpp's (with /apply-template), or none (404, as an
# engine without the route: the gateway falls back to its own default tokenizer).
TOKENIZE_APIS = ("vllm", "llamacpp", "none")


def last_section_turns(prompt: str) -> list[tuple[str, str]]:
    """(speaker, text) of the "Speaker : text" lines in the prompt's last section holding any."""
    sections = re.split(r"\n\s*\n", prompt)
    for section in reversed(sections):
        found = [m.groups() for m in map(SPEAKER_LINE.match, section.splitlines()) if m]
        if found:
            return found
    return []


def echo_reply(prompt: str, words_per_line: int) -> str:
    """The default completion: each turn of the last section, its text cut to a few words."""
    return echo_answer(last_section_turns(prompt), words_per_line)[0]


# Answer faults: the keys of `answers` (all optional, combinable), each a way an engine's answer
# can miss the turns it was sent. "Picked by N" is `picked`.
ANSWER_KEYS = (
    "skip_once_every",     # N: a picked turn is left out the first time the engine sees it, then answered
    "skip_always_every",   # N: a picked turn is always left out
    "merge_every",         # N: a picked turn, not its section's first, is added to the line before it
    "invent_speaker",      # name: a line "<name> : <words of the batch's first turn>" after the first line
    "invent_figure",       # text: appended (after a space) to the answer's first line
    "reverse",             # true: the answer's lines in reverse order
)


def fingerprint(speaker: str, text: str) -> str:
    """A turn's identity as the prompt shows it: its speaker and its full text."""
    return f"{speaker}\x1f{text}"


def picked(speaker: str, text: str, every: int) -> bool:
    """Whether an answer fault set to `every` hits this turn (every <= 1: all turns). crc32, not
    hash(): the same turns in every process, so a test can predict them."""
    if every <= 1:
        return True
    return zlib.crc32(fingerprint(speaker, text).encode()) % every == 0


def check_answers(answers: dict[str, Any] | None) -> dict[str, Any]:
    """A copy of `answers` with its N as ints; ValueError for an unknown key (a typo would
    otherwise silently test nothing)."""
    answers = {} if answers is None else answers
    if not isinstance(answers, dict):
        raise ValueError(f"answers must be a dict, not {answers!r}")
    unknown = set(answers) - set(ANSWER_KEYS)
    if unknown:
        raise ValueError(f"unknown answer fault {', '.join(sorted(unknown))}; known: {', '.join(ANSWER_KEYS)}")
    try:
        return {key: int(value) if key.endswith("_every") else value for key, value in answers.items()}
    except (TypeError, ValueError):
        raise ValueError(f"the N of an answer fault is a whole number: {answers!r}") from None


def echo_answer(turns: list[tuple[str, str]], words_per_line: int, answers: dict[str, Any] | None = None,
                first_time: Callable[[str], bool] = lambda key: True) -> tuple[str, list[str]]:
    """The echo of `turns` ((speaker, text) as in the prompt) with the answer faults applied, and
    what they did ("skip_always 3 Carol": the turn at index 3 of the section, by Carol).

    `first_time(fingerprint)` is the engine's memory for skip_once: True (and remembered) when
    the turn was not left out before. A turn skipped is never merged; a merge goes into the line
    before it in the answer (that of an earlier turn when the one just before was left out).
    The inventions come after `reverse`, so "first line" is the first line of the final answer."""
    answers = answers or {}

    def hit(key: str, speaker: str, text: str) -> bool:
        return key in answers and picked(speaker, text, answers[key])

    lines: list[str] = []
    done: list[str] = []
    for index, (speaker, text) in enumerate(turns):
        words = " ".join(text.split()[:words_per_line])
        if hit("skip_always_every", speaker, text):
            done.append(f"skip_always {index} {speaker}")
        elif hit("skip_once_every", speaker, text) and first_time(fingerprint(speaker, text)):
            done.append(f"skip_once {index} {speaker}")
        elif hit("merge_every", speaker, text) and index > 0 and lines:
            lines[-1] += " " + words
            done.append(f"merge {index} {speaker}")
        else:
            lines.append(f"{speaker} : {words}")
    if answers.get("reverse"):
        lines.reverse()
        done.append("reverse")
    if answers.get("invent_figure") and lines:
        lines[0] += " " + answers["invent_figure"]
        done.append("invent_figure")
    if answers.get("invent_speaker") and turns:
        # The first turn's last words: text the batch holds, said by someone who never spoke.
        first_words = turns[0][1].split()
        said = " ".join(first_words[max(0, len(first_words) - words_per_line):])
        lines.insert(1, f"{answers['invent_speaker']} : {said}")
        done.append(f"invent_speaker {answers['invent_speaker']}")
    return "\n".join(lines), done


def exactly(text: str, tokens: int) -> str:
    """The text cut or padded (with "etc.") to exactly `tokens` words: every call of the latency
    model then costs the same."""
    kept = _first_tokens(text, tokens)
    missing = tokens - count_tokens(kept)
    if missing > 0:
        kept = "\n".join(filter(None, [kept.rstrip(), " ".join(["etc."] * missing)]))
    return kept


def parse_fault(spec: str) -> dict[str, Any]:
    """"429:retry_after=2,times=3" -> {"kind": "429", "retry_after": 2.0, "times": 3}."""
    kind, _, options = spec.partition(":")
    fault: dict[str, Any] = {"kind": kind.strip()}
    for option in filter(None, options.split(",")):
        key, _, value = option.partition("=")
        fault[key.strip()] = float(value) if "." in value else int(value)
    return fault


class FakeEngine:
    """A real HTTP server speaking enough of the OpenAI / vLLM API for the gateway's tests."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, delay: float = 0.0,
                 max_in_flight: int | None = None, words_per_line: int = 5,
                 max_model_len: int = 32768, models: tuple[str, ...] | None = None,
                 token_delay: float = 0.0, out_tokens: int | None = None, tokenize: str = "vllm",
                 prefix_cache: bool = False, answers: dict[str, Any] | None = None,
                 encode: Callable[[str, bool], list[int]] = word_ids,
                 chat_template: Callable[[list[dict[str, Any]]], str] = chat_text):
        if tokenize not in TOKENIZE_APIS:
            raise ValueError(f"unknown tokenize API {tokenize!r}; known: {', '.join(TOKENIZE_APIS)}")
        self.host, self.port = host, port
        self.delay = delay                    # seconds added to every chat completion
        self.token_delay = token_delay        # and seconds per completion token (latency model)
        self.max_in_flight = max_in_flight    # served at once; others wait (None = no limit)
        self.words_per_line = words_per_line
        self.out_tokens = out_tokens          # every answer exactly this many words (None: as echoed)
        self.max_model_len = max_model_len    # prompt + max_tokens above this -> 400 context
        self.models = models                  # None: any model name is accepted
        self.tokenize = tokenize              # the tokenize API served (TOKENIZE_APIS)
        self.encode = encode                  # (text, add special tokens) -> token ids
        self.chat_template = chat_template    # messages -> the text the model reads
        self.prefix_cache = prefix_cache      # report usage.prompt_tokens_details.cached_tokens
        self._last_prompt_ids: list[int] = []  # the previous prompt served: the "cache"
        self.answers = check_answers(answers)  # answer faults of the echo (ANSWER_KEYS)
        self._seen_turns: set[str] = set()     # fingerprints skip_once has left out once
        self.reply: Callable[[str], str] | None = None   # custom completion: prompt -> text
        self.requests: list[dict[str, Any]] = []          # every request, in arrival order
        self.faults: deque[dict[str, Any]] = deque()      # consumed by the next chat calls
        self.in_flight = 0
        self.max_seen_in_flight = 0
        self.lock = threading.Lock()
        self._slots_lock = threading.Condition(self.lock)
        self._waiting: deque[object] = deque()            # calls waiting for a slot, in arrival order
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Root URL, e.g. http://127.0.0.1:PORT (where /tokenize and /health live)."""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, e.g. http://127.0.0.1:PORT/v1."""
        return self.url + "/v1"

    def start(self) -> "FakeEngine":
        """Listen (again on the same port after a stop) and serve in a daemon thread."""
        self._stopping.clear()
        self._server = _Server((self.host, self.port), _Handler)
        self._server.engine = self
        self.port = self._server.server_address[1]
        # A short poll interval so stop() (and every test's teardown) takes milliseconds.
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,),
                                        name=f"fake-engine-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening; hanging requests are woken up and dropped."""
        self._stopping.set()
        with self.lock:
            self._slots_lock.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "FakeEngine":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # --- what tests use ----------------------------------------------------------------

    def add_fault(self, kind: str, times: int = 1, **options: Any) -> None:
        """Make the next `times` chat calls fail with `kind` (see FAULT_KINDS)."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(FAULT_KINDS)}")
        with self.lock:
            for _ in range(times):
                self.faults.append({"kind": kind, **options})

    def chat_requests(self) -> list[dict[str, Any]]:
        """Recorded chat completion requests, in arrival order."""
        with self.lock:
            return [r for r in self.requests if r["path"] == "/v1/chat/completions"]

    def reset(self) -> None:
        """Forget recorded requests, pending faults, the in-flight high-water mark and the turns
        seen (skip_once leaves them out again); settings, `answers` among them, stay."""
        with self.lock:
            self.requests.clear()
            self.faults.clear()
            self.max_seen_in_flight = 0
            self._last_prompt_ids = []
            self._seen_turns.clear()

    def configure(self, **settings: Any) -> None:
        """Change settings while serving (CONTROL_SETTINGS); calls waiting for a slot see a new
        max_in_flight at once."""
        unknown = set(settings) - set(CONTROL_SETTINGS)
        if unknown:
            raise ValueError(f"not a setting of the fake engine: {', '.join(sorted(unknown))}")
        if "answers" in settings:      # replaces all of them ({} or None: none); the memory stays
            settings["answers"] = check_answers(settings["answers"])
        with self._slots_lock:
            for key, value in settings.items():
                setattr(self, key, value)
            self._slots_lock.notify_all()

    # --- internals used by the handler -------------------------------------------------

    def echo(self, prompt: str) -> tuple[str, list[str]]:
        """The default completion with the answer faults, and what they did."""
        return echo_answer(last_section_turns(prompt), self.words_per_line, self.answers, self._first_time)

    def _first_time(self, turn: str) -> bool:
        # Checked and remembered at once: of calls sending the same turn together, one leaves it out.
        with self.lock:
            if turn in self._seen_turns:
                return False
            self._seen_turns.add(turn)
            return True

    def count(self, text: str) -> int:
        """Tokens of a text the model reads (words, without the cost of their ids by default)."""
        return count_tokens(text) if self.encode is word_ids else len(self.encode(text, True))

    def cached_prefix(self, text: str) -> int:
        """Tokens of `text` (what the model reads) shared from the start with the previous prompt
        served; `text` then becomes the previous prompt."""
        ids = self.encode(text, True)
        with self.lock:
            previous, self._last_prompt_ids = self._last_prompt_ids, ids
        shared = 0
        for mine, theirs in zip(ids, previous):
            if mine != theirs:
                break
            shared += 1
        return shared

    def _next_fault(self) -> dict[str, Any] | None:
        with self.lock:
            return self.faults.popleft() if self.faults else None

    def _acquire_slot(self) -> None:
        # First come, first served, as a batching engine queues what it cannot take yet: the
        # benchmarks' ideal times assume it.
        ticket = object()
        with self._slots_lock:
            self._waiting.append(ticket)
            while not self._stopping.is_set() and (
                    self._waiting[0] is not ticket
                    or (self.max_in_flight is not None and self.in_flight >= self.max_in_flight)):
                self._slots_lock.wait(0.1)
            self._waiting.remove(ticket)
            self.in_flight += 1
            self.max_seen_in_flight = max(self.max_seen_in_flight, self.in_flight)
            self._slots_lock.notify_all()       # the next in line may fit too

    def _release_slot(self) -> None:
        with self._slots_lock:
            self.in_flight -= 1
            self._slots_lock.notify_all()

    def _wait(self, seconds: float) -> None:
        self._stopping.wait(seconds)


# What POST /_control may change while the fake runs (FakeEngine.configure).
CONTROL_SETTINGS = ("delay", "token_delay", "max_in_flight", "words_per_line", "out_tokens", "max_model_len",
                    "prefix_cache", "answers")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False     # stop() must not wait for a request hanging on purpose
    allow_reuse_address = True
    request_queue_size = 128   # a gateway opening dozens of connections at once (benchmarks)
    engine: FakeEngine

    def handle_error(self, request, client_address) -> None:
        # A client that went away (killed gateway, timeout) is expected in these tests.
        import sys
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"   # keep-alive, like a real engine behind the openai client
    disable_nagle_algorithm = True  # else delayed ACKs add ~40 ms to every keep-alive call
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:   # keep test output quiet
        pass

    @property
    def engine(self) -> FakeEngine:
        return self.server.engine

    # --- plumbing ----------------------------------------------------------------------

    def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        record = getattr(self, "_current", None)
        if record is not None:
            # Recorded before the answer leaves: a client that reads the records right after its
            # answer must see this request finished, not still in progress.
            with self.engine.lock:
                record["finished"], record["status"] = time.monotonic(), status
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, kind: str,
               headers: dict[str, str] | None = None) -> None:
        # vLLM's error shape.
        self._send(status, {"object": "error", "message": message, "type": kind,
                            "param": None, "code": status}, headers)

    def _read_json(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw or b"{}")
        except ValueError:
            return None

    def _drop(self) -> None:
        self.close_connection = True
        self.connection.close()

    # --- routes ------------------------------------------------------------------------

    def do_GET(self) -> None:
        route, _, query = self.path.partition("?")
        if route != "/_control":
            self._record({})
        if route == "/health":
            self._send(200, b"")
        elif route == "/v1/models":
            names = self.engine.models or ("fake-model",)
            self._send(200, {"object": "list", "data": [
                {"id": n, "object": "model", "owned_by": "fake",
                 "max_model_len": self.engine.max_model_len} for n in names]})
        elif route == "/_control":
            self._state(with_prompts="prompts=0" not in query.split("&"))
        else:
            self._error(404, f"no route {self.path}", "NotFoundError")

    def _state(self, with_prompts: bool) -> None:
        """GET /_control: the records (?prompts=0 leaves out the prompts, which a benchmark's
        thousands of long calls make heavy), faults pending, calls in flight and waiting."""
        eng = self.engine
        with eng.lock:      # answered under the lock: no record changes while it is written out
            records = eng.requests if with_prompts else [
                {k: v for k, v in r.items() if k not in ("messages", "prompt")} for r in eng.requests]
            self._send(200, {"requests": records, "faults_pending": len(eng.faults),
                             "max_seen_in_flight": eng.max_seen_in_flight, "in_flight": eng.in_flight,
                             "waiting": len(eng._waiting), "answers": eng.answers})

    def do_POST(self) -> None:
        body = self._read_json()
        if body is None:
            self._record({})
            self._error(400, "request body is not JSON", "BadRequestError")
        elif self.path == "/v1/chat/completions":
            self._chat(body)
        elif self.path == "/tokenize" and self.engine.tokenize != "none":
            self._record(body)
            self._tokenize(body)
        elif self.path == "/apply-template" and self.engine.tokenize == "llamacpp":
            self._record(body)
            self._send(200, {"prompt": self.engine.chat_template(body.get("messages") or [])})
        elif self.path == "/_control":
            self._control(body)
        else:
            self._record(body)
            self._error(404, f"no route {self.path}", "NotFoundError")

    def _record(self, body: dict[str, Any]) -> dict[str, Any]:
        messages = body.get("messages") or []
        record = {
            "path": self.path, "model": body.get("model"), "messages": messages,
            "prompt": messages[-1].get("content", "") if messages else body.get("prompt"),
            "temperature": body.get("temperature"), "top_p": body.get("top_p"),
            "max_tokens": body.get("max_tokens"),
            "authorization": self.headers.get("Authorization"),
            "arrived": time.monotonic(), "started": None, "finished": None, "status": None, "fault": None,
            "cached_tokens": None,
            "finish_reason": None,
            "answer_faults": [],     # what the answer faults did to this call's echo
        }
        with self.engine.lock:
            self.engine.requests.append(record)
        return record

    def _tokenize(self, body: dict[str, Any]) -> None:
        eng = self.engine
        if eng.tokenize == "llamacpp":
            # llama.cpp's shape; a body without "content" (vLLM's) is no tokens, not an error.
            tokens = eng.encode(body.get("content", ""), bool(body.get("add_special", False)))
            self._send(200, {"tokens": tokens})
            return
        if "messages" in body:
            tokens = eng.encode(eng.chat_template(body["messages"]), True)
        else:
            tokens = eng.encode(body.get("prompt", ""), bool(body.get("add_special_tokens", True)))
        self._send(200, {"count": len(tokens), "tokens": tokens, "max_model_len": eng.max_model_len})

    def _control(self, body: dict[str, Any]) -> None:
        """Set the fake's behavior from another process: faults, delay, limits, reset."""
        eng = self.engine
        try:
            if body.get("reset"):
                eng.reset()
            for fault in body.get("faults", []):
                fault = parse_fault(fault) if isinstance(fault, str) else dict(fault)
                eng.add_fault(fault.pop("kind"), int(fault.pop("times", 1)), **fault)
            eng.configure(**{key: body[key] for key in CONTROL_SETTINGS if key in body})
        except ValueError as error:    # an unknown fault or answer key: say which, not a dropped connection
            self._error(400, str(error), "BadRequestError")
            return
        self._send(200, {"ok": True, "faults_pending": len(eng.faults)})

    def _chat(self, body: dict[str, Any]) -> None:
        eng = self.engine
        record = self._record(body)
        self._current = record
        eng._acquire_slot()
        record["started"] = time.monotonic()      # given a slot: what came before was waiting
        try:
            status = self._answer_chat(body, record, eng._next_fault())
        finally:
            eng._release_slot()
            self._current = None
        with eng.lock:
            if record["finished"] is None:   # no answer was sent (a dropped connection)
                record["finished"], record["status"] = time.monotonic(), status

    def _answer_chat(self, body: dict[str, Any], record: dict[str, Any],
                     fault: dict[str, Any] | None) -> int | None:
        """Answer one chat completion, or fail it as `fault` says; returns the status sent."""
        eng = self.engine
        kind = fault["kind"] if fault else None
        record["fault"] = kind
        if eng.delay:
            eng._wait(eng.delay)
        if kind == "drop":
            self._drop()
            return None
        if kind == "hang":
            eng._wait(float(fault.get("seconds", 30)))
            self._drop()
            return None
        if fault and "retry_after" in fault:
            headers = {"Retry-After": str(fault["retry_after"])}
        else:
            headers = None
        if kind == "429":
            self._error(429, fault.get("message", "Too many requests, please retry later"),
                        "RateLimitError", headers)
            return 429
        if kind in ("500", "502", "503", "504"):
            self._error(int(kind), fault.get("message", f"fake engine failure {kind}"),
                        "InternalServerError", headers)
            return int(kind)
        if kind == "401":
            self._error(401, fault.get("message", "Invalid API key"), "AuthenticationError")
            return 401
        model = body.get("model")
        if kind == "404" or (eng.models is not None and model not in eng.models):
            self._error(404, f"The model `{model}` does not exist.", "NotFoundError")
            return 404
        if kind == "malformed":
            self._send(200, b'{"id": "chatcmpl-1", "choices": [{"message": ')
            return 200

        messages = body.get("messages") or []
        prompt = messages[-1].get("content", "") if messages else ""
        prompt_tokens = eng.count(eng.chat_template(messages))
        max_tokens = int(body.get("max_tokens") or 256)
        if kind == "context" or prompt_tokens + max_tokens > eng.max_model_len:
            limit = int(fault.get("max_model_len", prompt_tokens)) if fault else eng.max_model_len
            self._error(400, (
                f"This model's maximum context length is {limit} tokens. However, you "
                f"requested {prompt_tokens + max_tokens} tokens ({prompt_tokens} in the "
                f"messages, {max_tokens} in the completion). Please reduce the length of "
                "the messages or completion."), "BadRequestError")
            return 400
        if kind == "empty_choices":
            self._send(200, {"id": "chatcmpl-fake", "object": "chat.completion",
                             "created": int(time.time()), "model": model, "choices": [],
                             "usage": {"prompt_tokens": prompt_tokens,
                                       "completion_tokens": 0, "total_tokens": prompt_tokens}})
            return 200

        if eng.reply:
            text = eng.reply(prompt)
        else:
            text, record["answer_faults"] = eng.echo(prompt)
        if eng.out_tokens is not None:
            text = exactly(text, eng.out_tokens)
        finish_reason = "stop"
        if kind == "empty":
            text = str(fault.get("content", ""))
        elif kind == "length":   # cut mid-output, as an engine hitting max_tokens does
            text, finish_reason = _first_tokens(text, int(fault.get("words", 3))), "length"
        elif kind == "loop":
            first = text.splitlines()[0] if text else ""
            phrase = str(fault.get("phrase", "et ainsi de suite,"))
            text = _first_tokens(first + " " + " ".join([phrase] * max_tokens), max_tokens)
            finish_reason = "length"
        elif count_tokens(text) > max_tokens:
            text, finish_reason = _first_tokens(text, max_tokens), "length"
        completion_tokens = count_tokens(text)
        record["finish_reason"] = finish_reason
        usage: dict[str, Any] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                 "total_tokens": prompt_tokens + completion_tokens}
        if eng.prefix_cache:
            usage["prompt_tokens_details"] = {"cached_tokens": eng.cached_prefix(eng.chat_template(messages))}
            record["cached_tokens"] = usage["prompt_tokens_details"]["cached_tokens"]
        if eng.token_delay:
            eng._wait(eng.token_delay * completion_tokens)     # generating costs per token
        self._send(200, {
            "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "finish_reason": finish_reason,
                         "message": {"role": "assistant", "content": text}}],
            "usage": usage,
        })
        return 200


def _first_tokens(text: str, n: int) -> str:
    """The text up to its n-th word, keeping line breaks."""
    if n <= 0:
        return ""
    kept: list[int] = []
    for match in re.finditer(r"\S+", text):
        if len(kept) == n:
            return text[:kept[-1]]
        kept.append(match.end())
    return text


def main(argv: list[str] | None = None) -> None:
    """Run the fake engine in the foreground until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds per chat call")
    parser.add_argument("--token-delay", type=float, default=0.0, help="seconds per completion token")
    parser.add_argument("--max-in-flight", type=int, default=None, help="chat calls served at once")
    parser.add_argument("--words-per-line", type=int, default=5)
    parser.add_argument("--out-tokens", type=int, default=None,
                        help="answer exactly this many tokens (default: echo the turns)")
    parser.add_argument("--tokenize", choices=TOKENIZE_APIS, default="vllm",
                        help="the tokenize API served (none: no /tokenize route)")
    parser.add_argument("--max-model-len", type=int, default=32768)
    parser.add_argument("--prefix-cache", action="store_true",
                        help="report usage.prompt_tokens_details.cached_tokens (prefix shared with the previous prompt)")
    parser.add_argument("--model", action="append", default=None,
                        help="accepted model name (repeatable); default: any")
    parser.add_argument("--answers", type=json.loads, default=None,
                        help='answer faults of the echo as JSON, e.g. \'{"skip_once_every": 3, "reverse": true}\'')
    parser.add_argument("--fault", action="append", default=[],
                        help='queued fault, e.g. "503", "429:retry_after=2", "hang:seconds=5"')
    args = parser.parse_args(argv)
    eng = FakeEngine(args.host, args.port, delay=args.delay, max_in_flight=args.max_in_flight,
                     words_per_line=args.words_per_line, max_model_len=args.max_model_len,
                     models=tuple(args.model) if args.model else None, token_delay=args.token_delay,
                     out_tokens=args.out_tokens, tokenize=args.tokenize, prefix_cache=args.prefix_cache,
                     answers=args.answers)
    for spec in args.fault:
        fault = parse_fault(spec)
        eng.add_fault(fault.pop("kind"), int(fault.pop("times", 1)), **fault)
    eng.start()
    print(f"fake engine listening on {eng.base_url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        eng.stop()


if __name__ == "__main__":
    main()
