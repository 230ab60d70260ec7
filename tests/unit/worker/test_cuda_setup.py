"""setup.sh's choice of MLX build by NVIDIA driver (services/worker/runner/cuda_setup.py)."""

from __future__ import annotations

import pytest

from services.worker.runner.cuda_setup import driver_tuple, mlx_cuda_extra


@pytest.mark.parametrize(
    ("driver", "extra"),
    [
        ("580.65.06", "cuda13"),
        ("580", "cuda13"),
        ("595.10", "cuda13"),
        ("575.57.08", "cuda12"),
        ("550.54.14", "cuda12"),
        ("550.54.13", None),
        ("535.183.01", None),
        (" 570.124.06\n", "cuda12"),
        ("", None),
        ("N/A", None),
        ("570.x", None),
    ],
)
def test_driver_picks_the_newest_cuda_build_it_can_run(driver: str, extra: str | None) -> None:
    assert mlx_cuda_extra(driver) == extra


def test_driver_versions_compare_as_numbers_not_text() -> None:
    assert driver_tuple("1000.1") == (1000, 1)
    assert mlx_cuda_extra("1000.1") == "cuda13"  # "1000" < "580" as text
