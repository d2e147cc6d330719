#!/usr/bin/env python3
"""A latency-model fake engine (OpenAI-compatible, loopback only) for the benchmarks.

It stands for a GPU engine such as vLLM: every chat completion costs

    base_ms + per_token_ms x completion_tokens

of engine time, at most `capacity` requests are served at once (a batching engine), and the
others wait in a FIFO queue. The time is spent sleeping, so the engine itself needs almost
no CPU and leaves the machine to the gateway being measured.

    python3 scripts/latency_engine.py --port 0 --base-ms 100 --per-token-ms 3 --capacity 8

prints `latency engine listening on http://127.0.0.1:PORT/v1` once ready. The answer echoes,
for each "Speaker : text" line of the prompt's last section that has such lines, the line
"Speaker : <first words_per_line words>" (so a summary looks like one); with `out_tokens` set,
the answer is cut or padded to exactly that many whitespace tokens, so every call costs the
same. Tokens are whitespace-separated words. There is no /tokenize route (404), so the
gateway falls back to its default tokenizer.

Control (for the benchmark runner):
    GET  /_stats      {"config": {...}, "calls": [{arrived, started, finished, engine_s, waited_s,
                       completion_tokens, prompt_chars, model[, prompt]}], "max_in_flight"}
                      engine_s: the engine's own time for the call (request read, modelled cost,
                      answer written), without waited_s, the wait for a free slot.
    POST /_config     {"base_ms", "per_token_ms", "capacity", "out_tokens", "words_per_line",
                       "record_prompts", "reset": true}  (any subset)
Times are this process's time.monotonic(); durations are what matters.
"""
from __future__ import annotations

import argparse
import json
import re
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SPEAKER_LINE = re.compile(r"^(.+?) : (.+)$")


def last_section_turns(prompt: str) -> list[tuple[str, str]]:
    """(speaker, text) of the "Speaker : text" lines in the prompt's last section holding any."""
    for section in reversed(re.split(r"\n\s*\n", prompt)):
        found = [m.groups() for m in map(SPEAKER_LINE.match, section.splitlines()) if m]
        if found:
            return found
    return []


def reply_text(prompt: str, words_per_line: int, out_tokens: int | None) -> str:
    """The completion: one short line per turn; exactly `out_tokens` words when that is set."""
    lines = [f"{s} : {' '.join(t.split()[:words_per_line])}" for s, t in last_section_turns(prompt)]
    if out_tokens is None:
        return "\n".join(lines) or "Résumé : rien à signaler."
    kept, n = [], 0
    for line in lines:
        words = line.split()
        if n + len(words) > out_tokens:
            words = words[: out_tokens - n]
        if words:
            kept.append(" ".join(words))
            n += len(words)
        if n >= out_tokens:
            break
    if n < out_tokens:
        kept.append(" ".join(["etc."] * (out_tokens - n)))
    return "\n".join(kept)


