"""GET /results/<id>/events: progress as Server-Sent Events, in-process and under the real Gunicorn."""
import json
import shutil
import threading
import time

import pytest
import requests

from app.client import parse_sse
from app.jobs.store import JobStore
from app.web import events
from tests.processes import FakeEngineProcess, Gateway


@pytest.fixture(autouse=True)
def fast_polling(monkeypatch):
    monkeypatch.setattr(events, "POLL_S", 0.01)


@pytest.fixture
def app(make_app):
    return make_app(max_streams=1)


def read_events(response, limit=1000):
    """(event, data) pairs of a streamed test-client response, until it ends; the response is closed."""
    assert response.status_code == 200, response.get_data(as_text=True)
    lines = (line for chunk in response.iter_encoded() for line in chunk.decode().split("\n"))
    found = []
    for event, data in parse_sse(lines):
        found.append((event, json.loads(data)))
        if len(found) >= limit:
            break
    response.close()
    return found


def test_a_job_is_followed_from_queued_to_complete(app):
    store: JobStore = app.extensions["store"]
    job_id = store.create_job(service="one", flavor="small", input_text="A : b")

    def work():
        time.sleep(0.1)
        store.claim_next()
        for progress in (30, 60):
            time.sleep(0.1)
            store.save_progress(job_id, progress, {"done": progress}, "processing")
        time.sleep(0.1)
        store.complete(job_id, "A : résumé", {"calls": 2, "prompt_tokens": 10, "completion_tokens": 4,
                                             "engine_seconds": 0.1, "retries": 0})

    worker = threading.Thread(target=work)
    worker.start()
    response = app.test_client().get(f"/results/{job_id}/events", buffered=False)
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream" and response.headers["Cache-Control"] == "no-cache"
    found = read_events(response)
    worker.join()
    names = [event for event, _ in found]
    assert names[-1] == "complete" and set(names[:-1]) == {"progress"}
    progress = [data["progress"] for _, data in found]
    assert progress == sorted(progress) and {0, 30, 60, 100} <= set(progress)
    # The seed's words, as GET /results/<id> has them; the store's message is `detail`.
    assert found[0][1] == {"jobId": job_id, "status": "queued", "progress": 0, "message": "Processing 0%",
                           "detail": "queued"}
    assert [d["message"] for _, d in found[1:-1]] == [float(d["progress"]) for _, d in found[1:-1]]
    assert len(found) == len({(d["status"], d["progress"], d["message"]) for _, d in found})  # only changes
    final = found[-1][1]
    assert final["summarization"] == "A : résumé" and final["usage"]["calls"] == 2


def test_the_report_grows_as_partial_events(app):
    from app.pipeline.summarize import Checkpoint
    store: JobStore = app.extensions["store"]
    job_id = store.create_job(service="one", flavor="small", input_text="A : b")
    lines = ["A : un", "B : deux", "C : trois"]

    def work():
        time.sleep(0.1)
        owner = store.claim_next().owner
        for done in (1, 3):             # two batches: one line, then two more
            time.sleep(0.1)
            store.save_progress(job_id, done * 30, Checkpoint({"done": done, "lines": lines[:done]}, "lines",
                                                               1 if done == 3 else 0),
                                "processing", owner=owner, grows="lines", kept=1 if done == 3 else 0)
        time.sleep(0.1)
        store.complete(job_id, "\n".join(lines), {"calls": 2}, owner=owner)

    worker = threading.Thread(target=work)
    worker.start()
    found = read_events(app.test_client().get(f"/results/{job_id}/events", buffered=False))
    worker.join()
    partial = [data for event, data in found if event == "partial"]
    assert partial == [{"jobId": job_id, "start": 0, "lines": ["A : un"]},
                       {"jobId": job_id, "start": 1, "lines": ["B : deux", "C : trois"]}]
    assert found[-1][0] == "complete"


def test_failed_and_cancelled_jobs_end_the_stream(app):
    store: JobStore = app.extensions["store"]
    client = app.test_client()
    failed = store.create_job(service="one", flavor="small", input_text="A : b")
    store.claim_next()
    store.fail(failed, "engine said no")
    found = read_events(client.get(f"/results/{failed}/events", buffered=False))
    assert found[-1][0] == "error" and found[-1][1]["error"] == "engine said no"
    assert found[-1][1]["state"] == "failed"
    cancelled = store.create_job(service="one", flavor="small", input_text="A : b")
    store.cancel(cancelled)
    found = read_events(client.get(f"/results/{cancelled}/events", buffered=False))
    assert [e for e, _ in found] == ["error"] and found[0][1]["state"] == "cancelled"


def test_unknown_job_is_a_404_in_the_error_shape(app):
    response = app.test_client().get("/results/nope/events")
    assert response.status_code == 404
    assert response.get_json() == {"error": "not_found", "message": "No job with id 'nope'.", "status": 404}


