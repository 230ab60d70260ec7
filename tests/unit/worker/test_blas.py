from __future__ import annotations

from pathlib import Path

from services.worker.runner.blas import OPENBLAS_CANDIDATES, blas_in_use, runner_blas_env

PREFIX = Path("/venv")
MKL = "/venv/lib/libmkl_rt.so.3"


def only(*present: str):
    return lambda path: path in present


def test_mkl_in_the_venv_wins_and_runs_single_threaded() -> None:
    env = runner_blas_env(PREFIX, "Linux", exists=only(MKL, OPENBLAS_CANDIDATES[0]))
    assert env == {"LD_PRELOAD": MKL, "MKL_THREADING_LAYER": "SEQUENTIAL"}


def test_system_openblas_when_no_mkl() -> None:
    env = runner_blas_env(PREFIX, "Linux", exists=only(OPENBLAS_CANDIDATES[1]))
    assert env == {"LD_PRELOAD": OPENBLAS_CANDIDATES[1], "OPENBLAS_NUM_THREADS": "1"}


def test_nothing_found_keeps_the_bundled_blas() -> None:
    assert runner_blas_env(PREFIX, "Linux", exists=only()) == {}


def test_reference_choice_keeps_the_bundled_blas() -> None:
    assert runner_blas_env(PREFIX, "Linux", exists=only(MKL), choice="reference") == {}


def test_macos_is_left_to_accelerate() -> None:
    assert runner_blas_env(PREFIX, "Darwin", exists=only(MKL)) == {}


def test_an_inherited_preload_is_kept_after_ours_and_not_doubled() -> None:
    env = runner_blas_env(PREFIX, "Linux", inherited_preload=f"/x/libfoo.so {MKL}", exists=only(MKL))
    assert env["LD_PRELOAD"] == f"{MKL} /x/libfoo.so"


def test_blas_in_use_reads_process_maps() -> None:
    bundled = "7f00-7f01 r-xp 0 0:0 1 /v/site-packages/mlx_cpu.libs/libblas-bd8a282c.so.3.10.0\n"
    assert blas_in_use(bundled) == "reference"
    assert blas_in_use(bundled + "7f02-7f03 r-xp 0 0:0 1 /venv/lib/libmkl_rt.so.3\n") == "mkl"
    assert blas_in_use(bundled + "7f02 /usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblasp-r0.3.21.so\n") == "openblas"
    assert blas_in_use("nothing here") == "unknown"