class Slots:
    """`capacity` requests served at once; the others wait in arrival order."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.busy = 0
        self.max_busy = 0
        self.waiting: deque[threading.Event] = deque()
        self.lock = threading.Lock()

    def acquire(self) -> None:
        with self.lock:
            if self.busy < self.capacity and not self.waiting:
                self.busy += 1
                self.max_busy = max(self.max_busy, self.busy)
                return
            ticket = threading.Event()
            self.waiting.append(ticket)
        ticket.wait()          # release() hands its slot over: busy is already counted

    def release(self) -> None:
        with self.lock:
            if self.waiting and self.busy <= self.capacity:
                self.waiting.popleft().set()
            else:
                self.busy -= 1

    def resize(self, capacity: int) -> None:
        with self.lock:
            self.capacity = capacity
            while self.waiting and self.busy < self.capacity:
                self.busy += 1
                self.waiting.popleft().set()
            self.max_busy = self.busy


class LatencyEngine:
    """The engine's state: its cost model, slots and the record of calls."""

    def __init__(self, base_ms: float, per_token_ms: float, capacity: int,
                 out_tokens: int | None = None, words_per_line: int = 5):
        self.base_ms, self.per_token_ms = base_ms, per_token_ms
        self.out_tokens, self.words_per_line = out_tokens, words_per_line
        self.record_prompts = False
        self.slots = Slots(capacity)
        self.calls: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def config(self) -> dict[str, Any]:
        return {"base_ms": self.base_ms, "per_token_ms": self.per_token_ms,
                "capacity": self.slots.capacity, "out_tokens": self.out_tokens,
                "words_per_line": self.words_per_line, "record_prompts": self.record_prompts}

    def configure(self, body: dict[str, Any]) -> None:
        with self.lock:
            if body.get("reset"):
                self.calls.clear()
            for key in ("base_ms", "per_token_ms", "out_tokens", "words_per_line",
                        "record_prompts"):
                if key in body:
                    setattr(self, key, body[key])
        if "capacity" in body:
            self.slots.resize(int(body["capacity"]))
        elif body.get("reset"):
            self.slots.resize(self.slots.capacity)

    def cost(self, completion_tokens: int) -> float:
        """Seconds of engine time for one call."""
        return (self.base_ms + self.per_token_ms * completion_tokens) / 1000.0


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256
    engine: LatencyEngine

    def handle_error(self, request, client_address) -> None:
        import sys
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            return json.loads(self.rfile.read(length) or b"{}") if length else {}
        except ValueError:
            return {}

    def do_GET(self) -> None:
        eng = self.server.engine
        if self.path == "/health":
            self._send(200, {})
        elif self.path == "/v1/models":
            self._send(200, {"object": "list", "data": [
                {"id": "bench-model", "object": "model", "owned_by": "bench"}]})
        elif self.path == "/_stats":
            with eng.lock:
                calls = list(eng.calls)
            self._send(200, {"config": eng.config(), "calls": calls,
                             "max_in_flight": eng.slots.max_busy})
        else:
            self._send(404, {"object": "error", "message": f"no route {self.path}",
                             "type": "NotFoundError", "code": 404})

    def do_POST(self) -> None:
        eng = self.server.engine
        arrived = time.monotonic()
        body = self._body()
        if self.path == "/_config":
            eng.configure(body)
            self._send(200, eng.config())
        elif self.path == "/v1/chat/completions":
            self._chat(eng, body, arrived)
        else:
            self._send(404, {"object": "error", "message": f"no route {self.path}",
                             "type": "NotFoundError", "code": 404})

    def _chat(self, eng: LatencyEngine, body: dict[str, Any], arrived: float) -> None:
        messages = body.get("messages") or []
        prompt = messages[-1].get("content", "") if messages else ""
        max_tokens = int(body.get("max_tokens") or 256)
        text = reply_text(prompt, eng.words_per_line, eng.out_tokens)
        words = text.split()
        finish = "stop"
        if len(words) > max_tokens:
            text, finish = " ".join(words[:max_tokens]), "length"
        completion_tokens = min(len(words), max_tokens)
        prompt_tokens = len(prompt.split())
        queued = time.monotonic()
        eng.slots.acquire()
        started = time.monotonic()
        try:
            time.sleep(eng.cost(completion_tokens))
            self._send(200, {
                "id": "chatcmpl-bench", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model"),
                "choices": [{"index": 0, "finish_reason": finish,
                             "message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}})
        finally:
            finished = time.monotonic()
            eng.slots.release()
        # The engine's own time for this call: reading it, the modelled cost, answering; the
        # wait for a free slot (capacity) is not counted.
        record = {"arrived": arrived, "started": started, "finished": finished,
                  "engine_s": (finished - arrived) - (started - queued), "waited_s": started - queued,
                  "completion_tokens": completion_tokens,
                  "prompt_chars": len(prompt), "model": body.get("model"),
                  "finish_reason": finish}
        if eng.record_prompts:
            record["prompt"] = prompt
        with eng.lock:
            eng.calls.append(record)


def serve(port: int, engine: LatencyEngine) -> _Server:
    """Listen on 127.0.0.1:port (0: any free port); the caller runs serve_forever()."""
    server = _Server(("127.0.0.1", port), _Handler)
    server.engine = engine
    return server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--base-ms", type=float, default=100.0, help="fixed cost of a call")
    parser.add_argument("--per-token-ms", type=float, default=3.0, help="cost per output token")
    parser.add_argument("--capacity", type=int, default=8, help="requests served at once")
    parser.add_argument("--out-tokens", type=int, default=None,
                        help="answer exactly this many tokens (default: echo the turns)")
    parser.add_argument("--words-per-line", type=int, default=5)
    args = parser.parse_args(argv)
    engine = LatencyEngine(args.base_ms, args.per_token_ms, args.capacity, args.out_tokens,
                           args.words_per_line)
    server = serve(args.port, engine)
    print(f"latency engine listening on http://127.0.0.1:{server.server_address[1]}/v1", flush=True)
    try:
        server.serve_forever(0.1)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
