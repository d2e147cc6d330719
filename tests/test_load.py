"""Load and churn against the real server: 1000 submissions from 50 clients; 100 manifest edits under traffic.

Figures are printed (run with -s); the assertions are about correctness, never about speed.
"""
import json
import os
import random
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from app.services.registry import load_folder
from tests.manifest_factory import flavor, manifest, write_service
from tests.processes import FakeEngineProcess, Gateway, wait_until

pytestmark = pytest.mark.slow


def test_1000_submissions_from_50_clients(tmp_path, deployment):
    engine = FakeEngineProcess()
    gw = Gateway(tmp_path, engine.base_url, workers=4, deployment=deployment).start()
    try:
        sessions = threading.local()

        def session():
            if not hasattr(sessions, "s"):
                sessions.s = requests.Session()
            return sessions.s

        def submit(i):
            response = session().post(f"{gw.url}/services/cred/generate", timeout=60,
                                      json={"content": f"Orateur {i % 7} : intervention {i}.", "flavor": "smollm2-135m"})
            return i, response.status_code, response.json().get("jobId")

        accepted, errors = {}, []
        reads = {"ok": 0, "bad": 0}
        stop_reading = threading.Event()

        def reader():
            # GET /results must stay correct during the load: every known id answers its own job.
            while not stop_reading.is_set():
                known = list(accepted.items())
                if not known:
                    time.sleep(0.01)
                    continue
                i, job_id = random.choice(known)
                body = session().get(f"{gw.url}/results/{job_id}", timeout=30).json()
                reads["ok" if body.get("jobId") == job_id and body["status"] in
                      ("queued", "processing", "complete") else "bad"] += 1

        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=52) as pool:
            readers = [pool.submit(reader) for _ in range(2)]
            for i, status, job_id in pool.map(submit, range(1000)):
                if status == 202:
                    accepted[i] = job_id
                else:
                    errors.append((i, status))
            stop_reading.set()
            for r in readers:
                r.result()
        took = time.monotonic() - started
        store = gw.store()
        rows = sum(store.count_by_status().values())
        store.close()
        locked = gw.logs().count("database is locked")
        print(f"\nload: 1000 submissions from 50 clients in {took:.1f} s ({1000 / took:.0f}/s); "
              f"accepted {len(accepted)}, errors {len(errors)}, rows stored {rows}, "
              f"'database is locked' {locked}, reads during load ok {reads['ok']} bad {reads['bad']}")
        assert errors == [] and len(accepted) == 1000 and len(set(accepted.values())) == 1000
        assert rows == 1000
        assert locked == 0
        assert reads["bad"] == 0 and reads["ok"] > 0
    finally:
        gw.stop()
        engine.stop()


def test_100_manifest_edits_under_traffic(tmp_path, deployment):
    engine = FakeEngineProcess()
    folder = tmp_path / "services"
    shutil.copytree("services", folder)
    gw = Gateway(tmp_path, engine.base_url, services_dir=str(folder), workers=2, deployment=deployment).start()
    stop = threading.Event()
    try:
        statuses: list[int] = []

        def traffic():
            s = requests.Session()
            while not stop.is_set():
                for path in ("/services", "/services/churn", "/openapi.json"):
                    statuses.append(s.get(gw.url + path, timeout=30).status_code)
                statuses.append(s.post(f"{gw.url}/services/cra/generate", timeout=30,
                                       json={"content": "A : b", "flavor": "smollm2-135m"}).status_code)

        def served_churn():
            services = {s["name"]: s for s in requests.get(f"{gw.url}/services", timeout=10).json()}
            errors = requests.get(f"{gw.url}/health", timeout=10).json()["registry"]["errors"]
            return services.get("churn", {}).get("flavor", [{}])[0].get("name"), [e["file"] for e in errors]

        # A valid first version, so that every half-written file has a last valid version to keep serving.
        write_service(str(folder), "churn", manifest(name="churn", flavors=[flavor("v-first")]))
        wait_until(lambda: served_churn() == ("v-first", []), 30, what="the first version of churn.json")
        valid, held = {"v-first"}, []          # versions written whole so far; half-written files loaded
        threads = [threading.Thread(target=traffic) for _ in range(3)]
        for t in threads:
            t.start()
        rng = random.Random(7)
        kinds = {"write": 0, "rename": 0, "recreate": 0, "half": 0}
        for i in range(100):
            kind = rng.choice(list(kinds))
            kinds[kind] += 1
            data = manifest(name="churn", flavors=[flavor(f"v{i}")])
            path = folder / "churn.json"
            if kind == "write":
                write_service(str(folder), "churn", data)
            elif kind == "rename":
                tmp = folder / ".churn.json.tmp"
                tmp.write_text(json.dumps(data))
                os.replace(tmp, path)
            elif kind == "recreate":
                if path.exists():
                    path.unlink()
                write_service(str(folder), "churn", data)
            else:  # a half-written file, completed a moment later
                text = json.dumps(data)
                path.write_text(text[: len(text) // 2])
                if kinds["half"] % 3 == 1:
                    # Every third one stays half-written past the debounce, so the workers do load it: it is
                    # listed under errors while the last valid version keeps serving.
                    wait_until(lambda: (lambda name, errors: name in valid and errors == ["churn.json"])(
                        *served_churn()), 30, what="churn.json half-written, listed under errors, a valid version served")
                    held.append(i)
                else:
                    time.sleep(0.005)
                path.write_text(text)
            valid.add(f"v{i}")
            time.sleep(rng.uniform(0, 0.03))
        stop.set()
        for t in threads:
            t.join()
        on_disk = load_folder(str(folder))
        expected = json.dumps([sv.raw for _, sv in sorted(on_disk.services.items())], sort_keys=True)

        def views():  # fresh connections reach both workers
            seen = {}
            for _ in range(20):
                body = requests.get(f"{gw.url}/services", timeout=10, headers={"Connection": "close"}).json()
                seen[json.dumps(body, sort_keys=True)] = body
            return seen

        started = time.monotonic()
        wait_until(lambda: set(views()) == {expected}, 30, interval=0.2, what="every worker to serve what is on disk")
        served = views()
        five_xx = sum(1 for s in statuses if s >= 500)
        print(f"\nchurn: 100 edits {kinds}, {len(held)} half-written files loaded and listed while the last valid "
              f"version served, {len(statuses)} requests during them, 5xx: {five_xx}, every worker equal to the disk "
              f"{time.monotonic() - started:.1f} s after the last edit")
        assert five_xx == 0 and len(statuses) > 0 and held
        assert len(served) == 1
        body = next(iter(served.values()))
        assert on_disk.errors == () and requests.get(f"{gw.url}/health", timeout=10).json()["registry"]["errors"] == []
        assert body == [s.raw for _, s in sorted(on_disk.services.items())]
        assert {s["name"]: s for s in body}["churn"]["flavor"][0]["name"] == "v99"
    finally:
        stop.set()
        gw.stop()
        engine.stop()
