"""Which MLX CUDA build fits this machine's NVIDIA driver; setup.sh asks it where `nvidia-smi` answers.

    python -m services.worker.runner.cuda_setup   -> prints cuda12, cuda13 or nothing (stay on the CPU build)

Minimum drivers from MLX's install notes: CUDA 13 builds need >= 580, CUDA 12 builds >= 550.54.14.
"""

from __future__ import annotations

import subprocess

_CUDA13_DRIVER = (580,)
_CUDA12_DRIVER = (550, 54, 14)


def driver_tuple(version: str) -> tuple[int, ...] | None:
    """'580.65.06' -> (580, 65, 6); None for anything else."""
    parts = version.strip().split(".")
    if not parts or not all(p.isdigit() for p in parts):
        return None
    return tuple(int(p) for p in parts)


def mlx_cuda_extra(driver_version: str) -> str | None:
    """The `mlx[...]` extra for this driver, or None when its CUDA is too old for MLX's wheels."""
    version = driver_tuple(driver_version)
    if version is None:
        return None
    if version >= _CUDA13_DRIVER:
        return "cuda13"
    if version >= _CUDA12_DRIVER:
        return "cuda12"
    return None


def query_driver() -> str | None:
    """The first GPU's driver version from nvidia-smi, or None where it is absent or fails."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.strip().splitlines()
    return lines[0] if lines else None


if __name__ == "__main__":
    driver = query_driver()
    extra = mlx_cuda_extra(driver) if driver else None
    if extra:
        print(extra)
