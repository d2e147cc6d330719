"""The HTTP API through Flask's test client: routes, submissions, validation, one error shape, OpenAPI."""
import io
import json
import re

import pytest
from openapi_spec_validator import validate

from app.jobs.store import JobStore
from app.services.registry import ServiceRegistry
from app.settings import Settings
from app.web import create_app
from tests.manifest_factory import flavor, manifest, write_service

SMALL_FR = open("tests/data/fr/fr_small_an_qag_securite_alimentaire_2013-02-12.txt", "rb").read()


@pytest.fixture
def services_dir(tmp_path):
    folder = tmp_path / "services"
    folder.mkdir()
    write_service(str(folder), "two", manifest(name="two", flavors=[flavor("a"), flavor("b")]))
    write_service(str(folder), "one", manifest(name="one", fields=1))
    return folder


@pytest.fixture
def app(tmp_path, services_dir, store_backend):
    """The app on each job store: SQLite, then PostgreSQL (skipped, saying why, without RESULT_DB_URL_TEST)."""
    settings = Settings(**store_backend.settings_kwargs(), services_dir=str(services_dir), max_upload_mb=1,
                        api_base="http://127.0.0.1:9/v1")
    registry = ServiceRegistry(str(services_dir))
    registry.reload()
    return create_app(settings, registry=registry)


@pytest.fixture
def client(app):
    return app.test_client()


def assert_error(response, status):
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) == {"error", "message", "status"}
    assert body["status"] == status and isinstance(body["error"], str) and body["message"]
    return body


def test_services_list_and_one(client):
    body = client.get("/services").get_json()
    assert isinstance(body, list)                     # the seed's shape: LinTO Studio iterates over it
    assert [s["name"] for s in body] == ["one", "two"]
    assert body[1]["flavor"][1]["name"] == "b"        # the manifest as written
    assert client.get("/health").get_json()["registry"]["errors"] == []
    assert client.get("/services/one").get_json()["fields"] == 1
    assert_error(client.get("/services/nope"), 404)


def test_multipart_submission_then_result(client, app):
    response = client.post("/services/two/generate",
                           data={"file": (io.BytesIO(SMALL_FR), "meeting.txt"), "flavor": "a", "temperature": "0.3"})
    assert response.status_code == 202
    job_id = response.get_json()["jobId"]
    assert response.headers["Location"] == f"/results/{job_id}"
    assert response.get_json()["message"]
    result = client.get(f"/results/{job_id}")
    assert result.status_code == 202
    body = result.get_json()
    assert (body["status"], body["progress"], body["service"], body["flavor"]) == ("queued", 0, "two", "a")
    job = app.extensions["store"].get(job_id)
    assert job.params == {"temperature": 0.3}
    assert "Yves Jégo" in job.input_text


def test_json_submission_and_single_flavor_default(client, app):
    response = client.post("/services/one/generate", json={"content": "Alice : bonjour\nBob : salut", "top_p": 0.5})
    assert response.status_code == 202
    job = app.extensions["store"].get(response.get_json()["jobId"])
    assert (job.flavor, job.params) == ("small", {"top_p": 0.5})


def test_finished_jobs_answer_200(client, app):
    store: JobStore = app.extensions["store"]
    done = store.create_job(service="one", flavor="small", input_text="A : b")
    store.claim_next()
    store.complete(done, "A : résumé", {"calls": 1})
    body = client.get(f"/results/{done}")
    assert body.status_code == 200
    assert body.get_json()["summarization"] == "A : résumé" and body.get_json()["progress"] == 100
    assert (body.get_json()["status"], body.get_json()["message"]) == ("complete", "success")
    failed = store.create_job(service="one", flavor="small", input_text="A : b")
    store.claim_next()
    store.fail(failed, "engine said no")
    body = client.get(f"/results/{failed}").get_json()
    assert client.get(f"/results/{failed}").status_code == 200
    assert (body["status"], body["message"], body["error"], body["state"]) == (
        "error", "engine said no", "engine said no", "failed")
    missing = client.get("/results/does-not-exist")      # the seed's answer, our error kind beside it
    assert missing.status_code == 404
    assert missing.get_json() == {"status": "nojob", "message": "does-not-exist does not exist", "error": "not_found"}


