"""A Llama-family decoder layer in two of our kernel's primitives (kernels/src/fused_layer.cpp), for any number of
new tokens: a decode step's one, a draft's verification, a prompt's prefill.

On a CPU each MLX op costs ~7-9 us to evaluate however little it computes (measured: an add of 576 floats), and a
decode step of SmolLM2 was ~1,600 ops, so ~12 ms of every token went to evaluating ops, not to the weights. A layer
becomes: `attention_in` (RMSNorm, the q/k/v projections, RoPE), the KV cache's own
update in MLX (mlx-lm's caches own their buffers and write in place), and `attention_out` (attention over the cache,
the o projection, residual, RMSNorm, SwiGLU MLP, residual): 6 ops where there were ~53.

Used when a runner has both the CPU fusion and our kernel (`load_shard`: `--cpu-fusion on`, the default, and
`--cpu-kernel on|auto`), on layers whose 7 linears are all the kernel's (`KernelLinear`, no biases, one group size
and bit width), that are mlx-lm's llama block (Llama 2/3, SmolLM2, Mistral's llama layout) with our fused RoPE, and
for calls whose cache is a plain `KVCache` or the batch's `BatchKVCache` in float32. Anything else (no cache, a
rotating or quantized cache, another family, a GPU) runs the original layer, so the swap can only fall back, never
refuse.

Every row is computed as it is alone: the kernel's products row by row, each new token's attention over the keys up
to its own (causal) from its sequence's first valid one (left padding), in the same order. With int8 activations
that matters: any change in the order of a float sum grows, over 30 layers, into logits as far apart as the int8
error itself (tests/integration/test_quantized_cpu.py), so only the same arithmetic gives the same tokens. Hence a
prefill here too, not only decode steps: a prompt's tokens are then the same whether the prefix cache held part of
it, whatever chunks it was prefilled in, in a batch or alone, on one node or a pipeline, and a draft's verified
tokens are plain decoding's. A prefill is also faster here than through the original block (measured, one process
with the runner's MKL, SmolLM2-135M q4: 13 / 128 / 512 tokens in 28 / 220 / 1210 ms against 56 / 358 / 2234).

The numbers are the kernel's for the linears and float32 for the rest, in MLX's order of operations; they differ
from the unfused layer by float rounding (tests/integration/test_fused_layer.py measures it and compares tokens).
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
from mlx import nn
from mlx_lm.models import llama
from mlx_lm.models.cache import BatchKVCache, KVCache

from services.worker.runner.model.cpu_fusion import FusedRMSNorm, FusedRoPE
from services.worker.runner.model.quantized_cpu import KernelLinear, kernels_module
from services.worker.runner.model.swap import replace_modules


_kernels = kernels_module()


_NORMS = (FusedRMSNorm, nn.RMSNorm)


def _linears(layer: Any) -> list[KernelLinear] | None:
    attn, mlp = layer.self_attn, layer.mlp
    linears = [attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj]
    if not all(type(m) is KernelLinear and "bias" not in m for m in linears):
        return None
    if len({(m.group_size, m.bits) for m in linears}) != 1:
        return None
    return linears


def fusable(layer: nn.Module) -> bool:
    """Whether `layer` is a llama block whose steps (decode, prefill, verification) this module can take over."""
    if _kernels is None or not hasattr(_kernels, "attention_in") or type(layer) is not llama.TransformerBlock:
        return False
    if getattr(layer, "use_sliding", False) or type(layer.self_attn) is not llama.Attention or type(layer.mlp) is not llama.MLP:
        return False
    norms = (layer.input_layernorm, layer.post_attention_layernorm)
    if not all(type(n) in _NORMS for n in norms) or norms[0].eps != norms[1].eps:
        return False
    rope = layer.self_attn.rope
    return type(rope) is FusedRoPE and rope._fusable and rope.dims == layer.self_attn.head_dim and _linears(layer) is not None


class FusedDecoderLayer(nn.Module):
    """A llama block whose steps run as two fused primitives (where `_takes`); any other call runs the block itself."""

    def __init__(self, layer: llama.TransformerBlock) -> None:
        super().__init__()
        self.original = layer
        attn = layer.self_attn
        linears = _linears(layer)
        assert linears is not None
        # Plain attributes, outside the module tree: the arrays are the original layer's parameters, not new ones.
        plain = {
            "_qkv": [a for m in linears[:3] for a in (m.weight, m.scales, m.biases)],
            "_rest": [a for m in linears[3:] for a in (m.weight, m.scales, m.biases)],
            "_shape": dict(n_heads=attn.n_heads, n_kv_heads=attn.n_kv_heads, head_dim=attn.head_dim,
                           group_size=linears[0].group_size, bits=linears[0].bits, eps=layer.input_layernorm.eps),
            "_traditional": attn.rope.original.traditional,
            "_scale": attn.scale,
            "fused_steps": 0,  # for tests and benchmarks: how many calls took the fused path
        }  # fmt: skip
        for name, value in plain.items():
            object.__setattr__(self, name, value)

    def __call__(self, x: mx.array, mask: mx.array | None = None, cache: Any = None) -> mx.array:
        if not self._takes(x, cache):
            return self.original(x, mask, cache)
        assert _kernels is not None
        layer, batch = self.original, x.shape[0]
        if type(cache) is BatchKVCache:  # each row from its own first valid key; its position past its padding
            positions, starts = _int32(cache.offset), _int32(cache.left_padding)
        else:  # a plain cache: every row at the same position, from its first key
            positions, starts = _plain_positions(cache.offset, batch)
        q, k, v = _kernels.attention_in(x, layer.input_layernorm.weight, self._qkv, layer.self_attn.rope._inv_freqs,
                                        positions, traditional=self._traditional, **self._shape)  # fmt: skip
        keys, values = cache.update_and_fetch(k, v)
        object.__setattr__(self, "fused_steps", self.fused_steps + 1)
        return _kernels.attention_out(x, q, keys, values, starts, self._rest, layer.post_attention_layernorm.weight,
                                      self._scale, **self._shape)  # fmt: skip

    def __getattr__(self, key: str) -> Any:
        # What the model reads off its layers (llama's make_cache: use_sliding) comes from the original block.
        try:
            return super().__getattr__(key)
        except AttributeError:
            if key != "original" and "original" in self:
                return getattr(self["original"], key)
            raise

    @staticmethod
    def _takes(x: mx.array, cache: Any) -> bool:
        if x.ndim != 3 or x.shape[1] < 1 or x.dtype != mx.float32:
            return False
        if type(cache) not in (KVCache, BatchKVCache):
            return False
        return cache.keys is None or cache.keys.dtype == mx.float32


_PLAIN: dict[tuple[int, int], tuple[mx.array, mx.array]] = {}


def _int32(a: mx.array) -> mx.array:
    return a if a.dtype == mx.int32 else a.astype(mx.int32)


def _plain_positions(offset: int, batch: int) -> tuple[mx.array, mx.array]:
    """The positions and starts of a plain cache at `offset`, made once per step and shared by the layers (all at the
    same offset): two ops a step instead of two a layer."""
    key = (offset, batch)
    if (known := _PLAIN.get(key)) is not None:
        return known
    made = (mx.full((batch,), offset, mx.int32), mx.zeros((batch,), mx.int32))
    _PLAIN.clear()  # one entry: the step in progress
    _PLAIN[key] = made
    return made


def fuse_layers(model: nn.Module) -> int:
    """Replace the model's fusable llama blocks in place; returns how many. Call after `use_cpu_kernel` and
    `fuse_for_cpu` (it takes over their modules)."""
    return replace_modules(model, lambda m: FusedDecoderLayer(m) if fusable(m) else None)  # type: ignore[arg-type]


def fused_layer_count(model: nn.Module) -> int:
    """For the runner's ready status: how many of the model's layers decode through the fused primitives."""
    return sum(isinstance(m, FusedDecoderLayer) for _, m in model.named_modules())
