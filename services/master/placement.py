"""Placement: (cluster state, request, model card) -> an instance plan, or the reason none fits. Pure."""

from __future__ import annotations

import msgspec

from shared.commands import PlaceInstance
from shared.events import Instance, ShardAssignment
from shared.facts import NodeFacts
from shared.models import ModelCard
from shared.state import ClusterState

# Room for the KV cache, activations and the runtime beside the weights.
MEMORY_HEADROOM = 1.25


class NoPlacement(msgspec.Struct, frozen=True):
    reason: str


def worker_nodes(state: ClusterState) -> list[NodeFacts]:
    nodes = [n for n in state.nodes.values() if "worker" in n.roles]
    return sorted(nodes, key=lambda n: (-n.placeable_memory(), n.node_id))


def allocate_layers_proportionally(n_layers: int, weights: list[int]) -> list[int]:
    """Split n_layers in proportion to weights, every part at least one layer (largest remainder)."""
    if n_layers < len(weights):
        raise ValueError(f"{n_layers} layers cannot give {len(weights)} nodes one layer each")
    total = sum(weights)
    spare = n_layers - len(weights)
    exact = [spare * w / total for w in weights]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in by_remainder[: spare - sum(counts)]:
        counts[i] += 1
    return [c + 1 for c in counts]


def layer_bytes_needed(card: ModelCard, layers: int) -> int:
    return int(card.bytes_per_layer() * layers * MEMORY_HEADROOM)


def pipeline_plan(card: ModelCard, nodes: list[NodeFacts]) -> list[ShardAssignment] | str:
    counts = allocate_layers_proportionally(card.n_layers, [n.placeable_memory() for n in nodes])
    shards, start = [], 0
    for rank, (node, count) in enumerate(zip(nodes, counts)):
        need = layer_bytes_needed(card, count)
        if need > node.placeable_memory():
            return f"{node.node_id} would hold {count} layers ({_gb(need)}) but has {_gb(node.placeable_memory())}"
        shards.append(ShardAssignment(node.node_id, rank, start, start + count))
        start += count
    return shards


def tensor_plan(card: ModelCard, nodes: list[NodeFacts]) -> list[ShardAssignment] | str:
    n = len(nodes)
    if card.n_heads % n or card.n_kv_heads % n:
        return f"{card.n_heads} heads / {card.n_kv_heads} KV heads do not divide by {n} nodes"
    need = layer_bytes_needed(card, card.n_layers) // n
    for node in nodes:
        if need > node.placeable_memory():
            return f"{node.node_id} would hold 1/{n} of the model ({_gb(need)}) but has {_gb(node.placeable_memory())}"
    return [ShardAssignment(node.node_id, rank, 0, card.n_layers) for rank, node in enumerate(nodes)]


def choose_backend(request: PlaceInstance, nodes: list[NodeFacts]) -> str | NoPlacement:
    all_rdma = len(nodes) > 1 and all(n.rdma and "jaccl" in n.backends for n in nodes)
    if request.backend == "jaccl" and not all_rdma:
        return NoPlacement("jaccl needs RDMA on every node of the instance")
    return "jaccl" if request.backend != "ring" and all_rdma else "ring"


def place(state: ClusterState, request: PlaceInstance, card: ModelCard, instance_id: str) -> Instance | NoPlacement:
    candidates = worker_nodes(state)
    if not candidates:
        return NoPlacement("no node with a worker has joined the cluster")
    strategies = ["pipeline", "tensor"] if request.strategy == "auto" else [request.strategy]
    reasons: list[str] = []
    for n in range(max(1, request.min_nodes), len(candidates) + 1):
        nodes = candidates[:n]
        for strategy in strategies:
            plan = pipeline_plan(card, nodes) if strategy == "pipeline" else tensor_plan(card, nodes)
            if isinstance(plan, str):
                reasons.append(f"{strategy} on {n} node(s): {plan}")
                continue
            backend = choose_backend(request, nodes)
            if isinstance(backend, NoPlacement):
                reasons.append(f"{strategy} on {n} node(s): {backend.reason}")
                continue
            return Instance(instance_id, card.model_id, strategy, backend, tuple(plan))  # type: ignore[arg-type]
    if request.min_nodes > len(candidates):
        reasons.append(f"min_nodes={request.min_nodes} but only {len(candidates)} worker node(s) joined")
    return NoPlacement(f"{card.model_id} does not fit: " + "; ".join(reasons))


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"