def test_running_jobs_show_the_seeds_words(client, app):
    store: JobStore = app.extensions["store"]
    job_id = store.create_job(service="one", flavor="small", input_text="A : b")
    queued = client.get(f"/results/{job_id}")
    assert queued.status_code == 202
    assert (queued.get_json()["status"], queued.get_json()["message"]) == ("queued", "Processing 0%")
    owner = store.claim_next().owner
    store.save_progress(job_id, 40, {"done": 1}, "processing", owner=owner)
    store.set_message(job_id, "engine unavailable, retrying (3/8)", owner=owner)
    body = client.get(f"/results/{job_id}").get_json()
    # Studio shows `message + "%"`: the number, never the retry news (that is `detail`).
    assert (body["status"], body["message"], body["progress"]) == ("processing", 40.0, 40)
    assert body["detail"] == "engine unavailable, retrying (3/8)"


def test_a_running_job_shows_the_report_of_its_finished_batches(client, app):
    from app.pipeline.summarize import Checkpoint
    store: JobStore = app.extensions["store"]
    rolling = store.create_job(service="two", flavor="a", input_text="A : b", now=1)
    owner = store.claim_next().owner
    store.save_progress(rolling, 40, Checkpoint({"done": 4, "lines": ["A : un", "B : deux"]}, "lines", 0),
                        "processing", owner=owner, grows="lines", kept=0)
    assert client.get(f"/results/{rolling}").get_json()["partial"] == "A : un\nB : deux"
    store.save_progress(rolling, 60, Checkpoint({"done": 6, "lines": ["A : un", "B : deux", "C : trois"]},
                                                "lines", 2), "processing", owner=owner, grows="lines", kept=2)
    assert client.get(f"/results/{rolling}").get_json()["partial"] == "A : un\nB : deux\nC : trois"
    # fields 1 finishes batches in any order: the report stops at the first one not finished.
    side = store.create_job(service="one", flavor="small", input_text="A : b", now=2)
    owner = store.claim_next().owner
    outputs = {"0": {"turns": 2, "lines": ["A : un"]}, "5": {"turns": 2, "lines": ["F : six"]}}
    store.save_progress(side, 50, Checkpoint({"outputs": outputs}, "outputs", 0), "processing", owner=owner,
                        grows="outputs", kept=0)
    assert client.get(f"/results/{side}").get_json()["partial"] == "A : un"
    store.complete(side, "A : un\nC : trois\nF : six", {"calls": 3}, owner=owner)
    assert "partial" not in client.get(f"/results/{side}").get_json()


