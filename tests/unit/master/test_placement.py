"""Placement: services/master/placement.py (pure: state + request + card -> plan or reason)."""

from __future__ import annotations

import time

import msgspec
import pytest

from services.master.placement import (
    MEMORY_HEADROOM,
    NoPlacement,
    allocate_layers_proportionally,
    layer_bytes_needed,
    layer_capacity,
    link_cost,
    pipeline_plan,
    place,
    plan_memory,
    preview,
)
from shared.commands import PlaceInstance
from shared.events import Instance
from shared.facts import NetworkInterface, NodeFacts
from shared.models import MODEL_CARDS, get_card
from shared.state import ClusterState

GB = 1000**3
SMOL = get_card("smollm2-135m")
BIG_CARDS = ["llama-3.3-70b", "deepseek-r1", "qwen-2.5-72b", "mixtral-8x22b", "llama-3.1-405b"]


def node(node_id: str, memory: int, *, budget: int | None = None, rdma: bool = False, roles=("worker",)) -> NodeFacts:
    return NodeFacts(
        node_id=node_id,
        hostname=f"host-{node_id}",
        memory_total=memory,
        memory_available=memory,
        memory_budget=budget,
        cpu_count=8,
        chip="Apple M4 Max" if rdma else "x86_64",
        backends=("ring", "jaccl") if rdma else ("ring",),
        interfaces=(NetworkInterface("en0", (f"10.0.0.{len(node_id)}",)),),
        roles=roles,
        rdma=rdma,
    )


def cluster(*nodes: NodeFacts) -> ClusterState:
    return ClusterState(nodes={n.node_id: n for n in nodes})


def macs(n: int, memory: int = 180 * GB, rdma: bool = True) -> ClusterState:
    """n Mac Studios with 192 GB, of which 180 GB placeable."""
    return cluster(*(node(f"mac-{i:02d}", memory, rdma=rdma) for i in range(n)))


def per_layer(card=SMOL) -> float:
    return card.bytes_per_layer() * MEMORY_HEADROOM


def check_plan(inst: Instance, state: ClusterState, card) -> None:
    """Invariants every plan keeps: ranks 0..n-1, layers tile the model (pipeline) or all layers
    everywhere (tensor), every node >= 1 layer and within its budget."""
    assert [s.rank for s in inst.shards] == list(range(len(inst.shards)))
    assert len({s.node_id for s in inst.shards}) == len(inst.shards)
    if inst.strategy == "pipeline":
        assert inst.shards[0].start_layer == 0 and inst.shards[-1].end_layer == card.n_layers
        for a, b in zip(inst.shards, inst.shards[1:]):
            assert a.end_layer == b.start_layer
        assert all(s.end_layer - s.start_layer >= 1 for s in inst.shards)
    else:
        assert all((s.start_layer, s.end_layer) == (0, card.n_layers) for s in inst.shards)
        assert card.n_heads % len(inst.shards) == 0 and card.n_kv_heads % len(inst.shards) == 0
    for node_id, need in plan_memory(card, inst.strategy, inst.shards).items():
        assert need <= state.nodes[node_id].placeable_memory(), (node_id, need)


# --- layer split -----------------------------------------------------------------------------------


def test_allocation_even_and_proportional():
    assert allocate_layers_proportionally(30, [1, 1]) == [15, 15]
    assert allocate_layers_proportionally(30, [1, 1, 1]) == [10, 10, 10]
    assert allocate_layers_proportionally(30, [2, 1]) == [20, 10]
    counts = allocate_layers_proportionally(80, [64, 32, 16, 8])
    assert sum(counts) == 80 and counts == sorted(counts, reverse=True)
    assert counts[0] == pytest.approx(80 * 64 / 120, abs=1)


def test_allocation_gives_every_part_a_layer_even_with_tiny_weights():
    counts = allocate_layers_proportionally(30, [1_000_000, 1, 1])
    assert counts == [28, 1, 1]


