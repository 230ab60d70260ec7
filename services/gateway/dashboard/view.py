"""What the dashboard shows of the cluster, as plain JSON-ready data: a pure function of the followed state and
the node facts heard most recently.

Membership comes from the event log (a node is shown from its first recorded facts until NodeLost), the numbers
from the live facts when there are some: the log records memory only when it moves by 10%, the page wants now.
"""

from __future__ import annotations

from collections.abc import Mapping

from shared.events import GROUP_TRITS
from shared.facts import NodeFacts
from shared.ids import InstanceId
from shared.models import all_cards, builtin_card
from shared.state import ClusterState


def cluster_view(state: ClusterState, live: Mapping[str, NodeFacts]) -> dict:
    facts: dict[str, NodeFacts] = {node_id: live.get(node_id, recorded) for node_id, recorded in state.nodes.items()}
    leader = state.leader_node_id
    return {
        "leader": {"node_id": leader, "term": state.leader_term,
                   "hostname": facts[leader].hostname if leader in facts else None},  # fmt: skip
        "nodes": [node_view(f, f.node_id == leader) for _, f in sorted(facts.items())],
        "links": links_view(facts),
        "instances": [instance_view(state, iid, facts) for iid in sorted(state.instances)],
        "waiting": [
            {"instance_id": w.instance_id, "model": w.model_id, "strategy": w.strategy, "backend": w.backend,
             "reason": w.reason}
            for _, w in sorted(state.waiting.items())
        ],  # fmt: skip
        "models": [
            {"model_id": c.model_id, "name": c.display_name, "bytes": c.storage_bytes, "layers": c.n_layers}
            for c in all_cards(state.models)
        ],  # fmt: skip
        "events_applied": state.last_seq,
    }


def node_view(facts: NodeFacts, leads: bool) -> dict:
    return {
        "node_id": facts.node_id,
        "hostname": facts.hostname,
        "memory_total": facts.memory_total,
        "memory_used": max(0, facts.memory_total - facts.memory_available),
        "memory_budget": facts.memory_budget,
        "cores": facts.cpu_count,
        "chip": facts.chip,
        "backends": list(facts.backends),
        "rdma": facts.rdma,
        "roles": list(facts.roles),
        "leader": leads,
    }


def links_view(facts: Mapping[str, NodeFacts]) -> list[dict]:
    """One edge per pair of shown nodes; each side measures its own round trip, the edge shows the lower."""
    edges: dict[tuple[str, str], float] = {}
    for node_id, f in facts.items():
        for link in f.links:
            if link.peer_id not in facts or link.peer_id == node_id:
                continue
            pair = (min(node_id, link.peer_id), max(node_id, link.peer_id))
            edges[pair] = min(edges.get(pair, link.latency_ms), link.latency_ms)
    return [{"a": a, "b": b, "latency_ms": ms} for (a, b), ms in sorted(edges.items())]


def instance_view(state: ClusterState, instance_id: InstanceId, facts: Mapping[str, NodeFacts]) -> dict:
    instance = state.instances[instance_id]
    card = builtin_card(instance.model_id) or state.models.get(instance.model_id)
    shards = []
    for shard, runner in zip(instance.shards, state.instance_runners(instance.instance_id)):
        shards.append({
            "rank": shard.rank,
            "node_id": shard.node_id,
            "hostname": facts[shard.node_id].hostname if shard.node_id in facts else shard.node_id,
            "start_layer": shard.start_layer,
            "end_layer": shard.end_layer,
            "phase": runner.phase if runner is not None else "waiting",
            "progress": runner.progress if runner is not None else None,
            "detail": runner.detail if runner is not None else "waiting for its worker",
        })  # fmt: skip
    phases = {s["phase"] for s in shards}
    return {
        "instance_id": instance.instance_id,
        "model": instance.model_id,
        "model_name": card.display_name if card else instance.model_id,
        "layers": card.n_layers if card else max((s.end_layer for s in instance.shards), default=0),
        "strategy": instance.strategy,
        "backend": instance.backend,
        "status": "failed" if "failed" in phases else "ready" if phases == {"ready"} else "starting",
        "memory_per_node": dict(instance.memory_per_node),
        "shards": shards,
        "group": group_view(state, instance_id),
    }


def group_view(state: ClusterState, instance_id: InstanceId) -> dict | None:
    """Its role in a trifurcated group (validator -1, main 0, draft +1) and the group's main; None: on its own."""
    group = state.instances[instance_id].group
    if group is None:
        return None
    main = instance_id if group.role == "main" else group.main
    main_group = state.instances[main].group if main in state.instances else None
    return {"role": group.role, "trit": GROUP_TRITS[group.role], "main": main,
            "policy": main_group.policy if main_group else None}  # fmt: skip
