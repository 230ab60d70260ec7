"""The kernels' logsumexp over the last axis (kernels/src/logsumexp.cpp) and the batch's use of it
(services/worker/runner/serve/logsumexp.py): MLX's own mx.logsumexp is the reference, on odd sizes, SmolLM2's
vocabulary, and rows of -inf, +inf and NaN."""

from __future__ import annotations

import importlib
import platform

import mlx.core as mx
import numpy as np
import pytest

from services.worker.runner.serve import logsumexp as batch_logsumexp

if platform.system() != "Linux":  # setup.sh builds the kernels on Linux only (Metal serves macOS)
    pytest.skip("exo's CPU kernels are built on Linux only", allow_module_level=True)

from services.worker.runner.model.kernels import _exo_kernels as k  # noqa: E402 - on Linux, setup.sh built it


@pytest.mark.parametrize("shape", [(1, 1), (1, 15), (1, 16), (1, 17), (3, 100), (8, 49152), (2, 3, 33), (9, 1000)])
def test_matches_mlx(shape: tuple[int, ...]) -> None:
    x = mx.array((np.random.default_rng(len(shape) * 100 + shape[-1]).standard_normal(shape) * 20).astype(np.float32))
    got, expected = k.logsumexp_rows(x), mx.logsumexp(x, axis=-1, keepdims=True)
    assert got.shape == expected.shape == (*shape[:-1], 1) and got.dtype == mx.float32
    err = float(mx.max(mx.abs(got - expected) / mx.maximum(mx.abs(expected), 1.0)))
    assert err < 2e-6, err


def test_rows_of_infinities_and_nan_give_what_mlx_gives() -> None:
    inf, nan = np.inf, np.nan
    rows = [[-inf] * 20, [1, inf, 2] + [0] * 17, [1, nan] + [0] * 18, [nan] * 20, [-inf, 0, -inf] + [1] * 17,
            [1e30, -1e30] + [0] * 18, [-inf] * 19 + [3], [inf] * 19 + [nan]]  # fmt: skip
    x = mx.array(np.array(rows, np.float32))
    got = np.array(k.logsumexp_rows(x).reshape(-1))
    expected = np.array(mx.logsumexp(x, axis=-1))
    np.testing.assert_allclose(got, expected, rtol=1e-6)  # equal_nan: NaN where MLX has NaN, infinities alike


def test_refuses_what_it_does_not_take() -> None:
    for bad in (mx.zeros((2, 0)), mx.zeros((2, 4), mx.int32), mx.zeros((2, 4), mx.float16), mx.array(1.0)):
        with pytest.raises(ValueError, match="float32"):
            k.logsumexp_rows(bad)


def test_the_wrapper_takes_mlx_for_what_the_kernel_does_not_do() -> None:
    x = mx.array(np.random.default_rng(1).standard_normal((4, 50)).astype(np.float32))
    for args, kwargs in [((x,), {"axis": 0}), ((x,), {}), ((x.astype(mx.float16),), {"axis": -1}),
                         ((x,), {"axis": -1, "keepdims": False}), ((x,), {"axis": (0, 1)})]:  # fmt: skip
        got, expected = batch_logsumexp.logsumexp(*args, **kwargs), mx.logsumexp(*args, **kwargs)
        assert got.shape == expected.shape and got.dtype == expected.dtype
        assert mx.allclose(got, expected, rtol=1e-3).item()


def test_the_batch_of_mlx_lm_normalizes_through_the_kernel() -> None:
    generate = importlib.import_module("mlx_lm.generate")
    assert batch_logsumexp.install() and batch_logsumexp.install()  # idempotent
    assert generate.mx.logsumexp is batch_logsumexp.logsumexp
    assert generate.mx.array is mx.array and generate.mx.argmax is mx.argmax  # the rest is mlx.core's
    logits = mx.array(np.random.default_rng(2).standard_normal((8, 49152)).astype(np.float32))
    assert batch_logsumexp._takes(logits, -1, {})  # what GenerationBatch._step asks
    logprobs = logits - generate.mx.logsumexp(logits, axis=-1, keepdims=True)
    assert float(mx.max(mx.abs(mx.exp(logprobs).sum(axis=-1) - 1.0))) < 1e-4
