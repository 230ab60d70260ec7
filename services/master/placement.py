"""Placement: (cluster state, request, model card) -> an instance plan, or the reason none fits. Pure.

Rules (issue 4):
  - pipeline: layers split in proportion to each node's memory, every node at least one layer, and no
    node's share above its budget (the split is capped per node, so a node that the plain proportional
    split would overfill gives its extra layers to nodes with room);
  - tensor: only when the attention heads and the KV heads divide by the node count; every node holds
    1/n of the model;
  - the fewest nodes that fit (from `min_nodes` up); pipeline before tensor at the same node count when
    the request says `auto`;
  - among the node sets of that size that fit, the one with the fastest links when link latencies are
    known (`link_latency`), ranks ordered along the ring; else the nodes with the most memory;
  - jaccl only when every node of the instance reports RDMA (and the jaccl backend); ring otherwise.

`preview` lists every combination (strategy x backend x node count) with its plan and the memory per
node, or the reason it is infeasible. The gateway shows it.

Memory model: a node holding k layers needs k * bytes_per_layer * MEMORY_HEADROOM, where
bytes_per_layer = storage_bytes / n_layers (embedding and head spread over the layers: the runners split
the head by vocabulary rows over the ranks, and rank 0 also keeps the embedding; see
services/worker/runner/sharding.py). The headroom covers the KV cache, activations, the runtime and rank
0's embedding.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import msgspec

from shared.commands import PlaceInstance
from shared.events import Instance, ShardAssignment
from shared.facts import NodeFacts
from shared.models import ModelCard
from shared.state import ClusterState

# Room for the KV cache, activations and the runtime beside the weights.
MEMORY_HEADROOM = 1.25
# A link whose latency is not known counts as this slow (seconds): slower than any measured link.
UNKNOWN_LINK_LATENCY = 1.0
# How many starting nodes the link-aware search tries (the ones with the most memory).
LINK_SEARCH_STARTS = 8

Strategy = Literal["pipeline", "tensor"]
Backend = Literal["ring", "jaccl"]
LinkLatency = Mapping[tuple[str, str], float]
STRATEGIES: tuple[Strategy, ...] = ("pipeline", "tensor")
BACKENDS: tuple[Backend, ...] = ("ring", "jaccl")


class NoPlacement(msgspec.Struct, frozen=True):
    reason: str


class PlanOption(msgspec.Struct, frozen=True):
    """One line of a preview: a plan (shards) or the reason there is none, and memory per node in bytes."""

    strategy: Strategy
    backend: Backend
    n_nodes: int
    shards: tuple[ShardAssignment, ...] | None = None
    reason: str | None = None
    memory_per_node: dict[str, int] = {}

    @property
    def feasible(self) -> bool:
        return self.shards is not None


# ---------------------------------------------------------------------------------------------- nodes


def worker_nodes(state: ClusterState) -> list[NodeFacts]:
    """Nodes that run a worker, most placeable memory first (ties by node id, so plans are stable)."""
    nodes = [n for n in state.nodes.values() if "worker" in n.roles]
    return sorted(nodes, key=lambda n: (-n.placeable_memory(), n.node_id))


def has_rdma(node: NodeFacts) -> bool:
    return node.rdma and "jaccl" in node.backends


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
    if card.n_heads % n or card.n_kv_heads % n:
        return f"{card.n_heads} heads / {card.n_kv_heads} KV heads do not divide by {n} nodes"
    return None


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


def plan_memory(card: ModelCard, strategy: Strategy, shards: Iterable[ShardAssignment]) -> dict[str, int]:
    """Bytes each node of a plan needs (weights with headroom)."""
    shards = list(shards)
    if strategy == "tensor":
        return {s.node_id: tensor_bytes_needed(card, len(shards)) for s in shards}
    return {s.node_id: layer_bytes_needed(card, s.end_layer - s.start_layer) for s in shards}


def make_plan(card: ModelCard, strategy: Strategy, nodes: Sequence[NodeFacts]) -> list[ShardAssignment] | str:
    return pipeline_plan(card, nodes) if strategy == "pipeline" else tensor_plan(card, nodes)


# -------------------------------------------------------------------------------------- node choice


def link_cost(order: Sequence[str], link_latency: LinkLatency) -> float:
    """Latency around the ring the ranks form (rank i talks to i+1; the last to the first)."""
    if len(order) < 2:
        return 0.0
    pairs = zip(order, order[1:]) if len(order) == 2 else zip(order, [*order[1:], order[0]])
    return sum(_latency(a, b, link_latency) for a, b in pairs)


def _latency(a: str, b: str, link_latency: LinkLatency) -> float:
    value = link_latency.get((a, b))
    if value is None:
        value = link_latency.get((b, a))
    return UNKNOWN_LINK_LATENCY if value is None else value


def _fits(card: ModelCard, strategy: Strategy, nodes: Sequence[NodeFacts]) -> bool:
    if strategy == "tensor":
        need = tensor_bytes_needed(card, len(nodes))
        return all(n.placeable_memory() >= need for n in nodes)
    caps = [layer_capacity(card, n.placeable_memory()) for n in nodes]
    return min(caps) >= 1 and sum(caps) >= card.n_layers


def _link_aware_set(
    card: ModelCard, strategy: Strategy, candidates: Sequence[NodeFacts], n: int, link_latency: LinkLatency
) -> list[NodeFacts] | None:
    """A set of n nodes that fits, chosen for low ring latency: from each of the first few nodes, grow a
    path by always adding the nearest usable node. The fitting path with the lowest cost wins (ties: the
    more memory). None when no path fits."""
    if strategy == "tensor":
        need = tensor_bytes_needed(card, n)
        usable = [c for c in candidates if c.placeable_memory() >= need]
    else:
        usable = [c for c in candidates if layer_capacity(card, c.placeable_memory()) >= 1]
    if len(usable) < n:
        return None
    best: tuple[float, int, list[NodeFacts]] | None = None
    for start in usable[:LINK_SEARCH_STARTS]:
        path = [start]
        rest = [c for c in usable if c is not start]
        while len(path) < n:
            last = path[-1].node_id
            nxt = min(rest, key=lambda c: (_latency(last, c.node_id, link_latency), -c.placeable_memory(), c.node_id))
            path.append(nxt)
            rest.remove(nxt)
        if not _fits(card, strategy, path):
            continue
        key = (link_cost([p.node_id for p in path], link_latency), -sum(p.placeable_memory() for p in path))
        if best is None or key < best[:2]:
            best = (*key, path)
    return None if best is None else best[2]


def measured_links(state: ClusterState) -> dict[tuple[str, str], float]:
    """(from, to) -> round trip in ms, as each node's discovery measured it to its peers."""
    return {
        (facts.node_id, link.peer_id): link.latency_ms
        for facts in state.nodes.values()
        for link in facts.links
    }


