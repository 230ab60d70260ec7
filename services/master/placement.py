"""Placement: (cluster state, request, model card) -> an instance plan, or the reason none fits. Pure.

Rules (issue 4):
  - pipeline: layers split in proportion to each node's memory, every node at least one layer, and no
    node's share above its budget (the split is capped per node, so a node that the plain proportional
    split would overfill gives its extra layers to nodes with room);
  - tensor: only for the families the runner can split by tensor, and when their heads divide by the node
    count (shared/tensor_split.py); every node holds 1/n of the model;
  - the fewest nodes that fit (from `min_nodes` up); pipeline before tensor at the same node count when
    the request says `auto`;
  - among the node sets of that size that fit, the one with the fastest links when link latencies are
    known (`link_latency`), ranks ordered along the ring; else the nodes with the most memory;
  - jaccl only when every node of the instance reports RDMA (and the jaccl backend); ring otherwise.

`preview` lists every combination (strategy x backend x node count) with its plan and the memory per
node, or the reason it is infeasible. The gateway shows it.

Memory (services/master/memory_budget.py): each node gives the next instance what is left of its budget after
the instances placed on it; a plan reserves weights plus headroom (or the KV cache the request declares).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from typing import Literal

import msgspec

from shared.commands import NodeMemory, PlaceInstance, PlanPreview
from shared.events import Instance, ShardAssignment
from shared.facts import NodeFacts
from shared.models import ModelCard
from shared.state import ClusterState
from shared.tensor_split import tensor_split_problem

from services.master.memory_budget import (
    MEMORY_HEADROOM,
    describe,
    layer_bytes_needed,
    layer_capacity,
    node_memory,
    plan_memory,
    request_kv_bytes,
    sized_card,
    tensor_bytes_needed,
    with_free_memory,
)

from services.master.node_choice import LinkLatency, choose_nodes, link_cost, measured_links

# re-exported: what placement's callers and tests use from here
__all__ = [
    "MEMORY_HEADROOM", "NodeMemory", "layer_bytes_needed", "layer_capacity", "link_cost", "plan_memory",
    "tensor_bytes_needed",
]

Strategy = Literal["pipeline", "tensor"]
Backend = Literal["ring", "jaccl"]
STRATEGIES: tuple[Strategy, ...] = ("pipeline", "tensor")
BACKENDS: tuple[Backend, ...] = ("ring", "jaccl")


class NoPlacement(msgspec.Struct, frozen=True):
    reason: str


def option(
    strategy: Strategy,
    backend: Backend,
    n_nodes: int,
    shards: Sequence[ShardAssignment] | None = None,
    reason: str | None = None,
    memory_per_node: dict[str, int] | None = None,
) -> PlanPreview:
    """One line of a preview: feasible exactly when it has shards."""
    return PlanPreview(strategy, backend, n_nodes, shards is not None, None if shards is None else tuple(shards),
                       reason, memory_per_node or {})  # fmt: skip


# ---------------------------------------------------------------------------------------------- nodes


def worker_nodes(state: ClusterState) -> list[NodeFacts]:
    """Nodes that run a worker, most placeable memory first (ties by node id, so plans are stable)."""
    nodes = [n for n in state.nodes.values() if "worker" in n.roles]
    return sorted(nodes, key=lambda n: (-n.placeable_memory(), n.node_id))


def free_worker_nodes(state: ClusterState) -> list[NodeFacts]:
    """The worker nodes with what the placed instances left of their memory, most first."""
    nodes = with_free_memory(state, worker_nodes(state))
    return sorted(nodes, key=lambda n: (-n.placeable_memory(), n.node_id))


def has_rdma(node: NodeFacts) -> bool:
    return node.rdma and "jaccl" in node.backends


def jaccl_candidates(nodes: Sequence[NodeFacts], n: int) -> list[NodeFacts] | str:
    """The nodes a jaccl instance of `n` nodes may use (those with RDMA), or why there are not enough."""
    rdma = [node for node in nodes if has_rdma(node)]
    if len(rdma) < max(2, n):
        return f"jaccl needs RDMA on every node of the instance; only {len(rdma)} worker node(s) report RDMA"
    return rdma


def backend_problem(backend: Backend, nodes: Sequence[NodeFacts]) -> str | None:
    if backend == "jaccl":
        if len(nodes) < 2:
            return "jaccl needs at least 2 nodes"
        without = [n.node_id for n in nodes if not has_rdma(n)]
        if without:
            return f"jaccl needs RDMA on every node; {_names(without)} report none"
    return None


def choose_backend(request: PlaceInstance, nodes: Sequence[NodeFacts]) -> str | NoPlacement:
    """jaccl when every node has RDMA and the request allows it; ring otherwise (or the reason why not)."""
    if request.backend == "ring":
        return "ring"
    problem = backend_problem("jaccl", nodes)
    if request.backend == "jaccl":
        return NoPlacement(problem) if problem else "jaccl"
    return "ring" if problem else "jaccl"


# --------------------------------------------------------------------------------------------- memory


def allocate_layers_proportionally(n_layers: int, weights: list[int], caps: list[int] | None = None) -> list[int]:
    """Split n_layers in proportion to weights, every part at least one layer and at most its cap.

    Every part starts with one layer; each further layer goes to the part furthest below its exact
    proportional share that still has room (ties: the earlier part). Without caps this is the
    largest-remainder split. Raises ValueError when the parts cannot hold the layers.
    """
    n = len(weights)
    caps = caps if caps is not None else [n_layers] * n
    if n_layers < n:
        raise ValueError(f"{n_layers} layers cannot give {n} nodes one layer each")
    if any(c < 1 for c in caps) or sum(min(c, n_layers) for c in caps) < n_layers:
        raise ValueError(f"{n_layers} layers do not fit in parts of at most {caps} layers")
    total = sum(weights)
    target = [n_layers * w / total if total > 0 else n_layers / n for w in weights]
    counts = [1] * n
    heap = [(-(target[i] - 1), i) for i in range(n) if caps[i] > 1]
    heapq.heapify(heap)
    for _ in range(n_layers - n):
        _, i = heapq.heappop(heap)
        counts[i] += 1
        if counts[i] < caps[i]:
            heapq.heappush(heap, (-(target[i] - counts[i]), i))
    return counts


# ------------------------------------------------------------------------------------------ the plans


def pipeline_plan(card: ModelCard, nodes: Sequence[NodeFacts]) -> list[ShardAssignment] | str:
    """Ranks in the order given, layers in proportion to memory within each node's budget, or why not."""
    if card.n_layers < len(nodes):
        return f"{card.n_layers} layers cannot give {len(nodes)} nodes one layer each"
    memory = [n.placeable_memory() for n in nodes]
    caps = [layer_capacity(card, m) for m in memory]
    for node, cap, mem in zip(nodes, caps, memory):
        if cap < 1:
            return f"{node.node_id} cannot hold even one layer ({_gb(layer_bytes_needed(card, 1))}); it has {_gb(mem)}"
    if sum(caps) < card.n_layers:
        return (
            f"{len(nodes)} node(s) hold at most {sum(caps)} of {card.n_layers} layers "
            f"({_gb(layer_bytes_needed(card, card.n_layers))} needed, {_gb(sum(memory))} available)"
        )
    counts = allocate_layers_proportionally(card.n_layers, memory, caps)
    shards, start = [], 0
    for rank, (node, count) in enumerate(zip(nodes, counts)):
        shards.append(ShardAssignment(node.node_id, rank, start, start + count))
        start += count
    return shards


