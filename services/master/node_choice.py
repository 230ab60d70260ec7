"""Which nodes an instance uses, in rank order: the ones with the most memory, or a low-latency ring of nodes that
fits when the nodes measured their links. Pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

from shared.facts import NodeFacts
from shared.models import ModelCard
from shared.state import ClusterState

from services.master.memory_budget import layer_capacity, tensor_bytes_needed

# A link whose latency is not known counts as this slow (seconds): slower than any measured link.
UNKNOWN_LINK_LATENCY = 1.0
# How many starting nodes the link-aware search tries (the ones with the most memory).
LINK_SEARCH_STARTS = 8

Strategy = Literal["pipeline", "tensor"]
LinkLatency = Mapping[tuple[str, str], float]


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
            best = (key[0], key[1], path)
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
