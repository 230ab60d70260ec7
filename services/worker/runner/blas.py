"""Which BLAS a runner's MLX uses on a Linux CPU.

The mlx-cpu wheel links reference BLAS through an RPATH, so LD_LIBRARY_PATH cannot replace it; preloading a
library that exports `cblas_sgemm` does (measured here: dense float32 prefill ~8 -> ~200 tok/s, decode ~7.5 ->
~12.5 tok/s with OpenBLAS, ~16.5 with MKL; identical greedy tokens). The worker sets it when it starts a runner.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

OPENBLAS_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
)
KNOWN_BLAS = {"libmkl_rt": "mkl", "libopenblas": "openblas", "mlx_cpu.libs/libblas": "reference"}


def runner_blas_env(
    prefix: Path,
    system: str,
    inherited_preload: str = "",
    exists: Callable[[str], bool] = os.path.exists,
    choice: str = "auto",
) -> dict[str, str]:
    """Environment additions for a runner: the fastest BLAS present, single-threaded (a runner's batch is the
    parallelism; a second BLAS thread only fought the other processes on a 2-core machine). Empty: keep MLX's own.

    choice "reference" keeps MLX's bundled BLAS: slow, but its sums do not depend on how many requests share a
    batch, so a seeded request gives bit-identical tokens whatever else runs (fast kernels round differently)."""
    if system != "Linux" or choice == "reference":
        return {}  # macOS: Accelerate and Metal, nothing to choose
    mkl = str(prefix / "lib" / "libmkl_rt.so.3")
    if exists(mkl):
        return {"LD_PRELOAD": _prepend(mkl, inherited_preload), "MKL_THREADING_LAYER": "SEQUENTIAL"}
    for openblas in OPENBLAS_CANDIDATES:
        if exists(openblas):
            return {"LD_PRELOAD": _prepend(openblas, inherited_preload), "OPENBLAS_NUM_THREADS": "1"}
    return {}


def _prepend(library: str, inherited: str) -> str:
    return " ".join([library, *(p for p in inherited.split() if p != library)])


def blas_in_use(maps_text: str) -> str:
    """Which BLAS a process has loaded, from its /proc/<pid>/maps (the bundled one stays mapped when
    another is preloaded, so the first known non-reference library wins)."""
    found = [name for marker, name in KNOWN_BLAS.items() if marker in maps_text]
    preferred = [name for name in found if name != "reference"]
    return (preferred or found or ["unknown"])[0]


def current_blas() -> str:
    try:
        return blas_in_use(Path("/proc/self/maps").read_text())
    except OSError:
        return "system"  # no /proc: macOS, where MLX uses Accelerate
