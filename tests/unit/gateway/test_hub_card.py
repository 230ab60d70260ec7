"""Cards derived from a repo's config.json and file sizes (services/gateway/hub_card.py; pure)."""

from __future__ import annotations

import pytest

from services.gateway.hub_card import CardProblem, card_from_config, looks_like_hub_id
from shared.models import HubRepo, ModelCard

# config.json of mlx-community/Qwen2.5-0.5B-Instruct-4bit, as published (the fields a card reads)
QWEN_4BIT = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 896, "num_hidden_layers": 24,
    "num_attention_heads": 14, "num_key_value_heads": 2, "max_position_embeddings": 32768,
    "quantization": {"group_size": 64, "bits": 4}, "tie_word_embeddings": True,
}  # fmt: skip
QWEN_FILES = {"config.json": 800, "model.safetensors": 278_064_920, "tokenizer.json": 7_031_645, "README.md": 900}
SUPPORTED = {"llama", "qwen2", "mixtral", "deepseek_v3", "qwen3_moe"}.__contains__


def derive(config: dict, files: dict[str, int] = QWEN_FILES, repo: str = "mlx-community/Qwen2.5-0.5B-Instruct-4bit"):
    return card_from_config(repo, HubRepo(repo), config, files, SUPPORTED)


def test_a_published_mlx_config_gives_its_card():
    card = derive(QWEN_4BIT)
    assert isinstance(card, ModelCard)
    assert (card.n_layers, card.hidden_size, card.n_heads, card.n_kv_heads) == (24, 896, 14, 2)
    assert (card.context_length, card.architecture, card.quantization) == (32768, "qwen2", "4-bit, group 64")
    assert card.storage_bytes == 278_064_920  # the weights only, not the tokenizer or README
    assert card.files == {"model.safetensors": 278_064_920}
    assert card.source == HubRepo("mlx-community/Qwen2.5-0.5B-Instruct-4bit")


def test_sharded_weights_are_summed_and_listed():
    files = {"model-00001-of-00002.safetensors": 5_000, "model-00002-of-00002.safetensors": 3_000,
             "model.safetensors.index.json": 100, "consolidated.safetensors": 8_000}  # fmt: skip
    card = derive(QWEN_4BIT, files)
    assert isinstance(card, ModelCard)
    assert card.storage_bytes == 8_000  # consolidated.safetensors: not a file mlx-lm loads
    assert sorted(card.files) == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]


def test_kv_heads_default_to_heads_and_text_config_is_read():
    config = {"model_type": "llava", "text_config": {"model_type": "llama", "hidden_size": 64,
              "num_hidden_layers": 2, "num_attention_heads": 4}}  # fmt: skip
    card = derive(config)
    assert isinstance(card, ModelCard)
    assert (card.architecture, card.n_kv_heads, card.context_length, card.quantization) == ("llama", 4, 4096, "")


@pytest.mark.parametrize(
    ("config", "files", "reason"),
    [
        ({"model_type": "bert", "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 1}, QWEN_FILES,
         "architecture 'bert' is not one mlx-lm can load"),
        ({"hidden_size": 8}, QWEN_FILES, "config.json names no model_type"),
        (QWEN_4BIT, {"config.json": 1, "pytorch_model.bin": 10}, "no model*.safetensors weights"),
        ({**QWEN_4BIT, "quantization": None, "quantization_config": {"quant_method": "gptq", "bits": 4}}, QWEN_FILES,
         "weights quantized with gptq, which mlx-lm cannot load"),
        ({"model_type": "llama", "hidden_size": 8}, QWEN_FILES, "config.json lacks num_hidden_layers"),
    ],
)  # fmt: skip
def test_what_mlx_lm_cannot_load_is_refused_with_the_reason(config, files, reason):
    problem = derive(config, files)
    assert isinstance(problem, CardProblem) and problem.kind == "unsupported"
    assert problem.reason.startswith(reason)


@pytest.mark.parametrize(
    ("name", "ok"),
    [("mlx-community/Qwen2.5-0.5B-Instruct-4bit", True), ("org/name", True), ("smollm2-135m", False),
     ("a/b/c", False), ("../etc", False), ("org/..", False), ("/abs/path", False)],
)  # fmt: skip
def test_hub_ids_are_told_from_other_names(name, ok):
    assert looks_like_hub_id(name) is ok
