"""scripts/engine.py's LLM_GATEWAY_ENGINE_NO_AVX512: vLLM started as on a CPU without AVX-512.

The engine itself is started by the end-to-end suite (tests/e2e, which checks that vLLM then loads
its AVX2 kernels); here, without vLLM or torch, the environment it is given: the sitecustomize
that answers torch's CPU probes "no", run by a real Python process against a stand-in `torch`
whose probes say yes, and the variables and dtype that go with it.
"""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROBES = ("_is_avx512_supported", "_is_avx512_bf16_supported", "_is_amx_tile_supported")


@pytest.fixture
def engine_script(tmp_path, monkeypatch):
    """scripts/engine.py as a module, its cache under tmp_path."""
    monkeypatch.setenv("LLM_GATEWAY_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LLM_GATEWAY_VLLM_DTYPE", raising=False)
    spec = importlib.util.spec_from_file_location("engine_script_under_test", ROOT / "scripts" / "engine.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stand_in_torch(folder: Path) -> Path:
    """A package named torch whose torch.cpu probes all say yes, as on an AVX-512 machine."""
    (folder / "torch").mkdir(parents=True)
    (folder / "torch" / "__init__.py").write_text("", encoding="utf-8")
    (folder / "torch" / "cpu.py").write_text("".join(f"def {name}():\n    return True\n" for name in PROBES),
                                             encoding="utf-8")
    return folder


def probes_seen(env: dict, torch_folder: Path) -> list[bool]:
    """What a Python process started with `env` (and the stand-in torch after it) gets from the probes."""
    env = {**env, "PYTHONPATH": f"{env.get('PYTHONPATH', '')}:{torch_folder}".lstrip(":")}
    code = f"import json, torch.cpu; print(json.dumps([getattr(torch.cpu, name)() for name in {PROBES!r}]))"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_vllm_as_on_a_cpu_without_avx512(engine_script, tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_GATEWAY_ENGINE_NO_AVX512", "1")
    env = engine_script.engine_env("vllm")
    assert env["ATEN_CPU_CAPABILITY"] == "avx2" and env["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    assert env["PYTHONPATH"].split(":")[0] == engine_script.path("no-avx512")
    assert engine_script.vllm_dtype() == "float32"
    assert probes_seen(env, stand_in_torch(tmp_path / "site")) == [False, False, False]


def test_without_the_switch_vllm_sees_the_cpu_as_it_is(engine_script, tmp_path, monkeypatch):
    monkeypatch.delenv("LLM_GATEWAY_ENGINE_NO_AVX512", raising=False)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    env = engine_script.engine_env("vllm")
    assert "ATEN_CPU_CAPABILITY" not in env and "ONEDNN_MAX_CPU_ISA" not in env and "PYTHONPATH" not in env
    assert probes_seen(env, stand_in_torch(tmp_path / "site")) == [True, True, True]
    flags = set(engine_script.cpu_flags().split())
    assert engine_script.vllm_dtype() == ("bfloat16" if {"avx512_bf16", "amx_bf16"} & flags else "float32")


def test_llamacpp_is_given_none_of_it(engine_script, monkeypatch):
    monkeypatch.setenv("LLM_GATEWAY_ENGINE_NO_AVX512", "1")
    monkeypatch.delenv("PYTHONPATH", raising=False)
    env = engine_script.engine_env("llamacpp")
    assert "ATEN_CPU_CAPABILITY" not in env and "PYTHONPATH" not in env
