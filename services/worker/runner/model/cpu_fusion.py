"""Fewer graph ops per token for a model that runs on the CPU: its RMSNorms and RoPEs become compiled
(fused) functions.

On a CPU, MLX has no single kernel for `mx.fast.rms_norm` or `mx.fast.rope`: each call is built from
its element-wise fallback, 11 ops for a norm and 29 for a RoPE (counted with `mx.export_to_dot`). One
decode step of SmolLM2 is 4,067 ops, and 2,400 of them are these fallbacks. Every op costs the thread
that drives MLX a graph node, an allocation and a hand-off to the stream thread, and costs the stream
thread a dispatch; in a multi-rank instance on one machine, that per-op CPU is what the ranks fight
over. `mx.compile` fuses each chain of element-wise ops into one kernel, so the decode step falls to
2,620 ops. The results are the same to rounding (mlx-lm already compiles its SwiGLU the same way).

Scope, chosen to stay safe:
  - only modules of exactly the types `nn.RMSNorm`, `nn.RoPE` and mlx-lm's `Llama3RoPE` are replaced
    (Llama 2 and 3, Qwen2, Mistral and SmolLM2 use them; other RoPE variants keep mlx-lm's module);
  - a RoPE is fused for decode only (one new token per sequence): prefill lengths vary, and a compiled
    function keeps one trace per input shape, so they keep the unfused path (a prefill step is
    dominated by its matrix products anyway);
  - nothing changes on a GPU, where both are single kernels already;
  - where MLX cannot compile for the CPU (no C++ compiler on the machine), `mx.compile` returns the
    function unchanged, so the model runs exactly as before.

`EXO_CPU_FUSION=off` keeps mlx-lm's modules (for an A/B measurement, or if a model misbehaves).
"""

from __future__ import annotations

import math
from functools import cache

import mlx.core as mx
import numpy as np
from mlx import nn
from mlx_lm.models.rope_utils import Llama3RoPE

from services.worker.runner.model.swap import replace_modules

ENV = "EXO_CPU_FUSION"


@cache
def _rms_norm(eps: float, shapeless: bool):
    # Shaped (decode: one trace per batch size) the element count is a constant, one op fewer per norm.
    return mx.compile(lambda x, weight: mx.fast.rms_norm(x, weight, eps), shapeless=shapeless)


def _rotation(dims: int, traditional: bool) -> mx.array:
    """R with x @ R = RoPE's rotated half (-x2, x1), or (-x_odd, x_even) per pair when traditional: entries
    0 and +-1, so the product is exact."""
    r = np.zeros((dims, dims), np.float32)
    for i in range(dims // 2):
        a, b = (2 * i, 2 * i + 1) if traditional else (i, i + dims // 2)
        r[b, a], r[a, b] = -1.0, 1.0
    return mx.array(r)


def _full_width(inv_freqs: mx.array, traditional: bool) -> mx.array:
    if traditional:
        return mx.repeat(inv_freqs, 2)
    return mx.concatenate([inv_freqs, inv_freqs])


@mx.compile
def _rotate(x: mx.array, positions: mx.array, inv_freqs: mx.array, rotation: mx.array) -> mx.array:
    # One matmul and one fused kernel; mx.fast.rope's CPU fallback takes 12 ops and the same values
    # bit for bit (theta = position * inverse frequency, then x * cos + rotated * sin).
    theta = positions.astype(mx.float32).reshape(-1, 1, 1, 1) * inv_freqs
    return x * mx.cos(theta) + (x @ rotation) * mx.sin(theta)


class FusedRMSNorm(nn.Module):
    """`nn.RMSNorm` with the same weight, computed by one compiled function shared by all norms with
    the same epsilon."""

    def __init__(self, norm: nn.RMSNorm) -> None:
        super().__init__()
        self.weight = norm.weight
        self.eps = norm.eps

    def __call__(self, x: mx.array) -> mx.array:
        return _rms_norm(self.eps, x.ndim != 3 or x.shape[-2] != 1)(x, self.weight)


class FusedRoPE(nn.Module):
    """`nn.RoPE` or mlx-lm's `Llama3RoPE`, fused for decode steps (one position per sequence, rotating
    the whole head, scale 1); other calls use the original module. The inverse frequencies and the
    rotation are computed once per module, not per call."""

    def __init__(self, rope: nn.Module) -> None:
        super().__init__()
        self.original = rope
        self.dims = rope.dims
        if type(rope) is nn.RoPE:
            half = mx.arange(rope.dims // 2, dtype=mx.float32)
            inv = mx.exp(half * (-math.log(rope.base) / (rope.dims // 2)))
            self._fusable = rope.scale == 1.0
        else:  # Llama3RoPE: its per-dimension frequencies replace the base
            inv = mx.reciprocal(rope._freqs)
            self._fusable = True
        self._inv_freqs = _full_width(inv, rope.traditional)
        self._rotation = _rotation(rope.dims, rope.traditional)
        mx.eval(self._inv_freqs, self._rotation)

    def __call__(self, x: mx.array, offset: int | mx.array = 0) -> mx.array:
        if not self._fusable or x.ndim != 4 or x.shape[-2] != 1 or x.shape[-1] != self.dims:
            return self.original(x, offset=offset)
        if not isinstance(offset, mx.array):
            offset = mx.array(offset, dtype=mx.int32)
        return _rotate(x, offset, self._inv_freqs, self._rotation)


def wanted(setting: str = "on") -> bool:
    """Whether to fuse: on a CPU device, unless the runner setting (EXO_CPU_FUSION) is off."""
    value = setting.strip().lower()
    if value not in ("on", "off"):
        raise ValueError(f"{ENV} must be on or off, not {value!r}")
    return value == "on" and mx.default_device() == mx.cpu


def _fused(module: nn.Module) -> nn.Module | None:
    if type(module) is nn.RMSNorm:
        return FusedRMSNorm(module)
    if type(module) in (nn.RoPE, Llama3RoPE):
        return FusedRoPE(module)
    return None


def fuse_for_cpu(model: nn.Module) -> int:
    """Replace the model's RMSNorm and RoPE modules in place (also inside lists of modules); returns how
    many were replaced."""
    return replace_modules(model, _fused)
