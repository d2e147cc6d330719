#!/bin/sh
# Install the gateway's Python dependencies. The Dockerfile runs this step; so does CI, through
# tests/test_image.py, which replays the Dockerfile without Docker.
#   scripts/install.sh          runtime: requirements.txt
#   scripts/install.sh --dev    also the test tools: requirements-dev.txt (which includes the first)
# Extra pip options can be passed in PIP_INSTALL_OPTIONS (e.g. "--user"); PYTHON picks the interpreter.
set -eu
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
FILE=requirements.txt
if [ "${1:-}" = "--dev" ] && [ -f requirements-dev.txt ]; then
    FILE=requirements-dev.txt
fi
# shellcheck disable=SC2086  # options are split on purpose
"$PYTHON" -m pip install --disable-pip-version-check ${PIP_INSTALL_OPTIONS:-} -r "$FILE"
