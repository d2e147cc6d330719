"""LinTO Studio, the gateway's real client, replayed request by request against the real `python3 -m app`.

Studio (github linto-ai/linto-studio, studio-api) makes "compte rendu" exports through the seed's
API. Two generations are in use:

- polling (studio-api controllers/llm/index.js, 2024): lists GET /services, submits a chunked
  multipart form (`flavor`, and `file` as text/plain `file_<service>_<conversation>.txt`), then
  polls GET /results/<id> every 5 s until `status` is complete, error or nojob (a non-2xx answer
  also ends it, as an error);
- websocket (controllers/llm/llm_ws.js, since 2025): submits the same way, then follows the jobs
  on one socket to LLM_GATEWAY_SERVICES_WS (`ws://host/ws/results`), sending arrays of ids as
  exports are listed; it skips {"status": "alive"} and ids it does not know.

`StudioExport` below does with each answer what Studio does with it (its `updateStatus`), so the
tests assert what Studio would store: the summary, the percentage, the error reason. Studio's code
is described here, not copied. The polling interval is shortened (POLL_S) to keep the suite fast;
the stop rule and the fields read are Studio's. Every test runs embedded and scaled.
"""
from __future__ import annotations

import json
import re
import shutil
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
from simple_websocket import Client, ConnectionClosed, ConnectionError as HandshakeRefused

from tests.processes import FakeEngineProcess, Gateway, wait_until

pytestmark = pytest.mark.slow

POLL_S = 0.25             # Studio: 5 s
TERMINAL_POLL = ("complete", "error", "nojob")           # the polling client's stop rule
TERMINAL_WS = ("complete", "error", "unknown")           # the websocket client's
# A conversation as Studio writes it: "<speaker_name> : <segment>" lines, joined by "\n", no
# trailing newline; speakers are diarization ids unless renamed ("speaker" when there is none,
# "undefined" when the id has no name).
STUDIO_TRANSCRIPT = "\n".join([
    "spk1 : Bonjour à tous, nous commençons la réunion sur le budget de l'année prochaine.",
    "spk2 : Merci. Je propose de regarder d'abord les dépenses de fonctionnement.",
    "Jean Dupont : Les dépenses ont augmenté de trois pour cent : il faut comprendre pourquoi.",
    "marie : Les loyers surtout, et l'énergie.",
    "spk1 : Très bien, passons aux investissements.",
    "undefined : Une question sur le calendrier.",
    "speaker : Le vote aura lieu en mars.",
])


@dataclass
class StudioExport:
    """A conversationExport document as Studio keeps it, updated from the gateway's answers."""

    job_id: str | None = None
    status: str = "processing"
    processing: Any = 0
    data: str | None = None
    error: Any = None
    seen_processing: list = field(default_factory=list)

    def update_from_poll(self, body: dict) -> None:
        """Studio's polling updateStatus."""
        self.status = body["status"]
        if body["status"] == "complete" and body["message"] == "success":
            self.data = body["summarization"]
            self.processing = "Processing 100%"
        elif body["status"] == "error":
            self.data = body["message"]
        elif body["status"] in ("queued", "processing"):
            self.processing = body["message"]
            self.seen_processing.append(body["message"])

    def update_from_socket(self, task: dict) -> None:
        """Studio's websocket updateStatus."""
        self.status = task["status"]
        if task["status"] == "complete" and task["message"] == "success":
            self.data = task["summarization"]
            self.processing = task.get("progress") or 100
        elif task["status"] in ("error", "unknown"):
            self.data = task.get("error") or task["message"]
        elif task["status"] in ("queued", "processing", "started", "progress"):
            self.processing = task.get("progress")
            self.seen_processing.append(task.get("progress"))


def studio_services(gateway) -> list[dict]:
    """What the export page does with GET /services: iterate, read name, description, flavor[0]."""
    services = requests.get(f"{gateway.url}/services", timeout=10).json()
    tabs = []
    for service in services:           # "services is not iterable" if this is not an array
        description = service["description"]
        text = description.get("fr") or description.get("en") or next(iter(description.values()))
        tabs.append({"name": service["name"], "flavor": service["flavor"][0]["name"],
                     "route": service.get("route", service["name"]), "description": text})
    return tabs


def multipart(flavor: str, filename: str, text: str) -> tuple[str, bytes]:
    """The body the form-data package builds: the `flavor` field, then the file as text/plain."""
    boundary = "--------------------------" + uuid.uuid4().hex[:24]
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"flavor\"\r\n\r\n{flavor}\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n"
            f"Content-Type: text/plain\r\n\r\n").encode() + text.encode("utf-8") + f"\r\n--{boundary}--\r\n".encode()
    return f"multipart/form-data; boundary={boundary}", body