def test_allocation_respects_caps_and_moves_layers_to_nodes_with_room():
    # Proportional would give the small nodes 2 layers each; capped at 1 they give them to the big one.
    assert allocate_layers_proportionally(30, [285, 12, 12], caps=[28, 1, 1]) == [28, 1, 1]
    assert allocate_layers_proportionally(30, [10, 10, 10], caps=[5, 30, 30]) == [5, 13, 12]


def test_allocation_refuses_what_cannot_fit():
    with pytest.raises(ValueError):
        allocate_layers_proportionally(2, [1, 1, 1])
    with pytest.raises(ValueError):
        allocate_layers_proportionally(30, [1, 1], caps=[10, 10])


def test_layer_capacity_is_the_most_layers_within_budget():
    cap = layer_capacity(SMOL, int(per_layer() * 7.5))
    assert cap == 7
    assert layer_bytes_needed(SMOL, cap) <= per_layer() * 7.5 < layer_bytes_needed(SMOL, cap + 1)
    assert layer_capacity(SMOL, 10) == 0
    assert layer_capacity(SMOL, 10**12) == SMOL.n_layers


def test_pipeline_split_stays_within_budgets_where_plain_proportion_would_not():
    # 28.5 + 1.2 + 1.2 layers' worth: plain "one each, then proportional" gives the small ones 2 layers.
    nodes = [node("big", int(per_layer() * 28.5)), node("s1", int(per_layer() * 1.2)), node("s2", int(per_layer() * 1.2))]
    plan = pipeline_plan(SMOL, nodes)
    assert not isinstance(plan, str)
    assert [s.end_layer - s.start_layer for s in plan] == [28, 1, 1]


def test_pipeline_plan_says_why_not():
    assert "one layer" in pipeline_plan(SMOL, [node("a", 10 * GB), node("tiny", 1000)])
    assert "at most" in pipeline_plan(SMOL, [node("a", int(per_layer() * 10)), node("b", int(per_layer() * 10))])


# --- place -----------------------------------------------------------------------------------------


def test_one_node_when_one_fits():
    state = cluster(node("a", 8 * GB), node("b", 16 * GB))
    inst = place(state, PlaceInstance("smollm2-135m"), SMOL, "i1")
    assert isinstance(inst, Instance)
    assert [s.node_id for s in inst.shards] == ["b"] and inst.strategy == "pipeline" and inst.backend == "ring"


def test_budgets_no_single_node_meets_spread_the_model_in_proportion():
    whole = layer_bytes_needed(SMOL, SMOL.n_layers)
    state = cluster(
        node("a", 64 * GB, budget=int(whole * 0.6)),
        node("b", 64 * GB, budget=int(whole * 0.3)),
        node("c", 64 * GB, budget=int(whole * 0.3)),
    )
    inst = place(state, PlaceInstance("smollm2-135m"), SMOL, "i1")
    assert isinstance(inst, Instance), inst
    check_plan(inst, state, SMOL)
    assert inst.strategy == "pipeline" and len(inst.shards) == 3
    layers = {s.node_id: s.end_layer - s.start_layer for s in inst.shards}
    assert layers["a"] > layers["b"] and layers["a"] > layers["c"]


def test_fewest_nodes_and_min_nodes():
    whole = layer_bytes_needed(SMOL, SMOL.n_layers)
    state = cluster(*(node(f"n{i}", 64 * GB, budget=int(whole * 0.55)) for i in range(5)))
    inst = place(state, PlaceInstance("smollm2-135m"), SMOL, "i1")
    assert isinstance(inst, Instance) and len(inst.shards) == 2
    inst = place(state, PlaceInstance("smollm2-135m", min_nodes=3), SMOL, "i1")
    assert isinstance(inst, Instance) and len(inst.shards) == 3
    refused = place(state, PlaceInstance("smollm2-135m", min_nodes=6), SMOL, "i1")
    assert isinstance(refused, NoPlacement) and "min_nodes=6" in refused.reason


