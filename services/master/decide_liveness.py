"""What the master writes when nodes go silent, and when a model that was lost with a node fits again.
Pure: state in, events out.

A lost node takes its ranks with it, and an instance missing a rank cannot generate: each instance that
used a lost node is deleted (the reason names the node) and placed again, same model and a new instance id,
on the nodes that are left, all in the one append that records the loss. Where the model no longer fits,
its instance waits (InstanceAwaitingNodes), and the leader places it as soon as it fits again: the lost node
came back, or another joined (`decide_place_waiting`, every liveness round)."""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from shared.apply import apply
from shared.commands import PlaceInstance
from shared.events import AnyEvent, Instance, InstanceAwaitingNodes, InstanceDeleted, InstancePlaced, NodeLost
from shared.models import UnknownModel, get_card
from shared.state import ClusterState

from services.master.decide_commands import nodes_to_forget
from services.master.placement import place


def decide_forget_silent_nodes(
    state: ClusterState,
    last_seen: dict[str, float],
    now: float,
    timeout: float,
    new_instance_id: Callable[[], str],
) -> list[AnyEvent]:
    """Nodes silent for `timeout` seconds are lost; their instances are deleted and placed again."""
    return decide_node_loss(state, nodes_to_forget(state, last_seen, now, timeout), new_instance_id)


def decide_node_loss(state: ClusterState, lost: list[NodeLost], new_instance_id: Callable[[], str]) -> list[AnyEvent]:
    """The events for `lost` (nodes the state no longer knows are skipped), in the order they must be applied:
    NodeLost, then InstanceDeleted for each instance that had a rank on a node that is gone, then
    InstancePlaced for each of those that fits on what is left."""
    lost = [e for e in lost if e.node_id in state.nodes]
    events: list[AnyEvent] = []
    after = state
    for lost_event in lost:
        events.append(lost_event)
        after = apply(after, lost_event)
    # Also instances on nodes the state has already forgotten: appends of several events are not atomic, so
    # a leader that died between NodeLost and InstanceDeleted leaves those for its successor to finish.
    broken = [i for i in state.instances.values() if any(s.node_id not in after.nodes for s in i.shards)]
    for instance in broken:
        gone = sorted({s.node_id for s in instance.shards} - after.nodes.keys())
        deleted = InstanceDeleted(instance.instance_id, reason=f"node {', '.join(gone)} lost; placing it again")
        events.append(deleted)
        after = apply(after, deleted)
    for instance in broken:
        replacement = replace_instance(after, instance, new_instance_id())
        if replacement is not None:
            event: AnyEvent = InstancePlaced(replacement)
        else:
            names = ", ".join(sorted({s.node_id for s in instance.shards} - after.nodes.keys()))
            event = InstanceAwaitingNodes(
                instance.instance_id, instance.model_id, instance.strategy, instance.backend,
                reason=f"does not fit on the nodes left after {names} was lost", group=instance.group,
                speculative=instance.speculative,
            )  # fmt: skip
        events.append(event)
        after = apply(after, event)  # the next replacement sees this one (placement reads the state)
    return events


def decide_liveness(
    state: ClusterState,
    last_seen: dict[str, float],
    now: float,
    timeout: float,
    new_instance_id: Callable[[], str],
) -> list[AnyEvent]:
    """One round of the leader's liveness loop: silent nodes are forgotten (their instances deleted and placed
    again, or waiting), then the models that wait for nodes are placed where they fit now."""
    events = decide_forget_silent_nodes(state, last_seen, now, timeout, new_instance_id)
    after = state
    for event in events:
        after = apply(after, event)
    return events + decide_place_waiting(after, new_instance_id)


def decide_place_waiting(state: ClusterState, new_instance_id: Callable[[], str]) -> list[AnyEvent]:
    """InstancePlaced for each waiting model that fits now (oldest first; one instance per model)."""
    events: list[AnyEvent] = []
    after = state
    for waiting in list(state.waiting.values()):
        if waiting.instance_id not in after.waiting:
            continue  # its model was placed by an earlier one of these
        plan = replace_instance(after, waiting, new_instance_id())
        if plan is not None:
            events.append(InstancePlaced(plan))
            after = apply(after, events[-1])
    return events


def replace_instance(state: ClusterState, old: Instance | InstanceAwaitingNodes, instance_id: str) -> Instance | None:
    """A new plan for `old`'s model on `state`'s nodes: its own strategy and backend if they still fit
    (tensor needs the same divisibility, jaccl RDMA everywhere), else whatever fits; None if nothing does."""
    try:
        card = get_card(old.model_id, state.models)
    except UnknownModel:
        return None
    for request in (PlaceInstance(old.model_id, strategy=old.strategy, backend=old.backend), PlaceInstance(old.model_id)):
        plan = place(state, request, card, instance_id)
        if isinstance(plan, Instance):
            return msgspec.structs.replace(plan, group=old.group, speculative=old.speculative)  # a group role, a default
    return None
