"""Manifest validation: every rule gives a clear message; valid files load in JSON and YAML."""
import os
import socket
import threading

import pytest

from app.services.manifests import ManifestError, current_template, load_service
from app.services.registry import load_folder
from tests.manifest_factory import flavor, manifest, write_service


def test_shipped_services_load():
    snapshot = load_folder("services")
    assert snapshot.errors == ()
    assert {"cra", "cred", "summary"} <= set(snapshot.services)
    cra = snapshot.services["cra"]
    assert [f.name for f in cra.flavors][:2] == ["mixtral", "vigostral"]
    mixtral = cra.flavor("mixtral")
    assert (mixtral.total_context_length, mixtral.max_generation_length, mixtral.create_new_turn_after,
            mixtral.summary_turns, mixtral.max_new_turns) == (32768, 2048, 178, 2, 6)
    assert snapshot.services["summary"].flavor("smollm2-135m").model == "smollm2-135m"


def test_json_and_yaml_load_the_same(tmp_path):
    a = load_service(write_service(str(tmp_path), "one", manifest(name="one")))
    b = load_service(write_service(str(tmp_path), "two", manifest(name="two"), suffix=".yaml"))
    assert a.flavors == b.flavors and a.fields == b.fields == 2
    assert a.flavor(None) is a.flavors[0]  # one flavor: the flavor may be omitted


@pytest.mark.parametrize("data,needle", [
    ({"fields": 2, "flavor": [flavor()]}, "missing required key 'name'"),
    (manifest(fields=3), "'fields' must be 1"),
    (manifest(fields="2"), "'fields' must be an integer"),
    (manifest(name="../evil"), "may only use letters"),
    (manifest(name="errors"), "is reserved"),
    (manifest(name="svc\n"), "may only use letters"),        # `$` alone matches before a final newline
    (manifest(flavors=[flavor("small\n")]), "may only use letters"),
    (manifest(colour="red"), "unknown top-level key(s) 'colour'"),
    (manifest(description={"en": "x" * 300_000}), "larger than the limit of 256 KiB (262144 bytes)"),
    (manifest(flavors=[]), "non-empty list"),
    (manifest(flavors=[flavor(temperature=3)]), "'temperature' must be between 0 and 2"),
    (manifest(flavors=[flavor(temperature=-1)]), "'temperature' must be between 0 and 2"),
    (manifest(flavors=[flavor(top_p=0)]), "'top_p' must be greater than 0"),
    (manifest(flavors=[flavor(top_p=1.5)]), "'top_p' must be greater than 0"),
    (manifest(flavors=[flavor(totalContextLength=0)]), "'totalContextLength' must be positive"),
    (manifest(flavors=[flavor(maxGenerationLength=4096)]), "must be smaller than"),
    (manifest(flavors=[flavor(maxNewTurns="6")]), "'maxNewTurns' must be an integer"),
    (manifest(flavors=[flavor(maxNewTurns=True)]), "'maxNewTurns' must be an integer"),
    (manifest(flavors=[flavor(), flavor()]), "used twice: small"),
    (manifest(flavors=[{"name": "x"}]), "missing required key 'modelName'"),
    (manifest(flavors=[flavor(colour="red")]), "unknown key(s) colour"),
    (manifest(flavors=[flavor(fallbackFlavor="nope")]), "'fallbackFlavor'"),
    (manifest(flavors=[flavor(reduceSummary=True)]), "needs 'reduce_prompt'"),
    (manifest(flavors=[flavor(totalContextLength=1000, maxGenerationLength=600, createNewTurnAfter=200)]), "leave 0 tokens"),
])
def test_invalid_manifests_are_refused_with_a_clear_message(tmp_path, data, needle):
    path = write_service(str(tmp_path), "svc", data, template="A {}\nB {}\n" if data.get("fields") != 1 else "A {}\n")
    with pytest.raises(ManifestError) as info:
        load_service(path)
    assert needle in str(info.value)


@pytest.mark.parametrize("template,needle", [
    ("only one {}", "has 1 {} placeholder(s) but the manifest says fields = 2"),
    ("{} and {} and {}", "has 3"),
    ("{} and {name} {}", "braces other than"),
    ("{} and } {}", "braces other than"),
])
def test_template_must_match_fields(tmp_path, template, needle):
    with pytest.raises(ManifestError, match=needle.replace("{", r"\{").replace("}", r"\}").replace("(", r"\(").replace(")", r"\)")):
        load_service(write_service(str(tmp_path), "svc", manifest(), template=template))


def test_missing_template_is_reported(tmp_path):
    with pytest.raises(ManifestError, match="template svc.txt is missing"):
        load_service(write_service(str(tmp_path), "svc", manifest(), template=False))


