"""Placement of a trifurcated group (docs/trifurcated.md): the main model, its draft and its validator on disjoint
node groups where the cluster has them, else beside each other, saying what they share. Pure."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from shared.commands import PlaceInstance
from shared.events import Instance
from shared.ids import InstanceId, NodeId
from shared.models import ModelCard
from shared.state import ClusterState

from services.master.node_choice import LinkLatency, measured_links
from services.master.placement import NoPlacement, place


class Placed(msgspec.Struct, frozen=True):
    instance: Instance
    shares: str | None = None  # what it shares with the instances it was to be apart from; None: nothing


def nodes_of(state: ClusterState, instance_ids: Sequence[InstanceId]) -> set[NodeId]:
    return {s.node_id for iid in instance_ids if (i := state.instances.get(iid)) for s in i.shards}


def place_apart(
    state: ClusterState, request: PlaceInstance, card: ModelCard, instance_id: str,
    apart_from: Sequence[InstanceId], link_latency: LinkLatency | None = None,
) -> Placed | NoPlacement:  # fmt: skip
    """`place` on the nodes none of `apart_from` uses; when it fits on none of them, `place` beside them (the
    memory the placed instances hold still counts), with what it shares."""
    links = measured_links(state) if link_latency is None else link_latency
    taken = nodes_of(state, apart_from)
    free_nodes = {k: v for k, v in state.nodes.items() if k not in taken}
    apart = place(msgspec.structs.replace(state, nodes=free_nodes), request, card, instance_id, links)
    if isinstance(apart, Instance):
        return Placed(apart)
    beside = place(state, request, card, instance_id, links)
    if isinstance(beside, NoPlacement):
        return beside
    shared = sorted({s.node_id for s in beside.shards} & taken)
    if not shared:  # the nodes apart were not enough together, but it fits on them with others
        return Placed(beside)
    with_whom = sorted(iid for iid in apart_from if nodes_of(state, [iid]) & set(shared))
    why = "no node is free of them" if not free_nodes else f"it does not fit apart ({apart.reason})"
    return Placed(beside, f"shares {', '.join(shared)} with {', '.join(with_whom)}: {why}")


def place_group(
    state: ClusterState, roles: Sequence[tuple[str, PlaceInstance, ModelCard, str]],
    link_latency: LinkLatency | None = None,
) -> list[tuple[str, Placed]] | NoPlacement:  # fmt: skip
    """(role, request, card, instance id) in order (the main model first: the largest); each placed apart from
    the ones before it. What a group's preview shows and what placing it one role at a time does."""
    links = measured_links(state) if link_latency is None else link_latency
    placed: list[tuple[str, Placed]] = []
    for role, request, card, instance_id in roles:
        found = place_apart(state, request, card, instance_id, [p.instance.instance_id for _r, p in placed], links)
        if isinstance(found, NoPlacement):
            return NoPlacement(f"the {role} ({card.model_id}): {found.reason}")
        placed.append((role, found))
        instances = {**state.instances, found.instance.instance_id: found.instance}
        state = msgspec.structs.replace(state, instances=instances)
    return placed
