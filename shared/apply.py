"""The state reducer: apply(state, event) -> state. Pure; one small function per event."""

from __future__ import annotations

from typing import assert_never

import msgspec

from shared.events import (
    AnyEvent,
    InstanceAwaitingNodes,
    InstanceDeleted,
    InstancePlaced,
    LeaderElected,
    ModelCardRecorded,
    NodeFactsRecorded,
    NodeLost,
    RunnerStatusChanged,
    WorkerStarted,
)
from shared.state import ClusterState, runner_key


def apply(state: ClusterState, event: AnyEvent, seq: int | None = None) -> ClusterState:
    match event:
        case NodeFactsRecorded():
            new = _node_facts(state, event)
        case NodeLost():
            new = _node_lost(state, event)
        case InstancePlaced():
            new = _instance_placed(state, event)
        case InstanceDeleted():
            new = _instance_deleted(state, event)
        case RunnerStatusChanged():
            new = _runner_status(state, event, state.last_seq + 1 if seq is None else seq)
        case LeaderElected():
            new = _leader_elected(state, event)
        case WorkerStarted():
            new = _forget_runners_of(state, event.node_id, keep=frozenset(event.kept))
        case InstanceAwaitingNodes():
            new = msgspec.structs.replace(state, waiting={**state.waiting, event.instance_id: event})
        case ModelCardRecorded():
            new = msgspec.structs.replace(state, models={**state.models, event.card.model_id: event.card})
        case _:
            assert_never(event)
    if seq is not None:
        new = msgspec.structs.replace(new, last_seq=seq)
    return new


def _node_facts(state: ClusterState, event: NodeFactsRecorded) -> ClusterState:
    return msgspec.structs.replace(state, nodes={**state.nodes, event.facts.node_id: event.facts})


def _node_lost(state: ClusterState, event: NodeLost) -> ClusterState:
    nodes = {k: v for k, v in state.nodes.items() if k != event.node_id}
    return msgspec.structs.replace(_forget_runners_of(state, event.node_id), nodes=nodes)


def _leader_elected(state: ClusterState, event: LeaderElected) -> ClusterState:
    if event.term <= state.leader_term:
        return state  # the event log refuses this; ignoring it too keeps a forged or stale claim harmless
    return msgspec.structs.replace(state, leader_node_id=event.node_id, leader_term=event.term)


def _forget_runners_of(state: ClusterState, node_id: str, keep: frozenset[str] = frozenset()) -> ClusterState:
    runners = {k: v for k, v in state.runners.items() if v.node_id != node_id or k in keep}
    return msgspec.structs.replace(state, runners=runners)


def _instance_placed(state: ClusterState, event: InstancePlaced) -> ClusterState:
    instance = event.instance
    waiting = {k: v for k, v in state.waiting.items() if v.model_id != instance.model_id}  # placed again
    instances = {**state.instances, instance.instance_id: instance}
    return msgspec.structs.replace(state, instances=instances, waiting=waiting)


def _instance_deleted(state: ClusterState, event: InstanceDeleted) -> ClusterState:
    instances = {k: v for k, v in state.instances.items() if k != event.instance_id}
    prefix = f"{event.instance_id}/"
    runners = {k: v for k, v in state.runners.items() if not k.startswith(prefix)}
    failures = {k: v for k, v in state.failures.items() if not k.startswith(prefix)}
    waiting = {k: v for k, v in state.waiting.items() if k != event.instance_id}
    return msgspec.structs.replace(state, instances=instances, runners=runners, failures=failures, waiting=waiting)


def _runner_status(state: ClusterState, event: RunnerStatusChanged, seq: int) -> ClusterState:
    if event.instance_id not in state.instances:
        return state  # a late report about an instance that is already gone
    key = runner_key(event.instance_id, event.rank)
    failures = {**state.failures, key: seq} if event.phase == "failed" else state.failures
    return msgspec.structs.replace(state, runners={**state.runners, key: event}, failures=failures)
