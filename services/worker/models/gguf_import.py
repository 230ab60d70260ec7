"""Turn a llama-family GGUF file into an MLX model folder that `mlx_lm.load(path)` loads directly.

The folder holds config.json, model.safetensors, tokenizer.json, tokenizer_config.json and
generation_config.json. It is written into a temp dir beside the target and renamed at the end,
so a killed import never leaves a folder that looks complete.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import mlx.core as mx
import structlog
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

log = structlog.get_logger()

Progress = Callable[[str, float], None]
WEIGHT_FORMATS = ("q4", "f32")
# Every GGUF block type that mx.load keeps quantized (Q4_0, Q4_1, Q8_0) uses blocks of 32 values.
GGUF_GROUP_SIZE = 32
TEMP_PREFIX = ".tmp-import-"

_GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_BLOCK_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_BLOCK_RE = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(weight|scales|biases)$")
_GLOBAL_RE = re.compile(r"^([a-z_]+)\.(weight|scales|biases)$")

# llama.cpp pre-tokenizer names whose regex splits every digit on its own before the GPT-2 regex.
_DIGIT_SPLIT_PRE = {"smollm", "starcoder", "refact", "codeshell", "command-r"}
_TOKEN_CONTROL, _TOKEN_USER_DEFINED = 3, 4


def mlx_name(gguf_name: str) -> str:
    """Map a GGUF tensor name to the mlx-lm llama parameter name."""
    if m := _BLOCK_RE.match(gguf_name):
        layer, part, kind = m.groups()
        if part in _BLOCK_NAMES:
            return f"model.layers.{layer}.{_BLOCK_NAMES[part]}.{kind}"
    elif m := _GLOBAL_RE.match(gguf_name):
        part, kind = m.groups()
        if part in _GLOBAL_NAMES:
            return f"{_GLOBAL_NAMES[part]}.{kind}"
    raise ValueError(f"unsupported GGUF tensor {gguf_name!r} (only plain llama models are supported)")


def unpermute_rows(a: mx.array, n_heads: int) -> mx.array:
    """Undo llama.cpp's RoPE row interleave of q/k projections.

    llama.cpp's converter applies reshape(n_heads, 2, d/2, ...).swapaxes(1, 2) to the output rows;
    this is the inverse. Works on weight, scales and biases alike since only rows move.
    """
    rows = a.shape[0]
    half = rows // n_heads // 2
    return a.reshape(n_heads, half, 2, *a.shape[1:]).swapaxes(1, 2).reshape(a.shape)


def _scalar(meta: dict[str, Any], key: str, default: Any = None) -> Any:
    value = meta.get(key, default)
    if isinstance(value, mx.array):
        value = value.item()
    return value


def model_config(meta: dict[str, Any], tensor_names: set[str]) -> dict[str, Any]:
    """Build an HF/mlx-lm llama config.json from the GGUF hyper-parameters."""
    arch = _scalar(meta, "general.architecture")
    if arch != "llama":
        raise ValueError(f"unsupported GGUF architecture {arch!r}; only 'llama' is supported")
    heads = _scalar(meta, "llama.attention.head_count")
    hidden = _scalar(meta, "llama.embedding_length")
    vocab = _scalar(meta, "llama.vocab_size") or len(meta["tokenizer.ggml.tokens"])
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_act": "silu",
        "hidden_size": hidden,
        "num_hidden_layers": _scalar(meta, "llama.block_count"),
        "intermediate_size": _scalar(meta, "llama.feed_forward_length"),
        "num_attention_heads": heads,
        "num_key_value_heads": _scalar(meta, "llama.attention.head_count_kv", heads),
        "head_dim": _scalar(meta, "llama.rope.dimension_count", hidden // heads),
        # float32 in the file; print it the way the original config did (1e-05, not 9.99999e-06).
        "rms_norm_eps": float(f"{_scalar(meta, 'llama.attention.layer_norm_rms_epsilon'):.7g}"),
        "rope_theta": float(_scalar(meta, "llama.rope.freq_base", 10000.0)),
        "vocab_size": vocab,
        "max_position_embeddings": _scalar(meta, "llama.context_length"),
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "bos_token_id": _scalar(meta, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": _scalar(meta, "tokenizer.ggml.eos_token_id"),
    }
    return {k: v for k, v in config.items() if v is not None}


def _bits(weight: mx.array, scales: mx.array) -> int:
    in_dims = scales.shape[-1] * GGUF_GROUP_SIZE
    return weight.shape[-1] * 32 // in_dims


def convert_weights(
    tensors: dict[str, mx.array], config: dict[str, Any], weight_format: str
) -> tuple[dict[str, mx.array], dict[str, Any] | None]:
    """Rename, un-permute and cast; returns the MLX weights and the config "quantization" entry."""
    renamed = {mlx_name(k): v for k, v in tensors.items()}
    heads = {"q_proj": config["num_attention_heads"], "k_proj": config["num_key_value_heads"]}
    out: dict[str, mx.array] = {}
    per_layer_bits: dict[str, int] = {}
    for name, value in renamed.items():
        module, kind = name.rsplit(".", 1)
        if kind != "weight":
            continue
        group = [value] + [renamed[key] for k in ("scales", "biases") if (key := f"{module}.{k}") in renamed]
        if (proj := module.rsplit(".", 1)[-1]) in heads:
            group = [unpermute_rows(a, heads[proj]) for a in group]
        out.update(_convert_module(module, group, weight_format, per_layer_bits))
    return out, _quantization_entry(per_layer_bits)


def _convert_module(
    module: str, group: list[mx.array], weight_format: str, per_layer_bits: dict[str, int]
) -> dict[str, mx.array]:
    if len(group) == 1:  # dense tensor (norms, or layers llama.cpp left unquantized)
        return {f"{module}.weight": group[0].astype(mx.float32)}
    weight, scales, biases = group[0], group[1].astype(mx.float32), group[2].astype(mx.float32)
    bits = _bits(weight, scales)
    if weight_format == "f32":
        dense = mx.dequantize(weight, scales, biases, group_size=GGUF_GROUP_SIZE, bits=bits)
        return {f"{module}.weight": dense.astype(mx.float32)}
    per_layer_bits[module] = bits
    return {f"{module}.weight": weight, f"{module}.scales": scales, f"{module}.biases": biases}


def _quantization_entry(per_layer_bits: dict[str, int]) -> dict[str, Any] | None:
    """mlx-lm's class_predicate returns config["quantization"][path] when a module path is a key."""
    if not per_layer_bits:
        return None
    counts: dict[int, int] = {}
    for bits in per_layer_bits.values():
        counts[bits] = counts.get(bits, 0) + 1
    default_bits = max(counts, key=counts.__getitem__)
    entry: dict[str, Any] = {"group_size": GGUF_GROUP_SIZE, "bits": default_bits, "mode": "affine"}
    for module, bits in sorted(per_layer_bits.items()):
        if bits != default_bits:
            entry[module] = {"group_size": GGUF_GROUP_SIZE, "bits": bits, "mode": "affine"}
    return entry


