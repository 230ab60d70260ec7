"""Which files of a hub repo a node fetches, and what it must have free for them. Pure."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

# What the runner reads besides the weights: config, tokenizer (json, sentencepiece, tiktoken, vocab/merges
# text), chat template. Nothing else of a repo (other formats' weights, images, READMEs) is fetched.
METADATA_PATTERNS = ("*.json", "*.model", "*.tiktoken", "*.txt", "*.jinja")
INDEX_FILE = "model.safetensors.index.json"
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def tensor_layer(name: str) -> int | None:
    found = _LAYER.search(name)
    return int(found.group(1)) if found else None


def files_for_layers(weight_map: Mapping[str, str], start_layer: int, end_layer: int) -> list[str]:
    """The weight files holding tensors of layers [start, end) and every tensor outside the layers (embedding,
    final norm, head: each rank may need them, e.g. for tied embeddings or the split vocabulary)."""
    wanted: set[str] = set()
    for tensor, file in weight_map.items():
        layer = tensor_layer(tensor)
        if layer is None or start_layer <= layer < end_layer:
            wanted.add(file)
    return sorted(wanted)


def disk_problem(repo_id: str, need_bytes: int, free_bytes: int, where: str) -> str | None:
    if need_bytes <= free_bytes:
        return None
    return (f"not enough disk space for {repo_id}: {_gb(need_bytes)} to download, {_gb(free_bytes)} free in "
            f"{where} (free some, or set HF_HOME to a larger disk)")  # fmt: skip


def eta_seconds(done: int, total: int, bytes_per_s: float) -> float | None:
    if bytes_per_s <= 0 or done >= total:
        return None if done < total else 0.0
    return round((total - done) / bytes_per_s, 1)


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 10**8 else f"{n / 1e6:.1f} MB"


def holds_every_weight_file(folder: Path) -> bool:
    """False for a pipeline node's partial snapshot (only its layers' files): the runner then loads without
    mlx-lm's strict check, and the layers it drops are the ones whose files it lacks."""
    index = folder / INDEX_FILE
    if not index.is_file():
        return True
    names = set(json.loads(index.read_text()).get("weight_map", {}).values())
    return all((folder / name).is_file() for name in names)