def test_tensor_only_when_heads_divide():
    state = cluster(node("a", 8 * GB), node("b", 8 * GB), node("c", 8 * GB))
    # SmolLM2: 9 heads, 3 KV heads. 2 nodes do not divide, 3 do.
    two = place(state, PlaceInstance("smollm2-135m", strategy="tensor", min_nodes=2, backend="ring"), SMOL, "i")
    assert isinstance(two, Instance) and len(two.shards) == 3 and two.strategy == "tensor"
    check_plan(two, state, SMOL)
    small = cluster(node("a", 8 * GB), node("b", 8 * GB))
    refused = place(small, PlaceInstance("smollm2-135m", strategy="tensor", min_nodes=2), SMOL, "i")
    assert isinstance(refused, NoPlacement) and "do not divide by 2" in refused.reason


def test_tensor_needs_one_nth_of_the_model_on_every_node():
    whole = layer_bytes_needed(SMOL, SMOL.n_layers)
    state = cluster(*(node(f"n{i}", 64 * GB, budget=int(whole / 3) + 1) for i in range(3)))
    inst = place(state, PlaceInstance("smollm2-135m", strategy="tensor"), SMOL, "i")
    assert isinstance(inst, Instance) and len(inst.shards) == 3
    check_plan(inst, state, SMOL)
    state = cluster(*(node(f"n{i}", 64 * GB, budget=int(whole / 3) - 10) for i in range(3)))
    refused = place(state, PlaceInstance("smollm2-135m", strategy="tensor"), SMOL, "i")
    assert isinstance(refused, NoPlacement) and "1/3 of the model" in refused.reason


def test_jaccl_only_when_every_node_has_rdma():
    whole = layer_bytes_needed(SMOL, SMOL.n_layers)
    budget = int(whole * 0.55)
    all_rdma = cluster(node("a", GB, budget=budget, rdma=True), node("b", GB, budget=budget, rdma=True))
    inst = place(all_rdma, PlaceInstance("smollm2-135m"), SMOL, "i")
    assert isinstance(inst, Instance) and inst.backend == "jaccl"
    assert place(all_rdma, PlaceInstance("smollm2-135m", backend="ring"), SMOL, "i").backend == "ring"

    mixed = cluster(node("a", GB, budget=budget, rdma=True), node("b", GB, budget=budget))
    inst = place(mixed, PlaceInstance("smollm2-135m"), SMOL, "i")
    assert isinstance(inst, Instance) and inst.backend == "ring"
    refused = place(mixed, PlaceInstance("smollm2-135m", backend="jaccl"), SMOL, "i")
    assert isinstance(refused, NoPlacement) and "RDMA" in refused.reason

    # With backend=jaccl, nodes without RDMA are left out when the others suffice.
    three = cluster(
        node("a", GB, budget=budget, rdma=True), node("z", GB, budget=budget * 2), node("b", GB, budget=budget, rdma=True)
    )
    inst = place(three, PlaceInstance("smollm2-135m", backend="jaccl"), SMOL, "i")
    assert isinstance(inst, Instance) and inst.backend == "jaccl"
    assert {s.node_id for s in inst.shards} == {"a", "b"}
    # A single node never uses jaccl (it needs no data plane at all).
    one = place(cluster(node("a", 8 * GB, rdma=True)), PlaceInstance("smollm2-135m"), SMOL, "i")
    assert one.backend == "ring"


def test_only_worker_nodes_and_reason_without_any():
    state = cluster(node("gw", 64 * GB, roles=("gateway",)))
    refused = place(state, PlaceInstance("smollm2-135m"), SMOL, "i")
    assert isinstance(refused, NoPlacement) and "worker" in refused.reason


def test_prefers_fast_links_when_latencies_are_known():
    whole = layer_bytes_needed(SMOL, SMOL.n_layers)
    budget = int(whole * 0.55)
    state = cluster(*(node(n, GB, budget=budget) for n in "abcd"))
    slow, fast = 0.005, 0.0002
    latency = {(x, y): slow for x in "abcd" for y in "abcd" if x < y}
    latency[("c", "d")] = fast
    inst = place(state, PlaceInstance("smollm2-135m"), SMOL, "i", link_latency=latency)
    assert isinstance(inst, Instance)
    assert {s.node_id for s in inst.shards} == {"c", "d"}
    # Without link data: the nodes with the most memory (here: ids in order).
    inst = place(state, PlaceInstance("smollm2-135m"), SMOL, "i")
    assert {s.node_id for s in inst.shards} == {"a", "b"}