@pytest.mark.parametrize("path,kwargs,status,needle", [
    ("/services/nope/generate", {"json": {"content": "A : b"}}, 404, "No service called 'nope'"),
    ("/services/two/generate", {"json": {"content": "A : b", "flavor": "zzz"}}, 404, "no flavor 'zzz'"),
    ("/services/two/generate", {"json": {"content": "A : b"}}, 400, "choose one with 'flavor'"),
    ("/services/one/generate", {"json": {"content": "A : b", "temperature": "abc"}}, 400, "'temperature' must be a number"),
    ("/services/one/generate", {"json": {"content": "A : b", "temperature": -1}}, 400, "'temperature' must be"),
    ("/services/one/generate", {"json": {"content": "A : b", "temperature": 3}}, 400, "'temperature' must be"),
    ("/services/one/generate", {"json": {"content": "A : b", "top_p": 0}}, 400, "'top_p' must be greater than 0"),
    ("/services/one/generate", {"json": {"content": "A : b", "top_p": 1.5}}, 400, "'top_p' must be"),
    ("/services/one/generate", {"json": ["not", "an", "object"]}, 400, "must be an object"),
    ("/services/one/generate", {"json": {"flavor": "small"}}, 400, "needs 'content'"),
    ("/services/one/generate", {"json": {"content": ""}}, 400, ""),
    ("/services/one/generate", {"json": {"content": "   \n\t "}}, 400, ""),
    ("/services/one/generate", {"data": "hello", "content_type": "text/plain"}, 415, "multipart/form-data"),
    ("/services/one/generate", {"data": {"flavor": "small"}}, 400, "No transcript"),
    ("/services/one/generate", {"data": {"content": "A : b", "file": (b"A : b", "a.txt")}}, 400, "not both"),
    ("/services/one/generate", {"data": {"file": (b"", "empty.txt")}}, 400, ""),
    ("/services/one/generate", {"data": {"file": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "x.png")}}, 400, ""),
    ("/services/one/generate", {"data": {"file": (b"A : b\x00\x00c", "nul.txt")}}, 400, ""),
    # Bytes that are neither UTF-8 nor Windows-1252 (0x81, 0x8d, 0x8f, 0x90, 0x9d are unassigned there).
    ("/services/one/generate", {"data": {"file": (b"Alice : \x81\x8d\x8f\x90\x9d" * 20, "x.txt")}}, 400,
     "neither UTF-8 nor Windows-1252"),
    ("/services/one/generate", {"data": {"file": (b"  \r\n\t\n   ", "blank.txt")}}, 400, ""),
    ("/services/one/generate", {"data": {"file": (b"x" * (1024 * 1024 + 10), "big.txt")}}, 413, "1 MB"),
    ("/services/..%2F..%2Fetc/generate", {"json": {"content": "A : b"}}, 404, ""),
    ("/services/%2e%2e/generate", {"json": {"content": "A : b"}}, 404, ""),
    ("/services/../generate", {"json": {"content": "A : b"}}, 404, ""),
    ("/services/one/../../generate", {"json": {"content": "A : b"}}, 404, ""),
    # Hardening, second round (each was a 5xx, a silent drop or a misleading message before).
    ("/services/one/generate", {"data": "[" * 100_000 + "]" * 100_000, "content_type": "application/json"}, 400,
     "nested too deeply"),
    ("/services/one/generate", {"data": '{"content": "A : b \\ud800 c"}', "content_type": "application/json"}, 400,
     "lone surrogate"),
    ("/services/one/generate", {"data": {"file": (b"[" * 100_000 + b"]" * 100_000, "deep.json")}}, 400,
     "nested too deeply"),
    ("/services/one/generate", {"data": {"file": [(b"A : b", "a.txt"), (b"C : d", "c.txt")]}}, 400,
     "several 'file' parts"),
    ("/services/one/generate", {"data": {"file": (b"A : b", "a.txt"), **{f"f{i}": "x" for i in range(2_000)}}},
     413, "too many fields"),
    ("/services/two/generate", {"json": {"content": "A : b", "flavor": "z" * 500_000}}, 404, "no flavor 'zzz"),
])
def test_bad_submissions_get_a_clear_4xx(client, app, path, kwargs, status, needle):
    # Uploads are given as (bytes, name): a fresh file object for each store the test runs on.
    def upload(value):
        if isinstance(value, list):
            return [upload(v) for v in value]
        return (io.BytesIO(value[0]), value[1]) if isinstance(value, tuple) else value

    if isinstance(kwargs.get("data"), dict):
        kwargs = {**kwargs, "data": {k: upload(v) for k, v in kwargs["data"].items()}}
    before = app.extensions["store"].count_by_status()
    body = assert_error(client.post(path, **kwargs), status)
    assert needle in body["message"]
    assert app.extensions["store"].count_by_status() == before  # nothing queued


def test_every_route_answers_errors_in_one_shape(client, app):
    """Walk the URL map: each route gets a request that must fail, and the body has the one shape."""
    probes = {
        "/services": ("delete", {}, 405),
        "/services/<name>": ("get", {"name": "nope"}, 404),
        "/services/<name>/generate": ("post", {"name": "nope"}, 404),
        "/results/<job_id>": ("delete", {"job_id": "nope"}, 404),
        "/results": ("get", {"?": "limit=zero"}, 400),
        "/results/<job_id>/events": ("get", {"job_id": "nope"}, 404),
        "/ws/results": ("get", {}, 400),                 # a plain request on a websocket route
        "/ws/results/<job_id>": ("get", {"job_id": "nope"}, 400),
        "/metrics": ("post", {}, 405),
        "/healthcheck": ("post", {}, 405),
        "/health": ("post", {}, 405),
        "/openapi.json": ("post", {}, 405),
        "/docs": ("post", {}, 405),
    }
    seen = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.rule.startswith("/flasgger_static") or "oauth2" in rule.rule \
                or rule.rule == "/apidocs/index.html":
            continue
        assert rule.rule in probes, f"no error probe for {rule.rule}"
        method, args, status = probes[rule.rule]
        url = rule.rule
        for key, value in args.items():
            url = url + "?" + value if key == "?" else url.replace(f"<{key}>", value)
        response = getattr(client, method)(url, json={"content": "A : b"} if method == "post" else None)
        assert_error(response, status)
        seen.add(rule.rule)
    assert seen == set(probes)
    assert_error(client.get("/no/such/route"), 404)


