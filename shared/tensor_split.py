"""Which model families tensor parallel can split, and over how many ranks: the promise placement makes and the
runner keeps (services/worker/runner/model/tensor.py). Pure, on plain values from a model card or config.json.

Every family splits the attention by heads; the MLP and the experts' widths by columns (mlx-lm's own
`Model.shard`: every rank holds a slice of every expert, the router stays whole). Grouped-query families also
split their KV heads. DeepSeek's MLA caches one latent shared by all heads, so only its query heads count.
"""

from __future__ import annotations

# config.json "model_type" -> the family whose mlx-lm module (and shard rule) it uses.
FAMILY_OF = {
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "qwen2",
    "mixtral": "mixtral",
    "deepseek_v3": "deepseek_v3",
    "qwen3_moe": "qwen3_moe",
}
SHARED_LATENT_KV = frozenset({"deepseek_v3"})  # MLA: the KV cache is not per head


def tensor_family(model_type: str) -> str | None:
    return FAMILY_OF.get(model_type)


def tensor_split_problem(model_type: str, n_heads: int, n_kv_heads: int, world_size: int) -> str | None:
    """Why a model of this family and these heads cannot be split by tensor over `world_size` ranks, or None."""
    if world_size < 1:
        return f"world size {world_size} < 1"
    family = tensor_family(model_type)
    if family is None:
        known = ", ".join(sorted(set(FAMILY_OF.values())))
        return f"tensor parallel supports the families {known}, not {model_type!r}"
    if world_size == 1:
        return None
    problems = [] if n_heads % world_size == 0 else [f"{n_heads} attention heads"]
    if family not in SHARED_LATENT_KV and n_kv_heads % world_size:
        problems.append(f"{n_kv_heads} KV heads")
    if problems:
        return f"tensor parallel over {world_size} ranks needs divisible heads: {', '.join(problems)} do not divide by {world_size}"
    return None


def tensor_ways(model_type: str, n_heads: int, n_kv_heads: int, max_ranks: int) -> list[int]:
    """Every rank count from 2 up to `max_ranks` that this model can be split by tensor over."""
    return [n for n in range(2, max_ranks + 1) if tensor_split_problem(model_type, n_heads, n_kv_heads, n) is None]
