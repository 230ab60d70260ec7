"""What an instance holds of each node's memory, and what is left for the next one. Pure.

A node holding k layers of a model needs its weights (k * bytes_per_layer, the embedding and head spread over
the layers) plus room for the KV cache, activations and the runtime. That room is MEMORY_HEADROOM (a quarter of
the weights), or, when the request declares the context and batch it will serve, the KV cache they need if that
is more. The KV cache is not reserved for the model's whole context times the runner's batch by default: mlx-lm
grows it with the tokens in use, and that worst case (1.5 GB for SmolLM2 at 8192 tokens x 8, 43 GB per sequence
for Llama 3.3 70B at 131072) would refuse what runs fine.

Each placed instance records what it reserved per node (Instance.memory_per_node); what a node can give the
next instance is its budget (--memory, else its measured free memory) less what the instances there hold.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import msgspec

from shared.commands import NodeMemory
from shared.events import Instance, ShardAssignment
from shared.facts import NodeFacts
from shared.models import ModelCard, UnknownModel, get_card
from shared.state import ClusterState

MEMORY_HEADROOM = 1.25
# float16/bfloat16, as mlx-lm keeps the cache of a half-precision model; a float32 model's cache is twice this.
KV_BYTES_PER_VALUE = 2


def kv_bytes_per_token(card: ModelCard) -> int:
    """Keys and values of every layer for one token: 2 x layers x KV heads x head dim x bytes per value."""
    head_dim = card.hidden_size // card.n_heads
    return 2 * card.n_layers * card.n_kv_heads * head_dim * KV_BYTES_PER_VALUE


def kv_cache_bytes(card: ModelCard, context_tokens: int, batch: int) -> int:
    return kv_bytes_per_token(card) * min(context_tokens, card.context_length) * batch


def sized_card(card: ModelCard, kv_bytes: int = 0) -> ModelCard:
    """The card as placement sizes it: storage such that storage x MEMORY_HEADROOM covers the weights and the
    larger of the headroom and `kv_bytes` (every rule below then needs no KV term of its own)."""
    if kv_bytes <= card.storage_bytes * (MEMORY_HEADROOM - 1):
        return card
    return msgspec.structs.replace(card, storage_bytes=int((card.storage_bytes + kv_bytes) / MEMORY_HEADROOM) + 1)


def request_kv_bytes(card: ModelCard, context_tokens: int | None, max_batch: int | None) -> int:
    """The KV cache a request declares it will use (0 when it declares neither its context nor its batch)."""
    if context_tokens is None and max_batch is None:
        return 0
    return kv_cache_bytes(card, context_tokens or card.context_length, max_batch or 1)


def layer_bytes_needed(card: ModelCard, layers: int) -> int:
    return int(card.bytes_per_layer() * layers * MEMORY_HEADROOM)


def tensor_bytes_needed(card: ModelCard, n: int) -> int:
    return layer_bytes_needed(card, card.n_layers) // n


def layer_capacity(card: ModelCard, memory: int) -> int:
    """The most layers a node with `memory` bytes may hold (0 when not even one fits)."""
    per = card.bytes_per_layer() * MEMORY_HEADROOM
    if per <= 0:
        return card.n_layers
    cap = min(card.n_layers, int(memory // per))
    while cap < card.n_layers and layer_bytes_needed(card, cap + 1) <= memory:
        cap += 1
    while cap > 0 and layer_bytes_needed(card, cap) > memory:
        cap -= 1
    return cap


def plan_memory(card: ModelCard, strategy: str, shards: Iterable[ShardAssignment]) -> dict[str, int]:
    """Bytes each node of a plan needs (weights with headroom)."""
    shards = list(shards)
    if strategy == "tensor":
        return {s.node_id: tensor_bytes_needed(card, len(shards)) for s in shards}
    return {s.node_id: layer_bytes_needed(card, s.end_layer - s.start_layer) for s in shards}


def instance_memory(instance: Instance, recorded: Mapping[str, ModelCard] | None = None) -> dict[str, int]:
    """What an instance holds per node: as recorded when it was placed, else (placed before instances recorded
    it) what its model card says; an unknown model holds nothing we can tell."""
    if instance.memory_per_node:
        return dict(instance.memory_per_node)
    try:
        card = get_card(instance.model_id, recorded)
    except UnknownModel:
        return {}
    return plan_memory(card, instance.strategy, instance.shards)


def node_memory(state: ClusterState, nodes: Iterable[NodeFacts]) -> list[NodeMemory]:
    held_by: dict[str, dict[str, int]] = {}
    for instance in state.instances.values():
        for node_id, need in instance_memory(instance, state.models).items():
            held_by.setdefault(node_id, {})[instance.instance_id] = need
    out = []
    for node in nodes:
        total = node.placeable_memory()
        held = sum(held_by.get(node.node_id, {}).values())
        out.append(NodeMemory(node.node_id, total, held, max(0, total - held), held_by.get(node.node_id, {})))
    return out


def with_free_memory(state: ClusterState, nodes: Iterable[NodeFacts]) -> list[NodeFacts]:
    """The nodes as the next placement sees them: each one's budget is what placed instances left of it."""
    nodes = list(nodes)
    free = {m.node_id: m.free for m in node_memory(state, nodes)}
    return [msgspec.structs.replace(n, memory_budget=free[n.node_id]) for n in nodes]


def describe(memory: Iterable[NodeMemory]) -> str:
    """'a 70.0 MB: 61.5 MB held, 8.5 MB free; b ...' for a refusal."""
    return "; ".join(f"{m.node_id} {_mb(m.total)}: {_mb(m.held)} held, {_mb(m.free)} free" for m in memory)


def _mb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"