def test_the_links_nodes_measured_and_reported_steer_placement():
    import msgspec

    from shared.facts import Link

    whole = layer_bytes_needed(SMOL, SMOL.n_layers)
    budget = int(whole * 0.55)
    slow, fast = 5.0, 0.2  # ms, as discovery reports them
    nodes = []
    for n in "abcd":
        links = tuple(Link(p, fast if {n, p} == {"c", "d"} else slow) for p in "abcd" if p != n)
        nodes.append(msgspec.structs.replace(node(n, GB, budget=budget), links=links))
    inst = place(cluster(*nodes), PlaceInstance("smollm2-135m"), SMOL, "i")
    assert {s.node_id for s in inst.shards} == {"c", "d"}
    feasible = [o for o in preview(cluster(*nodes), SMOL) if o.feasible and o.n_nodes == 2]
    assert feasible and all({s.node_id for s in o.shards} == {"c", "d"} for o in feasible)


def test_link_aware_choice_orders_ranks_along_the_ring():
    whole = layer_bytes_needed(SMOL, SMOL.n_layers)
    state = cluster(*(node(n, GB, budget=int(whole * 0.3)) for n in "abcd"))
    # A line a - c - b - d: the cheap ring uses those neighbours.
    latency = {(x, y): 0.01 for x in "abcd" for y in "abcd" if x < y}
    latency.update({("a", "c"): 0.001, ("b", "c"): 0.001, ("b", "d"): 0.001})
    inst = place(state, PlaceInstance("smollm2-135m", min_nodes=4), SMOL, "i", link_latency=latency)
    order = [s.node_id for s in inst.shards]
    assert link_cost(order, latency) <= link_cost(list("abcd"), latency)
    assert order in (list("acbd"), list("dbca"))


def test_decide_place_still_calls_place_with_four_arguments():
    from services.master.decide_commands import decide_place

    events, reply = decide_place(cluster(node("a", 8 * GB)), PlaceInstance("smollm2-135m"), "inst-x")
    assert reply.ok and events[0].instance.shards[0].node_id == "a"


# --- the seed's big models on Mac clusters --------------------------------------------------------