def test_invalid_json_and_yaml(tmp_path):
    (tmp_path / "bad.json").write_text('{"name": "bad", ')
    (tmp_path / "bad.txt").write_text("{}\n{}")
    (tmp_path / "worse.yaml").write_text("name: [unclosed\n")
    (tmp_path / "list.json").write_text("[1, 2]")
    snapshot = load_folder(str(tmp_path))
    messages = {e["file"]: e["message"] for e in snapshot.errors}
    assert messages["bad.json"].startswith("invalid JSON")
    assert messages["worse.yaml"].startswith("invalid YAML")
    assert "must be an object" in messages["list.json"]
    assert snapshot.services == {}


def test_two_files_with_the_same_name(tmp_path):
    write_service(str(tmp_path), "a", manifest(name="same"))
    write_service(str(tmp_path), "b", manifest(name="same"))
    snapshot = load_folder(str(tmp_path))
    assert list(snapshot.services) == ["same"]
    assert snapshot.services["same"].manifest_path.endswith("a.json")
    assert snapshot.errors == ({"file": "b.json", "message": "the service name 'same' is already used by a.json"},)


def test_symlink_outside_the_folder_is_refused(tmp_path):
    outside = tmp_path / "outside"
    inside = tmp_path / "services"
    outside.mkdir()
    inside.mkdir()
    target = write_service(str(outside), "svc", manifest())
    os.symlink(target, inside / "svc.json")
    (inside / "svc.txt").write_text("{}\n{}")
    snapshot = load_folder(str(inside))
    assert snapshot.services == {}
    assert "outside the services folder" in snapshot.errors[0]["message"]


def test_reduce_prompt_must_be_inside_and_have_one_field(tmp_path):
    data = manifest(flavors=[flavor(reduceSummary=True, reduce_prompt="../reduce.txt")])
    with pytest.raises(ManifestError, match="inside the services folder"):
        load_service(write_service(str(tmp_path), "svc", data))
    (tmp_path / "reduce.txt").write_text("Summarize: {} {}")
    data = manifest(flavors=[flavor(reduceSummary=True, reduce_prompt="reduce.txt")])
    with pytest.raises(ManifestError, match="reduce.txt has 2"):
        load_service(write_service(str(tmp_path), "svc", data))
    (tmp_path / "reduce.txt").write_text("Summarize: {}")
    assert load_service(write_service(str(tmp_path), "svc", data)).flavors[0].reduce_summary


def test_current_template_keeps_the_last_valid_version_of_each_template(tmp_path):
    """The main template and a reduce template are read as they are now; broken or deleted, the
    versions validated at load serve, with a note (the runner adds it to the job's warnings)."""
    (tmp_path / "reduce.txt").write_text("Condense: {}")
    data = manifest(fields=1, flavors=[flavor(reduceSummary=True, reduce_prompt="reduce.txt")])
    service = load_service(write_service(str(tmp_path), "svc", data, template="Minutes: {}"))
    (tmp_path / "svc.txt").write_text("Minutes, v2: {}")
    assert current_template(service) == ("Minutes, v2: {}", None)
    (tmp_path / "svc.txt").write_text("broken {} {}")
    (tmp_path / "reduce.txt").unlink()
    text, note = current_template(service)
    assert text == "Minutes: {}" and "svc.txt has 2" in note and "last valid version" in note
    text, note = current_template(service, "reduce.txt")
    assert text == "Condense: {}" and "reduce.txt is missing" in note


def test_prompt_room_is_counted_with_a_real_tokenizer(tmp_path):
    # 600 generated + 2 x 150 context + the template leave a little under 100 tokens: loads.
    ok = manifest(flavors=[flavor(totalContextLength=1000, maxGenerationLength=600)])
    assert load_service(write_service(str(tmp_path), "svc", ok)).flavors[0].total_context_length == 1000
    # A template of ~120 tokens (by the Mistral tokenizer) in the same budget leaves none.
    long_template = "Consigne détaillée. " * 24 + "\n{}\n{}\n"
    with pytest.raises(ManifestError, match="leave 0 tokens"):
        load_service(write_service(str(tmp_path), "svc", ok, template=long_template))


def test_unknown_top_level_keys_name_the_allowed_ones_and_studio_keys_stay_accepted(tmp_path):
    with pytest.raises(ManifestError) as info:
        load_service(write_service(str(tmp_path), "svc", manifest(flavour=[flavor()])))
    assert str(info.value) == ("unknown top-level key(s) 'flavour' in the manifest; the allowed keys are"
                               " name, fields, flavor, type, description, backend, route, format, output")
    # LinTO Studio's manifests may carry `route` and `format`: they are served as written.
    service = load_service(write_service(str(tmp_path), "svc", manifest(route="svc", format="markdown")))
    assert (service.raw["route"], service.raw["format"]) == ("svc", "markdown")