def tensor_problem(card: ModelCard, n: int) -> str | None:
    return tensor_split_problem(card.architecture, card.n_heads, card.n_kv_heads, n)


def tensor_plan(card: ModelCard, nodes: Sequence[NodeFacts]) -> list[ShardAssignment] | str:
    n = len(nodes)
    if problem := tensor_problem(card, n):
        return problem
    need = tensor_bytes_needed(card, n)
    short = [node for node in nodes if need > node.placeable_memory()]
    if short:
        worst = min(short, key=lambda x: x.placeable_memory())
        return (
            f"{_names([s.node_id for s in short])} would hold 1/{n} of the model ({_gb(need)}) "
            f"but {worst.node_id} has {_gb(worst.placeable_memory())}"
        )
    return [ShardAssignment(node.node_id, rank, 0, card.n_layers) for rank, node in enumerate(nodes)]


def make_plan(card: ModelCard, strategy: Strategy, nodes: Sequence[NodeFacts]) -> list[ShardAssignment] | str:
    return pipeline_plan(card, nodes) if strategy == "pipeline" else tensor_plan(card, nodes)


# ------------------------------------------------------------------------------------------- place


def place(
    state: ClusterState,
    request: PlaceInstance,
    card: ModelCard,
    instance_id: str,
    link_latency: LinkLatency | None = None,
) -> Instance | NoPlacement:
    """The plan for `request`: the fewest nodes that fit (pipeline before tensor under `auto`). Link
    latencies default to the ones the nodes measured and reported in their facts."""
    if link_latency is None:
        link_latency = measured_links(state)
    if not worker_nodes(state):
        return NoPlacement("no node with a worker has joined the cluster")
    found = _place_on_free_memory(state, request, sized_card(card, request_kv_bytes(card, request.context_tokens,
                                                                                    request.max_batch)),
                                  instance_id, link_latency)  # fmt: skip
    if isinstance(found, NoPlacement):
        memory = node_memory(state, worker_nodes(state))
        return NoPlacement(f"{found.reason}. Memory per node (budget: held by instances, free): {describe(memory)}")
    return found


