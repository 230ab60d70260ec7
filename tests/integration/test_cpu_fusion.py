"""Fused norms and RoPEs for CPU models (services/worker/runner/model/cpu_fusion.py), on the real SmolLM2: the same
tokens and logits (to rounding) as mlx-lm's modules, far fewer graph ops per decode step."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import mlx.core as mx
import pytest
from mlx import nn
from mlx.utils import tree_flatten
from mlx_lm.models.cache import make_prompt_cache

from services.worker.runner.model.cpu_fusion import (
    FusedRMSNorm,
    FusedRoPE,
    fuse_for_cpu,
    wanted,
)
from tests.integration import model_steps
from tests.shared_models import SharedModels

PROMPT = [1, 504, 3458, 282, 4649, 314, 253, 1789, 30, 198] * 3


@pytest.fixture(scope="module")
def model_path(shared_models: SharedModels) -> Path:
    return shared_models.path("f32")


def load(path: Path, fused: bool) -> nn.Module:
    from mlx_lm.utils import load_model

    model, _ = load_model(path)
    if fused:
        fuse_for_cpu(model)
    return model


def greedy(model: nn.Module, steps: int, prompt: list[int] = PROMPT) -> tuple[list[int], list[mx.array]]:
    return model_steps.greedy(model, steps, prompt)


def op_count(model: nn.Module, tmp: Path) -> int:
    cache = make_prompt_cache(model)
    mx.eval(model(mx.array([PROMPT]), cache=cache))
    mx.export_to_dot(str(tmp / "step.dot"), model(mx.array([[42]]), cache=cache))
    return len(re.findall(r'label ="[A-Za-z]', (tmp / "step.dot").read_text()))


def test_every_norm_and_rope_is_replaced_and_the_parameters_stay(model_path: Path) -> None:
    plain, fused = load(model_path, False), load(model_path, True)
    modules = [m for _, m in fused.named_modules()]
    assert sum(isinstance(m, FusedRMSNorm) for m in modules) == 61  # 2 per layer + the final norm
    assert sum(isinstance(m, FusedRoPE) for m in modules) == 30
    assert not any(type(m) is nn.RMSNorm for m in modules)
    before, after = dict(tree_flatten(plain.parameters())), dict(tree_flatten(fused.parameters()))
    assert sorted(before) == sorted(after)
    assert all(mx.array_equal(before[k], after[k]).item() for k in before)


def test_same_greedy_tokens_and_logits_to_rounding(model_path: Path) -> None:
    plain_tokens, plain_rows = greedy(load(model_path, False), 48)
    fused_tokens, fused_rows = greedy(load(model_path, True), 48)
    assert fused_tokens == plain_tokens
    for a, b in zip(plain_rows, fused_rows):
        assert mx.allclose(a, b, rtol=1e-4, atol=1e-4).item()


@pytest.mark.skipif(shutil.which("g++") is None, reason="MLX compiles CPU kernels with g++; without it nothing is fused")
def test_a_decode_step_has_far_fewer_ops(model_path: Path, tmp_path: Path) -> None:
    plain, fused = op_count(load(model_path, False), tmp_path), op_count(load(model_path, True), tmp_path)
    assert fused < plain * 0.7, (plain, fused)


def test_prefill_keeps_the_unfused_rope_bit_for_bit() -> None:
    rope = nn.RoPE(64, base=100000)
    fused = FusedRoPE(rope)
    x = mx.random.normal((1, 9, 5, 64), key=mx.random.key(0))
    assert mx.array_equal(fused(x, offset=7), rope(x, offset=7)).item()
    one = x[:, :, :1, :]
    assert mx.allclose(fused(one, offset=7), rope(one, offset=7), atol=1e-6).item()
    offsets = mx.array([3, 9], dtype=mx.int32)  # a batch cache gives one offset per sequence
    two = mx.random.normal((2, 9, 1, 64), key=mx.random.key(1))
    assert mx.allclose(fused(two, offset=offsets), rope(two, offset=offsets), atol=1e-6).item()



@pytest.mark.parametrize("traditional", [False, True])
def test_the_decode_rope_gives_the_compiled_fast_rope_bit_for_bit(traditional: bool) -> None:
    rope = nn.RoPE(64, traditional=traditional, base=100000)
    fused = FusedRoPE(rope)
    compiled = mx.compile(lambda x, o: mx.fast.rope(x, 64, traditional=traditional, base=100000, scale=1.0, offset=o))
    offsets = mx.array([0, 1, 517, 8191], dtype=mx.int32)
    x = mx.random.normal((4, 9, 1, 64), key=mx.random.key(2))
    assert mx.array_equal(fused(x, offset=offsets), compiled(x, offsets)).item()
    assert mx.array_equal(fused(x[:1], offset=33), compiled(x[:1], mx.array(33, dtype=mx.int32))).item()

def test_the_switch() -> None:
    assert wanted() is (mx.default_device() == mx.cpu)
    assert wanted("off") is False
    with pytest.raises(ValueError, match="EXO_CPU_FUSION"):
        wanted("maybe")


def test_a_llama3_rope_model_gives_the_same_tokens() -> None:
    """Llama 3's scaled RoPE (mlx-lm's Llama3RoPE, frequencies instead of a base), in a small random model."""
    from mlx_lm.models.llama import Model, ModelArgs
    from mlx_lm.models.rope_utils import Llama3RoPE

    args = ModelArgs(
        model_type="llama", hidden_size=64, num_hidden_layers=2, intermediate_size=128, num_attention_heads=4,
        rms_norm_eps=1e-5, vocab_size=256, num_key_value_heads=2, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8192},
    )  # fmt: skip
    mx.random.seed(3)
    model = Model(args)
    mx.eval(model.parameters())
    assert isinstance(model.model.layers[0].self_attn.rope, Llama3RoPE)

    plain_tokens, plain_rows = greedy(model, 24, [5, 17, 42, 99, 3])
    assert fuse_for_cpu(model) == 5 + 2  # 2 norms per layer + the final one; one RoPE per layer
    assert isinstance(model.model.layers[0].self_attn.rope, FusedRoPE)
    fused_tokens, fused_rows = greedy(model, 24, [5, 17, 42, 99, 3])
    assert fused_tokens == plain_tokens
    for a, b in zip(plain_rows, fused_rows):
        assert mx.allclose(a, b, rtol=1e-4, atol=1e-5).item()


def test_a_bad_switch_fails_before_any_weight_is_read(tmp_path: Path) -> None:
    from services.worker.runner.model.sharding import load_shard

    with pytest.raises(ValueError, match="EXO_CPU_FUSION must be on or off"):
        load_shard(tmp_path / "no-model-here", "single", cpu_fusion="maybe")