def test_output_says_how_answers_are_checked_and_is_validated(tmp_path):
    assert load_service(write_service(str(tmp_path), "svc", manifest())).output == "summary"
    assert load_service(write_service(str(tmp_path), "svc", manifest(output="turns"))).output == "turns"
    assert load_service("services/cra.json").output == "turns"
    assert load_service("services/cred.json").output == "summary"       # topics and decisions: free text
    with pytest.raises(ManifestError, match="'output' must be one of summary, turns"):
        load_service(write_service(str(tmp_path), "svc", manifest(output="lines")))
    with pytest.raises(ManifestError, match="'output' must be a string"):
        load_service(write_service(str(tmp_path), "svc", manifest(output=["turns"])))


def alias_bomb(levels=7, width=9):
    """A YAML "billion laughs": each level lists the previous one `width` times by alias."""
    lines = ["l0: &l0 [" + ", ".join(["lol"] * width) + "]"]
    for level in range(1, levels):
        lines.append(f"l{level}: &l{level} [" + ", ".join([f"*l{level - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def test_a_yaml_alias_bomb_is_refused_before_it_expands(tmp_path):
    write_service(str(tmp_path), "ok", manifest(name="ok"))
    bomb = alias_bomb()
    assert len(bomb) < 1024                # 9**7 "lol" once expanded: some 30 MB in every GET /services
    write_service(str(tmp_path), "bomb", manifest(name="bomb"), suffix=".yaml")
    with open(tmp_path / "bomb.yaml", "a", encoding="utf-8") as handle:
        handle.write(bomb)
    snapshot = load_folder(str(tmp_path))
    # Plain names only in the asserts: a failure report must not print the expanded bomb.
    names, errors = list(snapshot.services), [(e["file"], e["message"]) for e in snapshot.errors]
    assert names == ["ok"]                              # the other services keep serving
    assert errors == [("bomb.yaml", "YAML anchors (&) and aliases (*) are not allowed in a manifest"
                                    " (line 17, column 5): write each value out")]


def test_yaml_anchors_and_aliases_are_refused_even_when_harmless(tmp_path):
    (tmp_path / "svc.txt").write_text("A {}\nB {}\n")
    (tmp_path / "svc.yaml").write_text(
        "name: svc\nfields: 2\nflavor:\n"
        "  - &base {name: a, modelName: m, totalContextLength: 4096, maxGenerationLength: 512,"
        " createNewTurnAfter: 150, summaryTurns: 2, maxNewTurns: 8}\n"
        "  - {<<: *base, name: b}\n")
    with pytest.raises(ManifestError, match=r"anchors \(&\) and aliases \(\*\) are not allowed .*line 4"):
        load_service(str(tmp_path / "svc.yaml"))


def release_fifo(path):
    """Open a FIFO for writing and close it: a reader stuck in open() (the bug) gets EOF and moves on."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:                # ENXIO: nobody is waiting on it, as it should be
        pass


def load_folder_without_blocking(folder, fifos, timeout=5.0):
    """load_folder(folder), failing the test (instead of hanging it) if reading a file blocks."""
    result = []
    thread = threading.Thread(target=lambda: result.append(load_folder(folder)), daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        for fifo in fifos:
            release_fifo(fifo)
        thread.join(timeout)
        pytest.fail(f"load_folder was still blocked after {timeout} s on a file that is not a regular file")
    return result[0]


@pytest.mark.parametrize("kind", ["fifo", "folder", "socket", "symlink to a fifo", "fifo template"])
def test_files_that_are_not_regular_files_are_listed_not_opened(tmp_path, kind):
    write_service(str(tmp_path), "ok", manifest(name="ok"))
    odd, fifos, listener = tmp_path / "odd.json", [], None
    if kind == "fifo":
        os.mkfifo(odd)
        fifos.append(odd)
    elif kind == "folder":
        odd.mkdir()
    elif kind == "socket":
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(odd))
    elif kind == "symlink to a fifo":
        os.mkfifo(tmp_path / "pipe")
        os.symlink("pipe", odd)
        fifos.append(tmp_path / "pipe")
    else:                          # a valid manifest whose template is a FIFO
        write_service(str(tmp_path), "odd", manifest(name="odd"), template=False)
        os.mkfifo(tmp_path / "odd.txt")
        fifos.append(tmp_path / "odd.txt")
    try:
        snapshot = load_folder_without_blocking(str(tmp_path), fifos)
    finally:
        if listener is not None:
            listener.close()
    assert list(snapshot.services) == ["ok"]
    assert [e["file"] for e in snapshot.errors] == ["odd.json"]
    assert "is not a regular file" in snapshot.errors[0]["message"]
