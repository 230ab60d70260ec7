"""Memory as a budget across instances: services/master/memory_budget.py and its use by placement (pure)."""

from __future__ import annotations

import pytest

from services.master.decide_commands import decide_place, decide_preview
from services.master.memory_budget import (
    MEMORY_HEADROOM,
    instance_memory,
    kv_bytes_per_token,
    kv_cache_bytes,
    layer_bytes_needed,
    node_memory,
)
from services.master.placement import NoPlacement, place, preview
from shared.apply import apply
from shared.commands import PlaceInstance, PreviewPlacements
from shared.events import Instance, InstanceDeleted, InstancePlaced, ShardAssignment
from shared.facts import NetworkInterface, NodeFacts
from shared.models import get_card
from shared.state import ClusterState

MB = 1000**2
SMOL = get_card("smollm2-135m")
LLAMA = get_card("llama-3.3-70b")


def node(node_id: str, budget: int) -> NodeFacts:
    return NodeFacts(node_id, f"host-{node_id}", 64_000 * MB, 64_000 * MB, budget, 2, "x86_64", ("ring",),
                     (NetworkInterface("eth0", ("10.0.0.1",)),), ("worker",))  # fmt: skip


def two_nodes_of_70_mb() -> ClusterState:
    return ClusterState(nodes={n: node(n, 70 * MB) for n in ("a", "b")})


def placed(state: ClusterState, instance: Instance | NoPlacement) -> ClusterState:
    assert isinstance(instance, Instance), instance
    return apply(state, InstancePlaced(instance))


def test_the_issue_reproduction_a_second_instance_does_not_fit_beside_the_first():
    """Issue 17: three 2-stage instances of ~60 MB per node were placed on two nodes that declared 70 MB each."""
    state = two_nodes_of_70_mb()
    first = place(state, PlaceInstance("smollm2-135m"), SMOL, "inst-1")
    assert isinstance(first, Instance) and first.world_size == 2
    state = placed(state, first)
    second = place(state, PlaceInstance("smollm2-135m"), SMOL, "inst-2")
    assert isinstance(second, NoPlacement), second
    # the refusal gives the numbers: each node's budget, what the instances hold, what is free
    held = first.memory_per_node["a"]
    assert f"a 70.0 MB: {held / MB:.1f} MB held, {(70 * MB - held) / MB:.1f} MB free" in second.reason, second.reason
    events, reply = decide_place(state, PlaceInstance("smollm2-135m"), "inst-3")
    assert events == [] and not reply.ok and "held" in reply.error


def test_an_instance_records_what_it_holds_and_deleting_it_frees_it():
    state = two_nodes_of_70_mb()
    first = place(state, PlaceInstance("smollm2-135m"), SMOL, "inst-1")
    assert set(first.memory_per_node) == {"a", "b"}
    assert sum(first.memory_per_node.values()) == pytest.approx(layer_bytes_needed(SMOL, SMOL.n_layers), rel=0.01)
    state = placed(state, first)
    memory = {m.node_id: m for m in node_memory(state, state.nodes.values())}
    assert memory["a"].total == 70 * MB and memory["a"].held == first.memory_per_node["a"]
    assert memory["a"].free == 70 * MB - memory["a"].held and memory["a"].held_by == {"inst-1": memory["a"].held}
    state = apply(state, InstanceDeleted("inst-1", reason="deleted on request"))
    assert isinstance(place(state, PlaceInstance("smollm2-135m"), SMOL, "inst-2"), Instance)


def test_an_instance_from_an_older_log_holds_what_its_card_says():
    old = Instance("inst-old", "smollm2-135m", "pipeline", "ring", (ShardAssignment("a", 0, 0, 15),
                                                                   ShardAssignment("b", 1, 15, 30)))  # fmt: skip
    assert old.memory_per_node == {}
    assert instance_memory(old) == {"a": layer_bytes_needed(SMOL, 15), "b": layer_bytes_needed(SMOL, 15)}
    unknown = Instance("inst-x", "no-such-model", "pipeline", "ring", (ShardAssignment("a", 0, 0, 1),))
    assert instance_memory(unknown) == {}


def test_a_small_model_fits_beside_a_placed_one_where_there_is_room():
    state = ClusterState(nodes={"a": node("a", 300 * MB), "b": node("b", 70 * MB)})
    state = placed(state, place(state, PlaceInstance("smollm2-135m"), SMOL, "inst-1"))  # on a alone
    second = place(state, PlaceInstance("smollm2-135m"), SMOL, "inst-2")
    assert isinstance(second, Instance), second
    total = {n: instance_memory(i).get(n, 0) for i in state.instances.values() for n in "ab"}
    for node_id, need in second.memory_per_node.items():
        assert need + total[node_id] <= state.nodes[node_id].placeable_memory()


def test_kv_cache_estimate_from_the_card():
    head_dim = SMOL.hidden_size // SMOL.n_heads  # 64
    assert kv_bytes_per_token(SMOL) == 2 * 30 * 3 * head_dim * 2 == 23_040
    assert kv_bytes_per_token(LLAMA) == 2 * 80 * 8 * 128 * 2
    assert kv_cache_bytes(SMOL, 8192, 8) == 23_040 * 8192 * 8
    assert kv_cache_bytes(SMOL, 10**9, 1) == 23_040 * SMOL.context_length  # no more than the model's context


def test_a_request_that_declares_its_context_and_batch_reserves_their_kv_cache():
    want = PlaceInstance("smollm2-135m", context_tokens=8192, max_batch=8)
    kv = kv_cache_bytes(SMOL, 8192, 8)  # 1.5 GB: far beyond the headroom
    refused = place(two_nodes_of_70_mb(), want, SMOL, "inst-1")
    assert isinstance(refused, NoPlacement) and "70.0 MB" in refused.reason
    big = ClusterState(nodes={"a": node("a", 4000 * MB)})
    instance = place(big, want, SMOL, "inst-1")
    assert isinstance(instance, Instance)
    assert instance.memory_per_node["a"] == pytest.approx(SMOL.storage_bytes + kv, rel=0.001)
    # a small declared load stays within the usual headroom
    small = place(big, PlaceInstance("smollm2-135m", context_tokens=256, max_batch=1), SMOL, "inst-2")
    assert small.memory_per_node["a"] == pytest.approx(SMOL.storage_bytes * MEMORY_HEADROOM, rel=0.001)


def test_preview_says_what_is_held_and_whether_the_plan_fits_now():
    state = two_nodes_of_70_mb()
    before = {(o.strategy, o.backend, o.n_nodes): o for o in preview(state, SMOL)}
    assert before[("pipeline", "ring", 2)].feasible and before[("pipeline", "ring", 2)].fits_now
    state = placed(state, place(state, PlaceInstance("smollm2-135m"), SMOL, "inst-1"))
    after = {(o.strategy, o.backend, o.n_nodes): o for o in preview(state, SMOL)}
    two = after[("pipeline", "ring", 2)]
    assert two.feasible, "the cluster can run the model (it does)"
    assert not two.fits_now and "layers" in two.reason_now
    reply = decide_preview(state, PreviewPlacements("smollm2-135m"))
    memory = {m.node_id: m for m in reply.memory}
    assert set(memory) == {"a", "b"}
    assert all(m.total == 70 * MB and m.held > 60 * MB and m.free == m.total - m.held for m in memory.values())
    assert not reply.options[1].fits_now and reply.options[1].reason_now
