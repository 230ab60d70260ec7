"""Which instance serves a request, and what a client is told when none can. Pure: decided on the followed state.

What clients read is short: a runner's status detail can hold its last log lines (other clients' request ids
and token counts); only its first clause reaches a client, and the whole detail stays in GET /instances and
the logs."""

from __future__ import annotations

from collections.abc import Callable

from shared.ids import InstanceId
from shared.state import ClusterState

from services.gateway.errors import OpenAIError, unavailable

SHORT_REASON_CHARS = 120


def pick_instance(state: ClusterState, model_id: str, turn: int) -> str:
    """A ready instance of the model, round robin; otherwise a 503 that says why none is ready."""
    instances = state.instances_of(model_id)
    ready = sorted(i.instance_id for i in instances if state.instance_ready(i.instance_id))
    if ready:
        return ready[turn % len(ready)]
    if not instances:
        raise unavailable(
            f"no instance of {model_id} is placed; create one with POST /instances "
            f'{{"model": "{model_id}"}} or start exo with --model {model_id}'
        )
    raise not_ready(state, instances[0].instance_id)


def not_ready(state: ClusterState, instance_id: InstanceId) -> OpenAIError:
    instance = state.instances[instance_id]
    return unavailable(f"instance {instance_id} of {instance.model_id} is not ready: " + ranks_summary(state, instance_id))


def instance_down(state: ClusterState, instance_id: InstanceId) -> str | None:
    """Why an instance that was serving can serve no more (deleted, a rank failed, stopped or restarted);
    None while every rank is ready."""
    if instance_id not in state.instances:
        return f"instance {instance_id} was deleted"
    if state.instance_ready(instance_id):
        return None
    return f"instance {instance_id} is down: " + ranks_summary(state, instance_id, only_unready=True)


def short_reason(detail: str) -> str:
    """The first clause of a status detail (e.g. 'runner exited with code -9' of '...: <its last log lines>')."""
    first = detail.strip().splitlines()[0] if detail.strip() else ""
    first = first.split(": ", 1)[0]
    return first if len(first) <= SHORT_REASON_CHARS else first[: SHORT_REASON_CHARS - 1] + "…"


def ranks_summary(
    state: ClusterState,
    instance_id: InstanceId,
    only_unready: bool = False,
    shorten: Callable[[str], str] = short_reason,
    tail: str = "; GET /instances has the details",
) -> str:
    """What each rank of an instance is doing, e.g. 'rank 0 on node-a: loading 40% (layers 0-15)'; a runner's
    detail only as `shorten` gives it (its full text may hold its last log lines: other clients' request ids)."""
    parts = []
    for shard, runner in zip(state.instances[instance_id].shards, state.instance_runners(instance_id)):
        if runner is None:
            parts.append(f"rank {shard.rank} on {shard.node_id}: waiting for its worker")
        elif not (only_unready and runner.phase == "ready"):
            progress = f" {runner.progress:.0%}" if runner.progress is not None else ""
            reason = shorten(runner.detail) if runner.detail else ""
            detail = f" ({reason})" if reason else ""
            parts.append(f"rank {shard.rank} on {shard.node_id}: {runner.phase}{progress}{detail}")
    return "; ".join(parts) + tail