def build_tokenizer(meta: dict[str, Any]) -> Tokenizer:
    """Byte-level BPE tokenizer from tokenizer.ggml.* metadata (the GPT-2 style 'gpt2' model)."""
    kind = _scalar(meta, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(f"unsupported GGUF tokenizer model {kind!r}; only byte-level BPE ('gpt2')")
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = _pre_tokenizer(_scalar(meta, "tokenizer.ggml.pre", "gpt2"))
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = _post_processor(meta, tokens)
    tok.add_tokens(_added_tokens(meta, tokens))
    return tok


def _pre_tokenizer(pre: str) -> pre_tokenizers.PreTokenizer:
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in _DIGIT_SPLIT_PRE:
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    if pre != "gpt2":
        log.warning("gguf_import.pre_tokenizer_fallback", pre=pre, used="gpt2")
    return byte_level


def _post_processor(meta: dict[str, Any], tokens: list[str]) -> processors.PostProcessor:
    bos_id = _scalar(meta, "tokenizer.ggml.bos_token_id")
    if _scalar(meta, "tokenizer.ggml.add_bos_token", False) and bos_id is not None:
        bos = tokens[bos_id]
        return processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
        )
    return processors.ByteLevel(trim_offsets=False)


def _added_tokens(meta: dict[str, Any], tokens: list[str]) -> list[AddedToken]:
    types = meta["tokenizer.ggml.token_type"].tolist()
    return [
        AddedToken(tokens[i], special=t == _TOKEN_CONTROL, normalized=False)
        for i, t in enumerate(types)
        if t in (_TOKEN_CONTROL, _TOKEN_USER_DEFINED)
    ]


