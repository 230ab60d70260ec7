"""A model card derived from a repo's (or folder's) config.json and file sizes. Pure: the caller reads them."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from shared.models import HubRepo, LocalFolder, ModelCard, ToolCallFormat

# mlx-lm reads only these (mlx_lm.utils.load_model globs model*.safetensors)
_WEIGHTS = re.compile(r"^model.*\.safetensors$")
# transformers-format quantizations mlx-lm cannot load
_FOREIGN_QUANT = ("gptq", "awq", "bitsandbytes", "aqlm", "hqq", "eetq", "compressed-tensors", "gguf")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
# the markers each format's template writes, most specific first (Qwen3-Coder's `<tool_call>` holds a `<function=`)
_TOOL_MARKERS: tuple[tuple[ToolCallFormat, tuple[str, ...]], ...] = (
    ("qwen3_coder", ("<tool_call>\n<function=", "<tool_call>\\n<function=")),
    ("hermes", ("<tool_call>",)),
    ("mistral", ("[TOOL_CALLS]",)),
    ("deepseek_v3", ("<｜tool▁calls▁begin｜>", "<｜tool▁call▁begin｜>")),
    ("llama3_json", ("<|python_tag|>", "<|start_header_id|>ipython<|end_header_id|>")),
    ("pythonic", ("<|tool_call_start|>", "<|tool_list_start|>")),
)
_TAKES_TOOLS = re.compile(r"\{[{%]-?[^}]*\btools\b")  # `{%- if tools %}`, `{{ tools | tojson }}`
DEFAULT_CONTEXT = 4096  # a config that names no context length (rare): what placement reserves KV cache for


class CardProblem(msgspec.Struct, frozen=True):
    """Why no card: `kind` picks the HTTP answer (unsupported: 400)."""

    kind: str
    reason: str


def looks_like_hub_id(name: str) -> bool:
    return bool(_HUB_ID.match(name)) and ".." not in name


def weight_files(file_sizes: Mapping[str, int]) -> dict[str, int]:
    return {name: size for name, size in sorted(file_sizes.items()) if "/" not in name and _WEIGHTS.match(name)}


def _first(config: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        if config.get(key) is not None:
            return config[key]
    return None


def quantization_of(config: Mapping[str, Any]) -> str | CardProblem:
    mlx = config.get("quantization")
    if isinstance(mlx, dict) and "bits" in mlx:
        return f"{mlx['bits']}-bit, group {mlx.get('group_size', 64)}"
    foreign = config.get("quantization_config")
    if isinstance(foreign, dict):
        method = str(foreign.get("quant_method", "")).lower()
        if method in _FOREIGN_QUANT:
            return CardProblem("unsupported", f"weights quantized with {method}, which mlx-lm cannot load")
        if "bits" in foreign:
            return f"{foreign['bits']}-bit"
    return ""


def chat_template_of(tokenizer_config: Mapping[str, Any], template_file: str | None = None) -> str:
    """The template text: `chat_template.jinja` wins (transformers writes it apart now); a list of named
    templates (`default`, `tool_use`) counts whole."""
    if template_file:
        return template_file
    template = tokenizer_config.get("chat_template")
    if isinstance(template, list):
        return "\n".join(str(t.get("template", "")) for t in template if isinstance(t, dict))
    return template if isinstance(template, str) else ""


def tool_call_format(template: str) -> ToolCallFormat:
    for name, markers in _TOOL_MARKERS:
        if any(marker in template for marker in markers):
            return name
    return "other" if _TAKES_TOOLS.search(template) else "none"


def card_from_config(
    model_id: str,
    source: HubRepo | LocalFolder,
    config: Mapping[str, Any],
    file_sizes: Mapping[str, int],
    supported: Callable[[str], bool],
    chat_template: str = "",
) -> ModelCard | CardProblem:
    """`file_sizes`: every file of the repo (path -> bytes); `supported(model_type)`: mlx-lm has that module;
    `chat_template`: its text (chat_template_of), "" when it has none."""
    text = {**config, **config["text_config"]} if isinstance(config.get("text_config"), dict) else config
    model_type = text.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        return CardProblem("unsupported", "config.json names no model_type")
    if not supported(model_type):
        return CardProblem("unsupported", f"architecture {model_type!r} is not one mlx-lm can load")
    weights = weight_files(file_sizes)
    if not weights:
        return CardProblem("unsupported", "no model*.safetensors weights (mlx-lm loads only safetensors)")
    quantization = quantization_of(text)
    if isinstance(quantization, CardProblem):
        return quantization
    n_layers = _first(text, "num_hidden_layers", "n_layers", "n_layer", "num_layers")
    hidden = _first(text, "hidden_size", "d_model", "n_embd", "dim")
    heads = _first(text, "num_attention_heads", "n_heads", "n_head")
    if not all(isinstance(v, int) and v > 0 for v in (n_layers, hidden, heads)):
        return CardProblem("unsupported", "config.json lacks num_hidden_layers, hidden_size or num_attention_heads")
    kv_heads = _first(text, "num_key_value_heads", "n_kv_heads", "num_kv_heads") or heads
    context = _first(text, "max_position_embeddings", "max_seq_len", "n_positions", "seq_length") or DEFAULT_CONTEXT
    return ModelCard(
        model_id=model_id,
        display_name=model_id,
        source=source,
        n_layers=n_layers,
        hidden_size=hidden,
        n_heads=heads,
        n_kv_heads=int(kv_heads),
        context_length=int(context),
        storage_bytes=sum(weights.values()),
        architecture=model_type,
        quantization=quantization,
        files=weights,
        tool_call_format=tool_call_format(chat_template),
    )
