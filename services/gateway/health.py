"""/health: "ok" only when the bus is up, a master leads and every placed model has a ready instance.

It answers 200 either way (the body says ok or degraded, and why): a load balancer that wants to drain a
degraded node reads `status`; one that only wants to know the process is alive reads the code. It needs no
API key: it names models and nodes, never a prompt, and monitors should not have to hold the key.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from shared.state import ClusterState

from services.gateway.routing import ranks_summary

router = APIRouter()

# A runner's detail may carry its last log lines (other clients' request ids); /health is open, so it shows
# only a detail that is one short line, and points to the key-guarded GET /instances for the rest.
SHORT_DETAIL_CHARS = 100


def short_detail(detail: str) -> str:
    if "\n" in detail or len(detail) > SHORT_DETAIL_CHARS:
        return "details in GET /instances"
    return detail


def degraded_reasons(state: ClusterState, bus_connected: bool) -> list[str]:
    """Why this node cannot serve everything that is placed; empty when it can. A model with no ready instance,
    and a failed or waiting instance even when another instance of its model serves (capacity is lost)."""
    reasons = [] if bus_connected else ["not connected to the bus"]
    if state.leader_node_id is None:
        reasons.append("no master has been elected")
    models = {i.model_id for i in state.instances.values()} | {w.model_id for w in state.waiting.values()}
    for model in sorted(models):
        instances = sorted(state.instances_of(model), key=lambda i: i.instance_id)
        ready = any(state.instance_ready(i.instance_id) for i in instances)
        for instance in instances:
            iid = instance.instance_id
            failed = any(r is not None and r.phase == "failed" for r in state.instance_runners(iid))
            if failed or not (ready or state.instance_ready(iid)):
                what = "failed" if failed else "not ready"
                reasons.append(f"instance {iid} of {model} {what}: {ranks_summary(state, iid, shorten=short_detail, tail='')}")
        for waiting in sorted(state.waiting.values(), key=lambda w: w.instance_id):
            if waiting.model_id == model:
                reasons.append(f"{model} (was {waiting.instance_id}) is waiting for nodes: {waiting.reason}")
    return reasons


def health_report(state: ClusterState, bus_connected: bool) -> dict:
    reasons = degraded_reasons(state, bus_connected)
    return {
        "status": "degraded" if reasons else "ok",
        "reasons": reasons,
        "nats_connected": bus_connected,
        "master": state.leader_node_id,  # the leader: the one master that writes and answers commands
        "leader_term": state.leader_term,
        "nodes": sorted(state.nodes),
        "events_applied": state.last_seq,
        "ready_instances": sorted(i for i in state.instances if state.instance_ready(i)),
        "waiting_instances": sorted(state.waiting),  # lost with a node; placed again once the model fits
    }


@router.get("/health")
async def health(request: Request) -> dict:
    gateway = request.app.state.gateway
    return health_report(gateway.follower.state, gateway.nc.is_connected)
