"""Settings: seed names and defaults, flag over env var, conversion errors, --help."""
import subprocess
import sys

import pytest

from app.settings import Settings, build_parser, load_settings, setting_fields

SEED_DEFAULTS = {
    # flag: (env var, default) as the seed README documents them
    "--service_name": ("SERVICE_NAME", "LLM_Gateway"),
    "--api_base": ("OPENAI_API_BASE", "http://localhost:9000/v1"),
    "--api_key": ("OPENAI_API_TOKEN", "EMPTY"),
    "--service_port": ("HTTP_PORT", 8000),
    "--workers": ("CONCURRENCY", 2),
    "--timeout": ("TIMEOUT", 60),
    "--swagger_url": (None, "/docs"),
    "--swagger_prefix": ("SWAGGER_PREFIX", ""),
    "--debug": (None, False),
    "--db_path": ("RESULT_DB_PATH", "./results.sqlite"),
    "--swagger_path": ("SWAGGER_PATH", "document/swagger_llm_gateway.yml"),
}


def test_seed_flags_env_vars_and_defaults_are_kept():
    by_flag = {f.metadata["flag"]: f for f in setting_fields()}
    for flag, (env, default) in SEED_DEFAULTS.items():
        assert flag in by_flag, flag
        if env is not None:
            assert by_flag[flag].metadata["env"] == env
        assert by_flag[flag].default == default
    _, settings = load_settings([], environ={})
    assert settings == Settings()


def test_flag_beats_env_and_env_beats_default():
    role, s = load_settings(["--service_port", "9001"], environ={"HTTP_PORT": "7000", "CONCURRENCY": "5"})
    assert role == "all"
    assert s.service_port == 9001
    assert s.workers == 5
    assert s.services_dir == "./services"
    _, s = load_settings(["runner", "--debug"], environ={"DEBUG": "0", "MAX_CONCURRENT_JOBS": "7"})
    assert s.debug is True and s.max_concurrent_jobs == 7


@pytest.mark.parametrize("argv,environ,needle", [
    (["--workers", "two"], {}, "--workers"),
    ([], {"HTTP_PORT": "eighty"}, "HTTP_PORT"),
    ([], {"DEBUG": "maybe"}, "DEBUG"),
    (["--workers", "0"], {}, "workers"),
])
def test_bad_values_are_refused_with_the_name(argv, environ, needle):
    with pytest.raises(ValueError, match=needle):
        load_settings(argv, environ=environ)


def test_public_settings_hide_the_engine_key():
    assert Settings(api_key="sk-secret").public()["api_key"] == "***"


def test_help_lists_every_setting():
    out = subprocess.run([sys.executable, "-m", "app", "--help"], capture_output=True, text=True, check=True).stdout
    for f in setting_fields():
        assert f.metadata["flag"] in out
        if f.metadata["env"]:
            assert f.metadata["env"] in out
    assert build_parser().prog == "python3 -m app"


def test_bad_flag_value_exits_2_with_a_message():
    proc = subprocess.run([sys.executable, "-m", "app", "--workers", "x"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "--workers" in proc.stderr