def test_heartbeats_while_nothing_changes_and_an_error_event_when_deleted(app, monkeypatch):
    monkeypatch.setattr(events, "HEARTBEAT_S", 0.05)
    store: JobStore = app.extensions["store"]
    job_id = store.create_job(service="one", flavor="small", input_text="A : b")
    response = app.test_client().get(f"/results/{job_id}/events", buffered=False)
    chunks = response.iter_encoded()
    text = ""
    while text.count(": heartbeat") < 2:
        text += next(chunks).decode()
    assert text.startswith("retry: ") and text.count("event: progress") == 1
    store.cancel(job_id)          # queued: cancelled
    store.cancel(job_id)          # finished: deleted
    rest = "".join(chunk.decode() for chunk in chunks)
    # Either the cancelled state was seen first, or only the deletion: both end the stream.
    last = list(parse_sse(rest.split("\n")))[-1]
    assert last[0] == "error"          # the cancelled job (its body, state cancelled) or the error shape
    body = json.loads(last[1])
    assert body.get("state") == "cancelled" or body["status"] == 404


def test_streams_per_worker_are_capped_leaving_a_thread_for_other_requests(app):
    store: JobStore = app.extensions["store"]
    job_id = store.create_job(service="one", flavor="small", input_text="A : b")
    client = app.test_client()
    first = client.get(f"/results/{job_id}/events", buffered=False)   # max_streams=1: one stream
    assert first.status_code == 200
    second = client.get(f"/results/{job_id}/events", buffered=False)
    assert second.status_code == 503 and second.get_json()["status"] == 503 and second.headers["Retry-After"]
    assert client.get(f"/results/{job_id}").status_code == 202   # other requests still answered
    first.close()                 # the server closing a stream frees its slot
    third = client.get(f"/results/{job_id}/events", buffered=False)
    assert third.status_code == 200
    third.close()


def test_a_stream_ends_when_its_worker_stops(app):
    store: JobStore = app.extensions["store"]
    job_id = store.create_job(service="one", flavor="small", input_text="A : b")
    serving = threading.Event()
    serving.set()
    app.extensions["serving"] = serving.is_set      # what app/server.py wires to the Gunicorn worker
    response = app.test_client().get(f"/results/{job_id}/events", buffered=False)
    chunks = response.iter_encoded()
    assert b"event: progress" in next(chunks) + next(chunks)
    serving.clear()
    assert b"event:" not in b"".join(chunks)       # ends without a final event: clients reconnect or poll
    response.close()


@pytest.mark.slow
def test_many_streams_under_gunicorn_with_two_workers(tmp_path, deployment):
    """Six streams over two workers, three jobs: every stream sees its job through to complete."""
    services = tmp_path / "services"
    shutil.copytree("services", services)
    engine = FakeEngineProcess("--delay", "0.2")
    gateway = Gateway(tmp_path, engine.base_url, services_dir=str(services), workers=2,
                      deployment=deployment).start()
    try:
        text = "\n".join(f"Orateur {i % 3} : intervention numéro {i} sur le budget." for i in range(60))
        jobs = [gateway.submit("cra", text=text, flavor="smollm2-135m") for _ in range(3)]
        outcomes = {}

        def follow(key, job_id):
            with requests.get(f"{gateway.url}/results/{job_id}/events", stream=True, timeout=(5, 30),
                              headers={"Connection": "close", "X-Request-ID": f"stream-{key}"}) as response:
                assert response.headers["X-Request-ID"] == f"stream-{key}"
                response.encoding = "utf-8"
                outcomes[key] = [(e, json.loads(d)) for e, d in
                                 parse_sse(response.iter_lines(chunk_size=None, decode_unicode=True))]

        threads = [threading.Thread(target=follow, args=(i, jobs[i % 3])) for i in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert sorted(outcomes) == list(range(6))
        for key, found in outcomes.items():
            assert found[-1][0] == "complete", found
            assert found[-1][1]["jobId"] == jobs[key % 3] and found[-1][1]["summarization"]
            progress = [data["progress"] for event, data in found if event != "partial"]
            assert progress == sorted(progress)
            # The report as it grew, put together from the partial events, is the start of the summary.
            grown = [line for event, data in found if event == "partial" for line in data["lines"]]
            assert found[-1][1]["summarization"].splitlines()[:len(grown)] == grown
        # A stream that starts after the end gets the final event at once.
        with requests.get(f"{gateway.url}/results/{jobs[0]}/events", stream=True, timeout=10) as response:
            late = list(parse_sse(response.iter_lines(chunk_size=None, decode_unicode=True)))
        assert [event for event, _ in late] == ["complete"]
        # SIGTERM with a stream open on a running job: the stream ends and shutdown is not held up.
        long_job = gateway.submit("cra", text=text * 5, flavor="smollm2-135m")
        with requests.get(f"{gateway.url}/results/{long_job}/events", stream=True, timeout=30) as response:
            lines = response.iter_lines(chunk_size=None, decode_unicode=True)
            assert next(line for line in lines if line.startswith("event:")) == "event: progress"
            started = time.monotonic()
            assert gateway.terminate(timeout=30) == 0
            assert time.monotonic() - started < 8           # Gunicorn's graceful timeout is 10 s
            assert not [line for line in lines if line.startswith("event:") and line != "event: progress"]
    finally:
        gateway.stop()
        engine.stop()