def test_openapi_is_valid_and_lists_live_services(client, services_dir):
    spec = client.get("/openapi.json").get_json()
    validate(spec)
    assert spec["components"]["schemas"]["ServiceName"]["enum"] == ["one", "two"]
    # Every HTTP route (not the websockets, which OpenAPI 3.0 cannot describe) with each of its methods.
    routes = {}
    for rule in client.application.url_map.iter_rules():
        if not rule.endpoint.startswith(("flasgger.", "static", "ws.")):
            path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
            routes.setdefault(path, set()).update(m.lower() for m in rule.methods - {"HEAD", "OPTIONS"})
    assert {path: set(item) for path, item in spec["paths"].items()} == routes
    assert client.get("/docs").status_code == 200
    assert "swagger" in client.get("/docs").get_data(as_text=True).lower()


def test_prefix_and_swagger_url(tmp_path, services_dir):
    settings = Settings(db_path=str(tmp_path / "j.sqlite"), services_dir=str(services_dir),
                        swagger_prefix="/gateway", swagger_url="/apidocs")
    registry = ServiceRegistry(str(services_dir))
    registry.reload()
    client = create_app(settings, registry=registry).test_client()
    assert client.get("/gateway/services").status_code == 200
    assert client.get("/services").status_code == 404
    assert client.get("/gateway/apidocs").status_code == 200
    spec = client.get("/gateway/openapi.json").get_json()
    validate(spec)
    assert spec["servers"] == [{"url": "/gateway"}] and "/services" in spec["paths"]
    response = client.post("/gateway/services/one/generate", json={"content": "A : b"})
    assert response.headers["Location"].startswith("/gateway/results/")


def test_health_reports_each_part(client, app):
    body = client.get("/health").get_json()
    assert body["database"]["ok"] is True
    assert body["registry"]["services"] == 2
    assert body["runner"]["alive"] is False  # no runner beats in this test
    assert body["engine"]["reachable"] is False  # nothing listens on port 9
    assert body["status"] == "down"
    app.extensions["store"].beat("runner", {"pid": 1})
    assert client.get("/health").get_json()["runner"]["alive"] is True
    assert client.get("/healthcheck").status_code == 200


def test_health_checks_every_engine_in_use(tmp_path, fake_engine, monkeypatch):
    """The default engine and each flavor's apiBase are checked; an engine down makes the status
    degraded; an address's user:password part and the keys never show."""
    monkeypatch.setenv("HEALTH_TEST_KEY", "sk-health-secret")
    folder = tmp_path / "hs"
    folder.mkdir()
    live = fake_engine.base_url.replace("http://", "http://user:pw-secret@")
    write_service(str(folder), "svc", manifest(name="svc", flavors=[
        flavor("local"), flavor("remote", apiBase=live, apiKeyEnv="HEALTH_TEST_KEY"),
        flavor("gone", apiBase="http://127.0.0.1:9/v1")]))
    settings = Settings(db_path=str(tmp_path / "h.sqlite"), services_dir=str(folder), api_base=fake_engine.base_url,
                        api_key="sk-default-secret")
    registry = ServiceRegistry(str(folder))
    registry.reload()
    app = create_app(settings, registry=registry)
    app.extensions["store"].beat("runner", {"pid": 1})
    response = app.test_client().get("/health")
    body = response.get_json()
    engines = [(e["apiBase"], e["reachable"], e["flavors"]) for e in body["engine"]["engines"]]
    assert engines == [(fake_engine.base_url, True, ["svc/local"]),          # the default
                       (fake_engine.base_url, True, ["svc/remote"]),         # shown without user:pw
                       ("http://127.0.0.1:9/v1", False, ["svc/gone"])]
    assert body["engine"]["reachable"] is False and body["status"] == "degraded"
    assert not re.search(r"secret", response.get_data(as_text=True))
    write_service(str(folder), "svc", manifest(name="svc", flavors=[flavor("remote", apiBase=fake_engine.base_url)]))
    registry.reload()                        # the engine nobody uses any more is not checked
    body = app.test_client().get("/health").get_json()
    assert [(e["apiBase"], e["flavors"]) for e in body["engine"]["engines"]] == [(fake_engine.base_url, ["svc/remote"])]
    assert body["engine"]["reachable"] is True and body["status"] == "ok"
    settings = Settings(db_path=str(tmp_path / "h.sqlite"), services_dir=str(folder), api_base="http://127.0.0.1:9/v1")
    body = create_app(settings, registry=registry).test_client().get("/health").get_json()
    assert body["status"] == "ok"            # a default engine no flavor uses does not make it degraded