@pytest.mark.parametrize("model_id", BIG_CARDS)
def test_big_models_on_eight_macs(model_id):
    card = get_card(model_id)
    state = macs(8)
    inst = place(state, PlaceInstance(model_id), card, "i")
    assert isinstance(inst, Instance), inst
    check_plan(inst, state, card)
    whole = layer_bytes_needed(card, card.n_layers)
    fewest = -(-whole // (180 * GB))  # ceil
    assert len(inst.shards) in (fewest, fewest + 1)  # +1: whole layers may not pack exactly
    assert inst.backend == ("jaccl" if len(inst.shards) > 1 else "ring")


def test_big_model_expectations():
    state = macs(8)
    plans = {m: place(state, PlaceInstance(m), get_card(m), "i") for m in BIG_CARDS}
    n = {m: len(p.shards) for m, p in plans.items()}
    assert n == {"llama-3.3-70b": 1, "deepseek-r1": 3, "qwen-2.5-72b": 1, "mixtral-8x22b": 1, "llama-3.1-405b": 2}
    # DeepSeek R1 across 3 Macs: 61 layers, 21/20/20 within budget.
    assert sorted(s.end_layer - s.start_layer for s in plans["deepseek-r1"].shards) == [20, 20, 21]
    # Tensor parallel: 128 heads never divide by 3; it takes 4 Macs.
    tensor = place(state, PlaceInstance("deepseek-r1", strategy="tensor"), get_card("deepseek-r1"), "i")
    assert isinstance(tensor, Instance) and len(tensor.shards) == 4
    tensor = place(state, PlaceInstance("llama-3.1-405b", strategy="tensor"), get_card("llama-3.1-405b"), "i")
    assert isinstance(tensor, Instance) and len(tensor.shards) == 2


def test_big_models_do_not_fit_on_small_macs_and_say_why():
    state = macs(2, memory=48 * GB, rdma=False)
    refused = place(state, PlaceInstance("deepseek-r1"), get_card("deepseek-r1"), "i")
    assert isinstance(refused, NoPlacement)
    assert "deepseek-r1" in refused.reason and "2 node(s) hold at most" in refused.reason


# --- preview --------------------------------------------------------------------------------------


def test_preview_lists_every_option_with_memory_or_reason():
    state = macs(4)
    card = get_card("deepseek-r1")
    options = preview(state, card)
    keys = [(o.strategy, o.backend, o.n_nodes) for o in options]
    assert keys[0] == ("pipeline", "ring", 1)
    assert len(keys) == 1 + 3 * 4 and len(set(keys)) == len(keys)
    by_key = {(o.strategy, o.backend, o.n_nodes): o for o in options}
    one = by_key["pipeline", "ring", 1]
    assert not one.feasible and "at most" in one.reason and one.memory_per_node
    three = by_key["pipeline", "jaccl", 3]
    assert three.feasible and three.reason is None
    assert set(three.memory_per_node) == {s.node_id for s in three.shards}
    assert all(m <= 180 * GB for m in three.memory_per_node.values())
    assert sum(three.memory_per_node.values()) == pytest.approx(layer_bytes_needed(card, card.n_layers), rel=0.01)
    assert "do not divide by 3" in by_key["tensor", "ring", 3].reason
    assert by_key["tensor", "ring", 4].feasible
    # Every option is JSON-encodable for the gateway.
    assert msgspec.json.decode(msgspec.json.encode(options))[0]["strategy"] == "pipeline"


def test_preview_reasons_for_jaccl_without_rdma():
    state = macs(3, rdma=False)
    options = [o for o in preview(state, get_card("deepseek-r1")) if o.backend == "jaccl"]
    assert options and all(not o.feasible and "RDMA" in o.reason for o in options)


def test_preview_empty_cluster():
    options = preview(ClusterState(), SMOL)
    assert options and all(not o.feasible and "worker" in o.reason for o in options)


# --- scale -----------------------------------------------------------------------------------------


def synthetic_cluster(n: int) -> ClusterState:
    sizes = [16, 24, 32, 36, 48, 64, 96, 128, 192]
    return cluster(*(node(f"node-{i:02d}", sizes[i % len(sizes)] * GB, rdma=i % 5 != 0) for i in range(n)))


def test_placement_over_64_nodes_is_fast():
    state = synthetic_cluster(64)
    latency = {(f"node-{i:02d}", f"node-{j:02d}"): 0.0001 * (1 + (i * 7 + j * 3) % 13) for i in range(64) for j in range(i + 1, 64)}
    requests = [PlaceInstance(m) for m in MODEL_CARDS] + [
        PlaceInstance("deepseek-r1", strategy="tensor"),
        PlaceInstance("llama-3.1-405b", min_nodes=16),
        PlaceInstance("deepseek-r1", backend="jaccl"),
    ]
    for links in ({}, latency):
        worst = 0.0
        for request in requests:
            t0 = time.perf_counter()
            plan = place(state, request, get_card(request.model_id), "i", link_latency=links)
            worst = max(worst, time.perf_counter() - t0)
            assert isinstance(plan, Instance), (request, plan)
            check_plan(plan, state, get_card(request.model_id))
        print(f"64 nodes, {'with' if links else 'without'} link latencies: slowest place() {worst * 1000:.1f} ms")
        assert worst < 0.1
    # Nothing fits: every node count is tried.
    tiny = cluster(*(node(f"t{i:02d}", 1 * GB) for i in range(64)))
    t0 = time.perf_counter()
    refused = place(tiny, PlaceInstance("deepseek-r1"), get_card("deepseek-r1"), "i")
    assert isinstance(refused, NoPlacement) and time.perf_counter() - t0 < 0.1


def test_preview_over_64_nodes_is_quick_enough():
    state = synthetic_cluster(64)
    t0 = time.perf_counter()
    options = preview(state, get_card("llama-3.1-405b"))
    elapsed = time.perf_counter() - t0
    print(f"preview over 64 nodes: {len(options)} options in {elapsed * 1000:.1f} ms")
    assert len(options) == 1 + 63 * 4
    assert elapsed < 1.0
