"""Slow and stalling clients against the real `python3 -m app` with its defaults.

64 connections that send their headers, or part of them, then trickle or stall: a server that
gives each waiting connection a thread (Gunicorn's gthread: 2 workers x 8 threads) stops
answering everyone else for as long as they like. Meanwhile the health probe and job polls must
still be answered, quickly. The clients are raw sockets on loopback, bounded in number and time.
"""
import os
import socket
import threading
import time

import pytest
import requests

from tests.processes import FakeEngineProcess, Gateway

pytestmark = pytest.mark.slow

CLIENTS = 64
SECONDS = 12          # how long the slow clients keep their connections busy


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, module_deployment):
    """One gateway for the module's tests (embedded, then scaled): each leaves it as it found it
    (its connections closed) and checks that it still answers."""
    engine = FakeEngineProcess()
    gw = Gateway(tmp_path_factory.mktemp("slow_clients"), engine.base_url, services_dir="services",
                 deployment=module_deployment).start()
    yield gw
    gw.stop()
    engine.stop()


def slow_client(host: str, port: int, kind: int, stop: threading.Event, opened: list) -> None:
    """One slow connection: kind 0 trickles its body, 1 stalls after its headers, 2 trickles its headers."""
    try:
        sock = socket.create_connection((host, port), timeout=5)
    except OSError:
        return
    opened.append(sock)
    head = (f"POST /services/cra/generate HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: 100000\r\n\r\n").encode()
    try:
        if kind == 2:
            for byte in head[:-4]:              # never finishes its headers
                if stop.wait(0.5):
                    return
                sock.send(bytes([byte]))
        else:
            sock.sendall(head + b'{"content": "')
            while not stop.wait(0.5):
                if kind == 0:
                    sock.send(b"a")
    except OSError:
        pass


def test_slow_clients_do_not_take_the_api_down(gateway):
    host, port = gateway.url[len("http://"):].split(":")
    job_id = gateway.submit("cra", text="Alice : Bonjour.\nBob : Merci.", flavor="smollm2-135m")
    stop, opened = threading.Event(), []
    clients = [threading.Thread(target=slow_client, args=(host, int(port), i % 3, stop, opened), daemon=True)
               for i in range(CLIENTS)]
    for client in clients:
        client.start()
    answered, slowest, failures = 0, 0.0, []
    try:
        time.sleep(2)                            # every slow client is connected and waiting
        deadline = time.monotonic() + SECONDS
        while time.monotonic() < deadline:
            for path in ("/healthcheck", f"/results/{job_id}"):
                started = time.monotonic()
                try:
                    response = requests.get(gateway.url + path, timeout=3, headers={"Connection": "close"})
                    assert response.status_code in (200, 202), response.text
                    answered += 1
                    slowest = max(slowest, time.monotonic() - started)
                except requests.RequestException as exc:
                    failures.append(f"{path}: {type(exc).__name__}")
            time.sleep(0.2)
    finally:
        stop.set()
        for sock in opened:
            sock.close()
        for client in clients:
            client.join(timeout=5)
    print(f"{len(opened)} slow connections for {SECONDS} s: {answered} probes answered, {len(failures)} not,"
          f" slowest {slowest * 1000:.0f} ms")
    assert len(opened) == CLIENTS
    assert not failures, failures[:5]
    assert answered >= 20


def raw_request(host: str, port: int, data: bytes) -> tuple[int, str, bytes]:
    """Send raw bytes, read the whole answer: (status, content type, body)."""
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(data)
        answer = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except (socket.timeout, ConnectionResetError):
                break
            if not chunk:
                break
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    content_type = next((l.split(":", 1)[1].strip() for l in lines[1:] if l.lower().startswith("content-type:")), "")
    return int(lines[0].split()[1]), content_type, body


@pytest.mark.parametrize("name, data, status", [
    ("malformed request line", b"GARBAGE\r\n\r\n", 400),
    ("request line too long", b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    ("header too large", b"GET /healthcheck HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 10_000 + b"\r\n\r\n", 431),
    ("invalid chunk size", b"POST /services/cra/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n", 400),
])
def test_gunicorns_own_refusals_are_json(gateway, name, data, status):
    import json
    host, port = gateway.url[len("http://"):].split(":")
    code, content_type, body = raw_request(host, int(port), data)
    assert code == status, (name, code, body[:200])
    assert content_type == "application/json", (name, content_type, body[:200])
    shape = json.loads(body)
    assert set(shape) == {"error", "message", "status"} and shape["status"] == status, shape
    assert shape["error"] != "error", shape             # a kind that says what went wrong
    # The gateway goes on.
    assert requests.get(gateway.url + "/healthcheck", timeout=5).status_code == 200


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        with open(f"/proc/{parent}/task/{parent}/children") as handle:
            children = [int(c) for c in handle.read().split()]
        found += children
        todo += children
    return found


def test_many_polls_do_not_leak_connections(gateway):
    """Each request is a greenlet: a store connection kept per greenlet would leak one file
    descriptor per poll (seen: 841 after 600 polls). Connections are kept per OS thread."""
    job_id = gateway.submit("cra", text="Alice : Bonjour.", flavor="smollm2-135m")
    gateway.wait_finished(job_id)
    for _ in range(600):
        requests.get(f"{gateway.url}/results/{job_id}", timeout=5, headers={"Connection": "close"})
    counts = {pid: len(os.listdir(f"/proc/{pid}/fd")) for pid in descendants(gateway.proc.pid)
              if os.path.exists(f"/proc/{pid}/fd")}
    print(f"file descriptors after 600 polls: {sorted(counts.values())}")
    assert max(counts.values()) < 100, counts