def studio_submit(gateway, service: str, flavor: str, text: str, conversation: str = "64f0c0ffee") -> str:
    """POST the export as Studio does: multipart streamed with Transfer-Encoding: chunked, no key."""
    content_type, body = multipart(flavor, f"file_{service}_{conversation}.txt", text)
    chunks = (body[i:i + 700] for i in range(0, len(body), 700))      # a generator: requests sends it chunked
    response = requests.post(f"{gateway.url}/services/{service}/generate", data=chunks,
                             headers={"Content-Type": content_type}, timeout=30)
    assert response.request.headers.get("Transfer-Encoding") == "chunked"
    return response.json().get("jobId")         # Studio reads jobId and nothing else


def studio_poll(gateway, export: StudioExport, timeout: float = 60) -> StudioExport:
    """Studio's polling loop: until a terminal status, or a non-2xx answer (an error for Studio)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = requests.get(f"{gateway.url}/results/{export.job_id}", timeout=10)
        if response.status_code >= 300:
            export.status, export.error = "error", response.json()
            return export
        body = response.json()
        export.update_from_poll(body)
        if body["status"] in TERMINAL_POLL:
            return export
        time.sleep(POLL_S)
    raise AssertionError(f"Studio would still be polling {export.job_id}: {export}")


ENGINE_DELAY = 0.2      # slow enough answers that a job is seen queued and processing


@pytest.fixture(scope="module")
def engine():
    """One fake engine for the module; `engine_as_new` gives each test it as new."""
    process = FakeEngineProcess("--delay", str(ENGINE_DELAY))
    yield process
    process.stop()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, engine, module_deployment):
    """One gateway for the module's tests, embedded then scaled: starting one per test was most of
    the module's time. Each test makes its own jobs and waits for them to end."""
    tmp = tmp_path_factory.mktemp("studio")
    shutil.copytree("services", tmp / "services")
    started = Gateway(tmp, engine.base_url, services_dir=str(tmp / "services"), workers=2,
                      deployment=module_deployment).start()
    yield started
    started.stop()


@pytest.fixture(autouse=True)
def engine_as_new(engine):
    """No call of an earlier test in flight, its faults and recorded requests forgotten, the delay reset."""
    engine.wait_idle()
    engine.control(reset=True, delay=ENGINE_DELAY)


def test_the_export_page_lists_the_services_as_an_array(gateway):
    tabs = studio_services(gateway)
    assert [t["name"] for t in tabs] == ["cra", "cred", "summary"]
    assert all(t["flavor"] and t["description"] for t in tabs)
    assert tabs[0]["description"] == "Compte Rendu Analytique"


def test_polling_studio_stores_the_summary_and_shows_numbers_as_progress(gateway, engine):
    export = StudioExport(job_id=studio_submit(gateway, "cra", "mixtral", STUDIO_TRANSCRIPT))
    assert export.job_id
    studio_poll(gateway, export)
    assert export.status == "complete" and export.processing == "Processing 100%"
    # Every turn reached the engine under its label and came back in the summary (the fake echoes).
    speakers = [line.split(" : ", 1)[0] for line in export.data.splitlines()]
    assert speakers == ["spk1", "spk2", "Jean Dupont", "marie", "spk1", "undefined", "speaker"]
    # While it ran, Studio showed "Processing 0%" (queued) or a number followed by "%".
    assert export.seen_processing, "Studio saw no progress at all"
    for shown in export.seen_processing:
        assert shown == "Processing 0%" or isinstance(shown, (int, float)), shown


def test_a_long_spk1_turn_is_sent_under_its_label_in_every_piece(gateway, engine):
    long_turn = " ".join(f"mot{i}" for i in range(900))          # > createNewTurnAfter: cut into pieces
    text = f"spk1 : {long_turn}\nspk2 : Merci pour cette intervention."
    export = studio_poll(gateway, StudioExport(job_id=studio_submit(gateway, "cra", "mixtral", text)))
    assert export.status == "complete", export
    sent = [line for r in engine.chat_requests() for line in r["prompt"].splitlines()
            if re.match(r"^\S+ : mot\d", line)]
    assert len(sent) >= 2, "the long turn was not cut into pieces"
    assert all(line.startswith("spk1 : ") for line in sent), sent[:3]


def test_a_failed_job_is_an_error_with_its_reason(gateway, engine):
    engine.control(faults=["404:times=50"])            # the engine does not know the model
    export = studio_poll(gateway, StudioExport(job_id=studio_submit(gateway, "cra", "mixtral", STUDIO_TRANSCRIPT)))
    assert export.status == "error"
    assert export.data and "model" in export.data.lower(), export.data
    body = gateway.result(export.job_id)
    assert body["state"] == "failed" and body["error"] == body["message"]