def test_invalid_manifest_is_listed_under_errors(tmp_path, services_dir, client, app):
    (services_dir / "broken.json").write_text("{nope")
    app.extensions["registry"].reload()
    assert [s["name"] for s in client.get("/services").get_json()] == ["one", "two"]   # services only
    body = client.get("/health").get_json()
    assert body["registry"]["errors"][0]["file"] == "broken.json"
    assert json.dumps(body)  # serializable


def test_list_results_newest_first_with_filters(client, app):
    store: JobStore = app.extensions["store"]
    ids = [store.create_job(service="one" if i % 2 else "two", flavor="a", input_text="A : b", now=1000 + i)
           for i in range(5)]
    body = client.get("/results").get_json()
    assert [j["jobId"] for j in body["jobs"]] == ids[::-1] and body["total"] == 5
    body = client.get("/results?service=one&limit=1&offset=1").get_json()
    assert [j["jobId"] for j in body["jobs"]] == [ids[1]] and body["total"] == 2
    assert client.get("/results?status=complete").get_json()["total"] == 0
    assert_error(client.get("/results?status=weird"), 400)
    assert_error(client.get("/results?limit=0"), 400)


def test_delete_cancels_queued_asks_processing_to_stop_deletes_finished(client, app):
    store: JobStore = app.extensions["store"]
    queued = store.create_job(service="one", flavor="a", input_text="x", now=1)
    running = store.create_job(service="one", flavor="a", input_text="x", now=0)
    assert store.claim_next().id == running
    assert client.delete(f"/results/{queued}").get_json()["outcome"] == "cancelled"
    body = client.get(f"/results/{queued}").get_json()      # the seed's "error", saying why
    assert (body["status"], body["state"], body["cancelled"]) == ("error", "cancelled", True)
    assert "cancelled" in body["message"]
    assert client.delete(f"/results/{running}").get_json()["outcome"] == "cancelling"
    assert store.cancel_requested(running)
    store.mark_cancelled(running)
    assert client.get(f"/results/{running}").get_json()["state"] == "cancelled"
    listed = client.get("/results?status=error").get_json()
    assert {j["jobId"] for j in listed["jobs"]} == {queued, running}
    assert client.delete(f"/results/{running}").get_json()["outcome"] == "deleted"
    assert client.get(f"/results/{running}").get_json()["status"] == "nojob"
    assert_error(client.delete(f"/results/{running}"), 404)