def _place_on_free_memory(
    state: ClusterState, request: PlaceInstance, card: ModelCard, instance_id: str, link_latency: LinkLatency
) -> Instance | NoPlacement:
    """`place` on what the placed instances left of each node; `card` is sized for the request's KV cache."""
    candidates = free_worker_nodes(state)
    if request.backend == "jaccl":
        rdma = jaccl_candidates(candidates, request.min_nodes)
        if isinstance(rdma, str):
            return NoPlacement(rdma)
        candidates = rdma
    if request.min_nodes > len(candidates):
        return NoPlacement(
            f"{card.model_id}: min_nodes={request.min_nodes} but only {len(candidates)} worker node(s) joined"
        )
    strategies: tuple[Strategy, ...] = STRATEGIES if request.strategy == "auto" else (request.strategy,)
    last_reason: dict[Strategy, str] = {}
    for n in range(max(1, request.min_nodes), len(candidates) + 1):
        for strategy in strategies:
            if strategy == "tensor" and n > 1 and (problem := tensor_problem(card, n)):
                last_reason.setdefault("tensor", problem)
                continue
            nodes = choose_nodes(card, strategy, candidates, n, link_latency)
            plan = make_plan(card, strategy, nodes)
            if isinstance(plan, str):
                last_reason[strategy] = f"on {n} node(s): {plan}"
                continue
            backend = choose_backend(request, nodes)
            if isinstance(backend, NoPlacement):
                last_reason[strategy] = f"on {n} node(s): {backend.reason}"
                continue
            memory = plan_memory(card, strategy, plan)
            return Instance(instance_id, card.model_id, strategy, backend, tuple(plan), memory)  # type: ignore[arg-type]
    reasons = "; ".join(f"{s} {r}" for s, r in last_reason.items())
    return NoPlacement(f"{card.model_id} ({_gb(card.storage_bytes)}) does not fit on {len(candidates)} node(s): {reasons}")


# ------------------------------------------------------------------------------------------ preview


def preview(
    state: ClusterState,
    card: ModelCard,
    strategies: Sequence[Strategy] = STRATEGIES,
    backends: Sequence[Backend] = BACKENDS,
    min_nodes: int = 1,
    max_nodes: int | None = None,
    link_latency: LinkLatency | None = None,
) -> list[PlanPreview]:
    """Every (strategy, backend, node count) with its plan and memory per node, or why it is infeasible, on the
    nodes' whole budgets; and whether it fits now, beside the instances already placed (`fits_now`,
    `reason_now`: what `place` would answer).

    One node is listed once (pipeline, ring: a single node needs no data plane). The node set for each
    count is the one `place` would pick.
    """
    if link_latency is None:
        link_latency = measured_links(state)
    workers = worker_nodes(state)
    if not workers:
        return [
            option(s, b, 0, reason="no node with a worker has joined the cluster")
            for s in strategies
            for b in backends
        ]
    top = len(workers) if max_nodes is None else min(max_nodes, len(workers))
    keys = [
        (strategy, backend, n)
        for n in range(max(1, min_nodes), top + 1)
        for strategy in strategies
        for backend in backends
        if n > 1 or (strategy, backend) == (strategies[0], "ring")
    ]
    free = free_worker_nodes(state)
    options = []
    for strategy, backend, n in keys:
        empty = _option(card, strategy, backend, workers, n, link_latency)
        now = _option(card, strategy, backend, free, n, link_latency)
        options.append(msgspec.structs.replace(empty, fits_now=now.feasible, reason_now=now.reason))
    return options


def _option(
    card: ModelCard,
    strategy: Strategy,
    backend: Backend,
    workers: Sequence[NodeFacts],
    n: int,
    link_latency: LinkLatency | None,
) -> PlanPreview:
    candidates = jaccl_candidates(workers, n) if backend == "jaccl" else list(workers)
    if isinstance(candidates, str):
        return option(strategy, backend, n, reason=candidates)
    if strategy == "tensor" and (problem := tensor_problem(card, n)):
        return option(strategy, backend, n, reason=problem)
    nodes = choose_nodes(card, strategy, candidates, n, link_latency)
    if problem := backend_problem(backend, nodes):
        return option(strategy, backend, n, reason=problem)
    plan = make_plan(card, strategy, nodes)
    if isinstance(plan, str):
        return option(strategy, backend, n, reason=plan, memory_per_node=_attempted_memory(card, strategy, nodes))
    return option(strategy, backend, n, shards=plan, memory_per_node=plan_memory(card, strategy, plan))


def _attempted_memory(card: ModelCard, strategy: Strategy, nodes: Sequence[NodeFacts]) -> dict[str, int]:
    """What each node would need under an uncapped proportional split (for the infeasible lines)."""
    if strategy == "tensor":
        return {n.node_id: tensor_bytes_needed(card, len(nodes)) for n in nodes}
    if card.n_layers < len(nodes):
        return {}
    counts = allocate_layers_proportionally(card.n_layers, [n.placeable_memory() for n in nodes])
    return {n.node_id: layer_bytes_needed(card, c) for n, c in zip(nodes, counts)}


def _names(ids: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(ids[:limit])
    return shown if len(ids) <= limit else f"{shown} and {len(ids) - limit} more"


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"

