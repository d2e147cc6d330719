"""A recording pass-through between the e2e gateway and the real engine.

The gateway reports a job's usage as totals; what the engine said about each call (how many of
its prompt tokens it took from its prefix cache) is only in each answer. This proxy forwards
every request to the engine unchanged and keeps, for each chat completion, when it was sent and
answered, its prompt and the engine's usage, so a test can check the cache call by call.
"""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

# Headers that belong to one hop, not to the request: the proxy sets its own (send_response
# writes Server and Date; the body is passed on decoded, so without its encoding).
_HOP_HEADERS = {"host", "content-length", "connection", "keep-alive", "transfer-encoding", "server", "date",
                "content-encoding"}


class Recorder:
    """`Recorder(engine_root)`: serve on a free loopback port, forward to the engine, record."""

    def __init__(self, engine_root: str):
        self.engine_root = engine_root.rstrip("/")
        self.lock = threading.Lock()
        self.calls: list[dict] = []       # chat completions answered 200, in arrival order
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.recorder = self
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True,
                                        name="e2e-recorder")

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> "Recorder":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._server.shutdown()
        self._server.server_close()

    def chat_calls(self) -> list[dict]:
        with self.lock:
            return list(self.calls)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"      # keep-alive, as the gateway's client expects of an engine

    def log_message(self, format, *args) -> None:    # quiet: the engine's own log has the calls
        pass

    def do_GET(self) -> None:
        self._forward(None)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self._forward(self.rfile.read(length) if length else b"")

    def _forward(self, body: bytes | None) -> None:
        recorder: Recorder = self.server.recorder
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS}
        arrived = time.monotonic()
        try:
            answer = requests.request(self.command, recorder.engine_root + self.path, data=body,
                                      headers=headers, timeout=3600)
        except requests.RequestException:
            # As an engine that went away: the gateway sees a dropped connection.
            self.close_connection = True
            return
        finished = time.monotonic()
        if self.path.startswith("/v1/chat/completions") and answer.status_code == 200:
            sent, got = json.loads(body or b"{}"), answer.json()
            with recorder.lock:
                recorder.calls.append({"arrived": arrived, "finished": finished,
                                       "prompt": sent["messages"][-1]["content"], "usage": got.get("usage") or {}})
        self.send_response(answer.status_code)
        for name, value in answer.headers.items():
            if name.lower() not in _HOP_HEADERS:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer.content)))
        self.end_headers()
        self.wfile.write(answer.content)