def test_gateway_keys(tmp_path, services_dir):
    keys_file = tmp_path / "keys"
    keys_file.write_text("# team keys\nkey-from-file\n\n")
    settings = Settings(db_path=str(tmp_path / "k.sqlite"), services_dir=str(services_dir), api_keys="k1, k2",
                        api_keys_file=str(keys_file))
    registry = ServiceRegistry(str(services_dir))
    registry.reload()
    client = create_app(settings, registry=registry).test_client()
    body = assert_error(client.get("/services"), 401)
    assert "Bearer" in body["message"]
    assert_error(client.get("/services", headers={"Authorization": "Bearer wrong"}), 401)
    assert_error(client.get("/services", headers={"Authorization": "Basic k1"}), 401)
    assert_error(client.post("/services/one/generate", json={"content": "A : b"}), 401)
    for key in ("k1", "k2", "key-from-file"):
        assert client.get("/services", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert client.get("/healthcheck").status_code == 200
    assert client.get("/docs").status_code == 200 and client.get("/openapi.json").status_code == 200
    assert_error(client.get("/health"), 401)
    protected = create_app(settings.replace(protect_docs=True), registry=registry).test_client()
    assert_error(protected.get("/openapi.json"), 401)
    assert protected.get("/healthcheck").status_code == 200


@pytest.mark.parametrize("protect_docs", [False, True])
def test_gateway_keys_guard_every_route(tmp_path, services_dir, protect_docs):
    """Walk the URL map: with keys set, every route and method answers 401 without a key, but
    /healthcheck (and the docs unless PROTECT_DOCS): a route added later is covered or this fails."""
    settings = Settings(db_path=str(tmp_path / "k.sqlite"), services_dir=str(services_dir), api_keys="k1",
                        protect_docs=protect_docs)
    registry = ServiceRegistry(str(services_dir))
    registry.reload()
    app = create_app(settings, registry=registry)
    client = app.test_client()
    job_id = app.extensions["store"].create_job(service="one", flavor="small", input_text="A : b")
    checked = 0
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        url = rule.rule.replace("<name>", "one").replace("<job_id>", job_id)
        url = re.sub(r"<(?:\w+:)?\w+>", "1", url)
        docs = rule.endpoint.startswith("flasgger.")     # Swagger UI, its assets, /openapi.json
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            # The request must reach this very route: an unmatched URL is refused too, proving nothing.
            scheme = "ws" if rule.websocket else "http"
            assert app.url_map.bind("localhost", url_scheme=scheme).match(url, method=method)[0] == rule.endpoint, \
                (method, url)
            response = client.open(url, method=method, json={"content": "A : b"} if method == "POST" else None)
            if rule.rule == "/healthcheck" or (docs and not protect_docs):
                assert response.status_code != 401, (method, url)
            else:
                assert_error(response, 401)
                checked += 1
    assert checked >= 9          # services, generate, results (list, one, delete, events), metrics, health...
    assert app.extensions["store"].get(job_id).status == "queued"       # the refused DELETE changed nothing


def test_cors_is_off_unless_configured(tmp_path, services_dir, client):
    assert "Access-Control-Allow-Origin" not in client.get("/services", headers={"Origin": "http://x.test"}).headers
    settings = Settings(db_path=str(tmp_path / "c.sqlite"), services_dir=str(services_dir),
                        cors_origins="http://x.test")
    registry = ServiceRegistry(str(services_dir))
    registry.reload()
    cors = create_app(settings, registry=registry).test_client()
    response = cors.get("/services", headers={"Origin": "http://x.test"})
    assert response.headers["Access-Control-Allow-Origin"] == "http://x.test"


def test_huge_but_valid_inputs_are_accepted_and_parse_whole(client, app):
    """A 1 MB line with no speaker and 100 000 tiny turns are valid transcripts: 202, stored whole."""
    from app.pipeline.transcript import parse_transcript
    one_line = ("mot " * 250_000).strip()  # ~1 MB, no label
    tiny = "\n".join(f"P{i % 9} : oui" for i in range(100_000))
    for text in (one_line, tiny):
        response = client.post("/services/one/generate", data={"file": (io.BytesIO(text.encode()), "t.txt")})
        assert response.status_code == 202, response.get_json()
        job = app.extensions["store"].get(response.get_json()["jobId"])
        assert job.input_text == text
    turns = parse_transcript(one_line)
    assert [t.speaker for t in turns] == [""] and turns[0].text == one_line
    turns = parse_transcript(tiny)
    assert len(turns) == 100_000 and turns[-1].speaker == f"P{99_999 % 9}"


class RecordingQueue:
    """Stands in for the Celery queue (BROKER_URL): records what was enqueued, or fails like a dead broker."""

    def __init__(self, fail=False):
        self.fail = fail
        self.sent = []

    def enqueue(self, job_id, countdown=None):
        if self.fail:
            raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
        self.sent.append(job_id)


def test_with_a_broker_jobs_are_stored_with_their_manifest_then_enqueued(client, app, services_dir):
    queue = app.extensions["queue"] = RecordingQueue()
    response = client.post("/services/one/generate", json={"content": "Alice : bonjour"})
    assert response.status_code == 202
    job_id = response.get_json()["jobId"]
    assert queue.sent == [job_id]
    job = app.extensions["store"].get(job_id)
    assert job.status == "queued" and job.manifest["name"] == "one"
    # Only what the job uses: its flavor's entry, not the other flavors nor the descriptions.
    assert job.manifest == {"name": "one", "fields": 1, "flavor": [flavor()]}
    assert "manifest" not in client.get(f"/results/{job_id}").get_json()   # nothing new in the API


def test_with_a_broker_down_the_submission_is_refused_and_nothing_is_kept(client, app):
    app.extensions["queue"] = RecordingQueue(fail=True)
    before = app.extensions["store"].count_by_status()
    body = assert_error(client.post("/services/one/generate", json={"content": "Alice : bonjour"}), 503)
    assert "queue is unavailable" in body["message"]
    assert app.extensions["store"].count_by_status() == before