def tokenizer_config(meta: dict[str, Any]) -> dict[str, Any]:
    tokens = meta["tokenizer.ggml.tokens"]

    def token(key: str) -> str | None:
        idx = _scalar(meta, f"tokenizer.ggml.{key}_token_id")
        return tokens[idx] if idx is not None else None

    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token("bos"),
        "eos_token": token("eos"),
        "pad_token": token("padding"),
        "unk_token": token("unknown"),
        "chat_template": _scalar(meta, "tokenizer.chat_template"),
        "model_max_length": _scalar(meta, "llama.context_length"),
        "add_bos_token": bool(_scalar(meta, "tokenizer.ggml.add_bos_token", False)),
        # Keeps decode(encode(x)) == x; transformers would otherwise rewrite " ." to ".".
        "clean_up_tokenization_spaces": False,
    }
    return {k: v for k, v in config.items() if v is not None}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_tokenizer(meta: dict[str, Any], folder: Path) -> None:
    build_tokenizer(meta).save(str(folder / "tokenizer.json"))
    _write_json(folder / "tokenizer_config.json", tokenizer_config(meta))
    generation = {
        "bos_token_id": _scalar(meta, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": _scalar(meta, "tokenizer.ggml.eos_token_id"),
        "pad_token_id": _scalar(meta, "tokenizer.ggml.padding_token_id"),
    }
    _write_json(folder / "generation_config.json", {k: v for k, v in generation.items() if v is not None})


def temp_dir_for(out_dir: Path) -> Path:
    return out_dir.parent / f"{TEMP_PREFIX}{out_dir.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def convert_gguf(
    gguf_path: Path,
    out_dir: Path,
    *,
    weight_format: str = "q4",
    progress: Progress | None = None,
) -> Path:
    """Convert `gguf_path` into an MLX folder at `out_dir` (replaced if present); returns out_dir.

    Callers that may run concurrently must serialise on their own lock (ModelStore does).
    """
    if weight_format not in WEIGHT_FORMATS:
        raise ValueError(f"weight_format must be one of {WEIGHT_FORMATS}, not {weight_format!r}")
    report = progress or (lambda stage, fraction: None)
    started = time.monotonic()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir_for(out_dir)
    tmp.mkdir()
    try:
        _convert_into(Path(gguf_path), tmp, weight_format, report)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report("done", 1.0)
    seconds = round(time.monotonic() - started, 2)
    log.info("gguf_import.done", out=str(out_dir), format=weight_format, seconds=seconds)
    return out_dir


def _convert_into(gguf_path: Path, folder: Path, weight_format: str, report: Progress) -> None:
    report("read", 0.0)
    loaded = mx.load(str(gguf_path), return_metadata=True)  # with metadata: (arrays, metadata)
    tensors, meta = cast("tuple[dict[str, mx.array], dict[str, Any]]", loaded)
    config = model_config(meta, set(tensors))
    report("convert", 0.2)
    weights, quantization = convert_weights(tensors, config, weight_format)
    if quantization is not None:
        config["quantization"] = quantization
        config["quantization_config"] = quantization
    report("write_weights", 0.5)
    mx.save_safetensors(str(folder / "model.safetensors"), weights, metadata={"format": "mlx"})
    report("tokenizer", 0.9)
    _write_tokenizer(meta, folder)
    _write_json(folder / "config.json", config)
