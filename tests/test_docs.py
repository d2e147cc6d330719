"""The README is checked against the code: the settings table and the two set-up commands."""
import re

from app.settings import setting_fields

README = open("README.md", encoding="utf-8").read()


def readme_settings_rows():
    rows = {}
    for line in README.splitlines():
        match = re.match(r"^\| `(--\w+)` \| `(\w+)` \| (.+?) \| (.+?) \|$", line)
        if match:
            rows[match.group(1)] = match.groups()[1:]
    return rows


def shown_default(value):
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"`{value}`" if value != "" else "(empty)"  # the README writes defaults this way


def test_readme_settings_table_matches_the_code():
    rows = readme_settings_rows()
    fields = setting_fields()
    assert set(rows) == {f.metadata["flag"] for f in fields}
    for f in fields:
        env, default, help_text = rows[f.metadata["flag"]]
        assert env == f.metadata["env"], f.name
        assert default == shown_default(f.default), f.name
        assert help_text == f.metadata["help"], f.name


def test_readme_has_the_install_and_test_commands_ci_runs():
    assert "python3 -m pip install -r requirements.txt && python3 -m app" in README
    test_command = "python3 -m pip install -r requirements-dev.txt && python3 -m pytest"
    assert test_command in README
    ci = open(".ci/run", encoding="utf-8").read()
    assert "python3 -m pip install" in ci and "requirements-dev.txt" in ci
    assert "python3 -m pytest" in ci


def test_python_m_tests_runs_the_same_suite(monkeypatch):
    """The seed's test command: `python3 -m tests` runs pytest on what `python3 -m pytest` collects.

    Checked without collecting the suite: tests/__main__.py must hand pytest.main the folder that
    pytest.ini's testpaths names (what a bare `python3 -m pytest` collects) and the command's own
    arguments, and exit with pytest's code; then one real `python3 -m tests` must reach pytest."""
    import configparser
    import runpy
    import subprocess
    import sys

    import pytest

    ini = configparser.ConfigParser()
    ini.read("pytest.ini", encoding="utf-8")
    handed = []
    monkeypatch.setattr(pytest, "main", lambda args: handed.append(args) or 3)
    monkeypatch.setattr(sys, "argv", ["tests", "-x", "-k", "docs"])
    with pytest.raises(SystemExit) as exited:
        runpy.run_module("tests", run_name="__main__")      # what `python3 -m tests -x -k docs` runs
    assert handed == [[*ini["pytest"]["testpaths"].split(), "-x", "-k", "docs"]] and exited.value.code == 3
    done = subprocess.run([sys.executable, "-m", "tests", "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and f"pytest {pytest.__version__}" in done.stdout + done.stderr, done


def test_every_test_the_docs_cite_exists():
    """The README's guarantees table and BENCHMARKS.md name the tests that prove them: each must exist."""
    from pathlib import Path
    cited = 0
    for doc in ("README.md", "BENCHMARKS.md", "document/architecture.md"):
        for match in re.finditer(r"`(tests/[\w/]+\.py)(?:::(\w+))?`", Path(doc).read_text(encoding="utf-8")):
            path, name = Path(match.group(1)), match.group(2)
            assert path.is_file(), f"{doc} cites {path}, which does not exist"
            if name:
                assert re.search(rf"^(?:async )?def {name}\(", path.read_text(encoding="utf-8"), re.M), \
                    f"{doc} cites {path}::{name}, which does not exist"
                cited += 1
    assert cited > 20       # the README's guarantees table cites its tests by name