def test_an_unknown_id_is_nojob(gateway):
    response = requests.get(f"{gateway.url}/results/does-not-exist", timeout=10)
    assert response.status_code == 404
    body = response.json()
    assert body["status"] == "nojob" and body["message"] == "does-not-exist does not exist"
    export = studio_poll(gateway, StudioExport(job_id="does-not-exist"))
    assert export.status == "error"


def test_a_cancelled_job_ends_as_an_error_saying_so(gateway, engine):
    engine.control(delay=2.0)
    job_id = studio_submit(gateway, "cra", "mixtral", STUDIO_TRANSCRIPT)
    requests.delete(f"{gateway.url}/results/{job_id}", timeout=10)
    export = studio_poll(gateway, StudioExport(job_id=job_id), timeout=60)
    assert export.status == "error" and "cancelled" in export.data


class StudioSocket:
    """Studio's websocket client (llm_ws.js): one socket, arrays of ids sent as exports are listed."""

    def __init__(self, url: str):
        self.ws = Client.connect(url)
        self.exports: dict[str, StudioExport] = {}
        self.frames: list[Any] = []

    def watch(self, *exports: StudioExport) -> None:
        for export in exports:
            self.exports[export.job_id] = export
        self.ws.send(json.dumps([e.job_id for e in exports]))

    def handle(self, frame: str) -> None:
        data = json.loads(frame)
        self.frames.append(data)
        if isinstance(data, dict) and data.get("status") == "alive":
            return
        for task in data if isinstance(data, list) else [data]:
            assert "task_id" in task, task          # Studio drops the rest of the frame without one
            export = self.exports.get(task["task_id"])
            if export is not None:                  # a job Studio does not know is skipped
                export.update_from_socket(task)

    def run_until_done(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while any(e.status not in TERMINAL_WS for e in self.exports.values()):
            assert time.monotonic() < deadline, {k: (e.status, e.processing) for k, e in self.exports.items()}
            frame = self.ws.receive(timeout=5)
            if frame is not None:
                self.handle(frame)


def test_websocket_studio_follows_several_jobs_to_complete(gateway, engine):
    first = StudioExport(job_id=studio_submit(gateway, "cra", "mixtral", STUDIO_TRANSCRIPT))
    second = StudioExport(job_id=studio_submit(gateway, "summary", "mixtral", STUDIO_TRANSCRIPT))
    studio = StudioSocket(gateway.url.replace("http://", "ws://") + "/ws/results")
    try:
        studio.watch(first)
        answer = json.loads(studio.ws.receive(timeout=10))
        studio.handle(json.dumps(answer))
        assert isinstance(answer, list) and answer[0]["task_id"] == first.job_id
        studio.watch(second)                         # a second array on the same socket
        studio.run_until_done()
        assert first.status == second.status == "complete"
        assert first.data == gateway.result(first.job_id)["summarization"]
        assert second.data == gateway.result(second.job_id)["summarization"]
        assert first.processing == 100
        # Heartbeats come every few seconds; wait for one if the jobs were quicker.
        deadline = time.monotonic() + 10
        while {"status": "alive"} not in studio.frames and time.monotonic() < deadline:
            studio.handle(studio.ws.receive(timeout=10) or '{"status": "alive", "note": "none"}')
        assert {"status": "alive"} in studio.frames
    finally:
        studio.ws.close()


def test_websocket_reports_jobs_it_was_never_sent_and_unknown_ids(gateway, engine):
    """Studio remembers ids across reconnects but never sends them again: changes of every job are pushed."""
    studio = StudioSocket(gateway.url.replace("http://", "ws://") + "/ws/results")
    try:
        studio.ws.send(json.dumps(["no-such-job"]))
        assert json.loads(studio.ws.receive(timeout=10)) == [
            {"task_id": "no-such-job", "status": "unknown", "message": "Task does not exist"}]
        export = StudioExport(job_id=studio_submit(gateway, "cra", "mixtral", STUDIO_TRANSCRIPT))
        studio.exports[export.job_id] = export          # known to Studio, never sent on this socket
        studio.run_until_done()
        assert export.status == "complete" and export.data
    finally:
        studio.ws.close()


def test_websocket_follow_one_job(gateway, engine):
    job_id = studio_submit(gateway, "cra", "mixtral", STUDIO_TRANSCRIPT)
    ws = Client.connect(gateway.url.replace("http://", "ws://") + f"/ws/results/{job_id}")
    frames = []
    with pytest.raises(ConnectionClosed):
        while True:
            frame = ws.receive(timeout=30)
            assert frame is not None, frames
            frames.append(json.loads(frame))
    assert frames[-1]["status"] == "complete" and frames[-1]["summarization"]
    assert ws.close_reason == 1000


@pytest.mark.parametrize("message, code, words", [
    ("not json", 1003, "not JSON"),
    ('{"ids": ["a"]}', 1008, "array"),
    (json.dumps([str(i) for i in range(10_000)]), 1008, "At most"),
    ("[1, 2]", 1008, "strings"),
])
def test_websocket_bad_input_closes_with_a_reason_and_disturbs_nothing(gateway, engine, message, code, words):
    url = gateway.url.replace("http://", "ws://") + "/ws/results"
    bystander = StudioSocket(url)
    export = StudioExport(job_id=studio_submit(gateway, "cra", "mixtral", STUDIO_TRANSCRIPT))
    try:
        bystander.watch(export)
        bad = Client.connect(url)
        bad.send(message)
        with pytest.raises(ConnectionClosed):
            while bad.receive(timeout=10) is not None:
                pass
        assert bad.close_reason == code and words in bad.close_message, (bad.close_reason, bad.close_message)
        bystander.run_until_done()
        assert export.status == "complete"
    finally:
        bystander.ws.close()


def test_a_client_that_never_reads_is_closed_and_disturbs_nothing(gateway, engine):
    """A raw socket that upgrades, asks for many jobs, then reads nothing: the gateway closes it
    when it misses its pings; meanwhile other sockets and jobs go on."""
    host, port = gateway.url[len("http://"):].split(":")
    raw = socket.create_connection((host, int(port)))
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.sendall(f"GET /ws/results HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    payload = json.dumps(["x" * 36] * 900).encode()             # a masked client text frame
    mask = b"\x01\x02\x03\x04"
    raw.sendall(b"\x81\xfe" + len(payload).to_bytes(2, "big") + mask
                + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
    started = time.monotonic()
    export = StudioExport(job_id=studio_submit(gateway, "cra", "mixtral", STUDIO_TRANSCRIPT))
    studio = StudioSocket(gateway.url.replace("http://", "ws://") + "/ws/results")
    try:
        studio.watch(export)
        studio.run_until_done()
        assert export.status == "complete"
        assert requests.get(f"{gateway.url}/healthcheck", timeout=5).status_code == 200

        def closed_by_gateway():
            raw.settimeout(1)
            try:
                while raw.recv(65536):
                    pass
                return True          # EOF: the gateway closed it
            except socket.timeout:
                return False
            except OSError:
                return True
        wait_until(closed_by_gateway, 60, interval=0.5, what="the gateway to close the silent socket")
        print(f"a socket that never reads: closed by the gateway after {time.monotonic() - started:.0f} s")
    finally:
        studio.ws.close()
        raw.close()


def test_websocket_with_gateway_keys(tmp_path, engine, deployment):
    folder = tmp_path / "services"
    shutil.copytree("services", folder)
    gw = Gateway(tmp_path, engine.base_url, services_dir=str(folder), deployment=deployment,
                 env={"API_KEYS": "s3cret"}).start()
    try:
        url = gw.url.replace("http://", "ws://") + "/ws/results"
        with pytest.raises(HandshakeRefused, match="401"):
            Client.connect(url)
        for ws in (Client.connect(url + "?token=s3cret"),
                   Client.connect(url, headers={"Authorization": "Bearer s3cret"})):
            ws.send('["x"]')
            assert json.loads(ws.receive(timeout=10))[0]["status"] == "unknown"
            ws.close()
    finally:
        gw.stop()


def test_an_upload_over_the_limit_written_whole_gets_its_413(gateway):
    """Python's urllib writes the whole body before reading: it must read the 413, not a broken pipe."""
    import urllib.error
    import urllib.request

    content_type, body = multipart("mixtral", "big.txt", "spk1 : " + "mot " * (6 * 1024 * 1024))
    request = urllib.request.Request(f"{gateway.url}/services/cra/generate", data=body,
                                     headers={"Content-Type": content_type}, method="POST")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=60)
    assert caught.value.code == 413
    assert json.loads(caught.value.read())["error"] == "payload_too_large"


def test_a_plain_get_on_the_websocket_route_says_what_it_is(gateway):
    response = requests.get(f"{gateway.url}/ws/results", timeout=10)
    assert response.status_code == 400 and "websocket" in response.json()["message"]
    assert requests.get(f"{gateway.url}/services", timeout=10).status_code == 200