def choose_nodes(
    card: ModelCard,
    strategy: Strategy,
    candidates: Sequence[NodeFacts],
    n: int,
    link_latency: LinkLatency | None = None,
) -> list[NodeFacts]:
    """The n nodes to use, in rank order. Without link data: the n with the most memory (which fit
    whenever any n nodes fit). With link data: a low-latency set that fits, if one is found."""
    top = list(candidates[:n])
    if link_latency and n > 1 and _fits(card, strategy, top):  # when the n largest do not fit, no n nodes do
        found = _link_aware_set(card, strategy, candidates, n, link_latency)
        if found is not None and link_cost([f.node_id for f in found], link_latency) < link_cost(
            [t.node_id for t in top], link_latency
        ):
            return found
    return top


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
    candidates = worker_nodes(state)
    if not candidates:
        return NoPlacement("no node with a worker has joined the cluster")
    if request.backend == "jaccl":
        rdma = [c for c in candidates if has_rdma(c)]
        if len(rdma) < max(2, request.min_nodes):
            return NoPlacement(
                f"jaccl needs RDMA on every node of the instance; {len(rdma)} worker node(s) report RDMA"
            )
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
            return Instance(instance_id, card.model_id, strategy, backend, tuple(plan))  # type: ignore[arg-type]
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
) -> list[PlanOption]:
    """Every (strategy, backend, node count) with its plan and memory per node, or why it is infeasible.

    One node is listed once (pipeline, ring: a single node needs no data plane). The node set for each
    count is the one `place` would pick.
    """
    options: list[PlanOption] = []
    if link_latency is None:
        link_latency = measured_links(state)
    workers = worker_nodes(state)
    top = len(workers) if max_nodes is None else min(max_nodes, len(workers))
    if not workers:
        return [
            PlanOption(s, b, 0, reason="no node with a worker has joined the cluster")
            for s in strategies
            for b in backends
        ]
    for n in range(max(1, min_nodes), top + 1):
        for strategy in strategies:
            for backend in backends:
                if n == 1 and (strategy, backend) != (strategies[0], "ring"):
                    continue
                options.append(_option(card, strategy, backend, workers, n, link_latency))
    return options


def _option(
    card: ModelCard,
    strategy: Strategy,
    backend: Backend,
    workers: Sequence[NodeFacts],
    n: int,
    link_latency: LinkLatency | None,
) -> PlanOption:
    candidates = [w for w in workers if has_rdma(w)] if backend == "jaccl" else list(workers)
    if backend == "jaccl" and len(candidates) < n:
        return PlanOption(
            strategy, backend, n, reason=f"jaccl needs RDMA on every node; only {len(candidates)} node(s) report RDMA"
        )
    if strategy == "tensor" and (problem := tensor_problem(card, n)):
        return PlanOption(strategy, backend, n, reason=problem)
    nodes = choose_nodes(card, strategy, candidates, n, link_latency)
    if problem := backend_problem(backend, nodes):
        return PlanOption(strategy, backend, n, reason=problem)
    plan = make_plan(card, strategy, nodes)
    if isinstance(plan, str):
        return PlanOption(strategy, backend, n, reason=plan, memory_per_node=_attempted_memory(card, strategy, nodes))
    return PlanOption(strategy, backend, n, shards=tuple(plan), memory_per_node=plan_memory(card, strategy, plan))


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

