"""What the runner checks before it cuts a model by tensor (services/worker/runner/model/tensor.py): family,
heads, widths and quantization groups, on small mlx-lm models built in memory (no weights read, no ranks)."""

import pytest

from services.worker.runner.model.tensor import tensor_problem


def _model(config: dict):  # noqa: ANN202
    from mlx_lm.utils import _get_classes

    model_class, args_class = _get_classes(config)
    return model_class(args_class.from_dict(config))


BASE = {"vocab_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
        "hidden_size": 64, "intermediate_size": 96, "rms_norm_eps": 1e-5}  # fmt: skip


def test_an_expert_width_that_does_not_divide_is_named():
    mixtral = _model({**BASE, "model_type": "mixtral", "num_local_experts": 4, "intermediate_size": 30, "num_key_value_heads": 4})
    assert tensor_problem(mixtral, 2) is None
    problem = tensor_problem(mixtral, 4)
    assert problem is not None and "layer 0 block_sparse_moe.switch_mlp.gate_proj: 30 output columns do not divide by 4" in problem
    assert "(and " in problem  # every layer has the same problem: the first three are listed


def test_heads_come_first_and_unknown_families_are_refused():
    llama = _model({**BASE, "model_type": "llama", "num_attention_heads": 6, "num_key_value_heads": 6, "hidden_size": 48})
    assert "6 attention heads, 6 KV heads do not divide by 4" in (tensor_problem(llama, 4) or "")
    gemma = _model({**BASE, "model_type": "gemma", "head_dim": 16})
    assert "'gemma'" in (tensor_problem(gemma, 2) or "")


def test_a_quantized_input_width_must_stay_whole_groups():
    import mlx.nn as nn

    llama = _model({**BASE, "model_type": "llama", "intermediate_size": 128})
    nn.quantize(llama, group_size=32, bits=4)
    assert tensor_problem(llama, 2) is None  # o_proj's 64 inputs / 2 ranks: one group each
    problem = tensor_problem(llama, 4)  # 16 inputs per rank: half a group
    assert problem is not None and "input width 64 / 4 ranks is not a multiple of the quantization group size 32" in problem


@pytest.mark.parametrize("family", ["qwen2", "qwen3_moe", "deepseek_v3"])
def test_seed_families_split_in_two(family):
    extra = {
        "qwen2": {},
        "qwen3_moe": {"num_experts": 4, "num_experts_per_tok": 2, "decoder_sparse_step": 1, "mlp_only_layers": [],
                      "moe_intermediate_size": 32, "head_dim": 16, "rope_theta": 1e6, "tie_word_embeddings": False,
                      "max_position_embeddings": 512, "norm_topk_prob": True},
        "deepseek_v3": {"n_routed_experts": 4, "n_shared_experts": 1, "moe_intermediate_size": 32, "kv_lora_rank": 32,
                        "q_lora_rank": 32, "qk_rope_head_dim": 8, "v_head_dim": 16, "qk_nope_head_dim": 16},
    }[family]  # fmt: skip
    assert tensor_problem(_model({**BASE, "model_type": family, **extra}), 2) is None
