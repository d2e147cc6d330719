"""The watched registry with real watchdog events: create, modify, atomic rename, delete, invalid."""
import json
import os
import time

import pytest

from app.services.registry import ServiceRegistry
from tests.manifest_factory import flavor, manifest, write_service


def wait_for(predicate, timeout=5.0):
    """Poll until predicate() is true; return how long it took, or fail."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


@pytest.fixture
def registry(tmp_path):
    reg = ServiceRegistry(str(tmp_path), debounce=0.2).start()
    yield reg
    reg.stop()


def test_create_modify_delete_are_seen_within_2s(tmp_path, registry):
    assert registry.snapshot.services == {}
    write_service(str(tmp_path), "svc", manifest(name="svc"))
    took = wait_for(lambda: registry.get("svc") is not None)
    assert took < 2.0
    write_service(str(tmp_path), "svc", manifest(name="svc", flavors=[flavor("a"), flavor("b")]))
    wait_for(lambda: [f.name for f in registry.get("svc").flavors] == ["a", "b"])
    os.remove(tmp_path / "svc.json")
    wait_for(lambda: registry.get("svc") is None)
    assert registry.snapshot.errors == ()


def test_atomic_rename_save(tmp_path, registry):
    write_service(str(tmp_path), "svc", manifest(name="svc"))
    wait_for(lambda: registry.get("svc") is not None)
    # Editors save by writing a temporary file and renaming it over the original.
    tmp = tmp_path / ".svc.json.swp"
    tmp.write_text(json.dumps(manifest(name="svc", flavors=[flavor("renamed")])))
    os.replace(tmp, tmp_path / "svc.json")
    wait_for(lambda: registry.get("svc").flavors[0].name == "renamed")


def test_move_in_and_out(tmp_path, registry):
    outside = tmp_path.parent / (tmp_path.name + "-outside")
    outside.mkdir()
    write_service(str(outside), "moved", manifest(name="moved"))
    os.replace(outside / "moved.txt", tmp_path / "moved.txt")
    os.replace(outside / "moved.json", tmp_path / "moved.json")
    wait_for(lambda: registry.get("moved") is not None)
    os.replace(tmp_path / "moved.json", outside / "moved.json")
    wait_for(lambda: registry.get("moved") is None)


def test_invalid_edit_keeps_the_last_valid_version_and_lists_the_error(tmp_path, registry):
    write_service(str(tmp_path), "svc", manifest(name="svc"))
    wait_for(lambda: registry.get("svc") is not None)
    (tmp_path / "svc.json").write_text('{"name": "svc", "fields": ')
    wait_for(lambda: registry.snapshot.errors != ())
    assert registry.get("svc") is not None  # the last valid version keeps serving
    assert registry.snapshot.errors[0]["file"] == "svc.json"
    assert "invalid JSON" in registry.snapshot.errors[0]["message"]
    write_service(str(tmp_path), "svc", manifest(name="svc", flavors=[flavor("fixed")]))
    wait_for(lambda: registry.snapshot.errors == () and registry.get("svc").flavors[0].name == "fixed")


def test_new_invalid_file_is_not_loaded(tmp_path, registry):
    write_service(str(tmp_path), "bad", manifest(name="bad", flavors=[flavor(top_p=2)]))
    wait_for(lambda: registry.snapshot.errors != ())
    assert registry.get("bad") is None
    assert "top_p" in registry.snapshot.errors[0]["message"]


def test_template_edit_that_breaks_fields_is_an_error(tmp_path, registry):
    write_service(str(tmp_path), "svc", manifest(name="svc"))
    wait_for(lambda: registry.get("svc") is not None)
    (tmp_path / "svc.txt").write_text("only one field {}")
    wait_for(lambda: registry.snapshot.errors != ())
    assert "fields = 2" in registry.snapshot.errors[0]["message"]


def test_tick_debounces(tmp_path):
    reg = ServiceRegistry(str(tmp_path), debounce=10.0)
    reg.reload()
    write_service(str(tmp_path), "svc", manifest(name="svc"))
    reg.mark_dirty()
    now = time.monotonic()
    assert reg.tick(now) is False  # not quiet long enough
    assert reg.get("svc") is None
    assert reg.tick(now + 11) is True
    assert reg.get("svc") is not None
    assert reg.tick(now + 30) is False  # nothing changed since


def test_a_fifo_in_the_folder_does_not_freeze_hot_reload(tmp_path, registry):
    """A named pipe is never opened (open() would wait for a writer, and the reload with it): it is
    listed under errors, and a valid change made after it is still loaded."""
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    try:
        wait_for(lambda: any(e["file"] == "pipe.json" for e in registry.snapshot.errors))
        assert "not a regular file" in registry.snapshot.errors[0]["message"]
        write_service(str(tmp_path), "svc", manifest(name="svc"))
        wait_for(lambda: registry.get("svc") is not None)
        assert [e["file"] for e in registry.snapshot.errors] == ["pipe.json"]
    finally:
        try:                       # before the fix, the reload thread waits in open(): let it go
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass


def test_a_change_no_event_announced_is_found_by_the_rescan(tmp_path):
    """No watchdog here (the registry is not started): only the rescan can see the new file."""
    from app.services.registry import RESCAN_S
    reg = ServiceRegistry(str(tmp_path), debounce=0.5)
    reg.reload()
    write_service(str(tmp_path), "svc", manifest(name="svc"))
    now = time.monotonic()
    assert reg.tick(now) is False and reg.get("svc") is None          # not yet due
    assert reg.tick(now + RESCAN_S + 1) is False                      # found changed: debounce starts
    assert reg.tick(now + RESCAN_S + 2) is True and reg.get("svc") is not None
    assert reg.tick(now + 3 * RESCAN_S) is False                      # unchanged since that load
