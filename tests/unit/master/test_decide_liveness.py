"""services/master/decide_liveness.py: a lost node's instances are deleted with a reason and placed again."""

from __future__ import annotations

import itertools

import msgspec

from services.master.decide_liveness import (
    decide_forget_silent_nodes,
    decide_liveness,
    decide_node_loss,
    decide_place_waiting,
)
from shared.apply import apply
from shared.generation import Speculation
from shared.events import (
    GroupMember,
    Instance,
    InstanceAwaitingNodes,
    InstanceDeleted,
    InstancePlaced,
    NodeFactsRecorded,
    NodeLost,
    ShardAssignment,
)
from shared.state import ClusterState
from tests.unit.factories import GiB, facts

MODEL = "smollm2-135m"  # ~123 MB with headroom; 15 layers ~62 MB
MB = 1000**2


def cluster(*nodes, instances=()) -> ClusterState:
    state = ClusterState()
    for e in (*(NodeFactsRecorded(n) for n in nodes), *(InstancePlaced(i) for i in instances)):
        state = apply(state, e)
    return state


def single(instance_id: str, node_id: str) -> Instance:
    return Instance(instance_id, MODEL, "pipeline", "ring", (ShardAssignment(node_id, 0, 0, 30),))


def two_stage(instance_id: str, a: str, b: str) -> Instance:
    return Instance(instance_id, MODEL, "pipeline", "ring", (ShardAssignment(a, 0, 0, 15), ShardAssignment(b, 1, 15, 30)))


def ids():
    counter = itertools.count(1)
    return lambda: f"inst-new-{next(counter)}"


def replay(state: ClusterState, events) -> ClusterState:
    for e in events:
        state = apply(state, e)
    return state


def test_instance_on_the_lost_node_is_deleted_with_a_reason_and_placed_on_another():
    state = cluster(facts("node-a"), facts("node-b"), instances=[single("inst-1", "node-a")])
    events = decide_node_loss(state, [NodeLost("node-a", "no facts for 11 s")], ids())
    assert [type(e) for e in events] == [NodeLost, InstanceDeleted, InstancePlaced]
    deleted, placed = events[1], events[2]
    assert deleted.instance_id == "inst-1" and "node-a" in deleted.reason
    assert placed.instance.instance_id == "inst-new-1"
    assert placed.instance.model_id == MODEL
    assert {s.node_id for s in placed.instance.shards} == {"node-b"}
    after = replay(state, events)
    assert set(after.instances) == {"inst-new-1"} and set(after.nodes) == {"node-b"}


def test_instances_elsewhere_are_left_alone():
    state = cluster(facts("node-a"), facts("node-b"), instances=[single("inst-1", "node-a"), single("inst-2", "node-b")])
    events = decide_node_loss(state, [NodeLost("node-a", "x")], ids())
    assert not any(isinstance(e, InstanceDeleted) and e.instance_id == "inst-2" for e in events)
    assert "inst-2" in replay(state, events).instances


def test_pipeline_across_the_lost_node_is_spread_again_over_the_nodes_left():
    budget = {"memory_budget": 70 * MB}  # no node holds the whole model
    state = cluster(
        facts("node-a", **budget), facts("node-b", **budget), facts("node-c", **budget),
        instances=[two_stage("inst-1", "node-a", "node-b")],
    )  # fmt: skip
    events = decide_node_loss(state, [NodeLost("node-b", "x")], ids())
    placed = [e.instance for e in events if isinstance(e, InstancePlaced)]
    assert len(placed) == 1
    assert {s.node_id for s in placed[0].shards} == {"node-a", "node-c"}
    assert placed[0].strategy == "pipeline"


def test_instance_that_no_longer_fits_waits_for_nodes_and_is_placed_when_one_returns():
    budget = {"memory_budget": 70 * MB}
    state = cluster(facts("node-a", **budget), facts("node-b", **budget), instances=[two_stage("inst-1", "node-a", "node-b")])
    events = decide_node_loss(state, [NodeLost("node-b", "x")], ids())
    assert [type(e) for e in events] == [NodeLost, InstanceDeleted, InstanceAwaitingNodes]
    waits = events[2]
    assert (waits.instance_id, waits.model_id, waits.strategy, waits.backend) == ("inst-1", MODEL, "pipeline", "ring")
    assert "node-b" in waits.reason
    after = replay(state, events)
    assert after.instances == {} and set(after.waiting) == {"inst-1"}
    assert decide_place_waiting(after, ids()) == []  # still does not fit: nothing is written

    back = apply(after, NodeFactsRecorded(facts("node-b", **budget)))
    placed = decide_place_waiting(back, ids())
    assert [type(e) for e in placed] == [InstancePlaced]
    assert {s.node_id for s in placed[0].instance.shards} == {"node-a", "node-b"}
    final = replay(back, placed)
    assert final.waiting == {} and set(final.instances) == {"inst-new-1"}
    assert decide_place_waiting(final, ids()) == []  # placed once


def test_a_waiting_instance_ends_when_its_model_is_placed_or_it_is_deleted():
    budget = {"memory_budget": 70 * MB}
    state = cluster(facts("node-a", **budget), facts("node-b", **budget), instances=[two_stage("inst-1", "node-a", "node-b")])
    after = replay(state, decide_node_loss(state, [NodeLost("node-b", "x")], ids()))
    assert set(after.waiting) == {"inst-1"}
    assert apply(after, InstanceDeleted("inst-1", "deleted on request")).waiting == {}  # the user gave up on it
    elsewhere = apply(after, NodeFactsRecorded(facts("node-c", memory_available=4 * GiB)))
    assert apply(elsewhere, InstancePlaced(single("inst-9", "node-c"))).waiting == {}  # placed by anyone


def test_two_waiting_instances_of_one_model_give_one_instance():
    state = cluster(facts("node-a", memory_budget=70 * MB))
    for old in ("inst-1", "inst-2"):
        state = apply(state, InstanceAwaitingNodes(old, MODEL, "pipeline", "ring", "does not fit"))
    assert decide_place_waiting(state, ids()) == []
    state = apply(state, NodeFactsRecorded(facts("node-e", memory_available=4 * GiB)))
    placed = decide_place_waiting(state, ids())
    assert [type(e) for e in placed] == [InstancePlaced]
    assert replay(state, placed).waiting == {}


def test_two_lost_nodes_in_one_decision():
    """Both lost nodes are gone before anything is placed again; each replacement gets its own id."""
    state = cluster(
        facts("node-a"), facts("node-b"), facts("node-c", memory_available=4 * GiB),
        instances=[single("inst-1", "node-a"), single("inst-2", "node-b")],
    )  # fmt: skip
    events = decide_node_loss(state, [NodeLost("node-a", "x"), NodeLost("node-b", "y")], ids())
    assert [type(e) for e in events] == [NodeLost, NodeLost, InstanceDeleted, InstanceDeleted, InstancePlaced, InstancePlaced]
    placed = [e.instance for e in events if isinstance(e, InstancePlaced)]
    assert [i.instance_id for i in placed] == ["inst-new-1", "inst-new-2"]
    assert all(s.node_id == "node-c" for i in placed for s in i.shards)


def test_unknown_node_writes_nothing():
    state = cluster(facts("node-a"), instances=[single("inst-1", "node-a")])
    assert decide_node_loss(state, [NodeLost("node-ghost", "x")], ids()) == []


def test_forget_silent_nodes_uses_the_baseline_and_replaces():
    state = cluster(facts("node-a"), facts("node-b"), instances=[single("inst-1", "node-a")])
    events = decide_forget_silent_nodes(state, {"node-a": 100.0, "node-b": 129.0}, now=131.0, timeout=10.0, new_instance_id=ids())
    assert [type(e) for e in events] == [NodeLost, InstanceDeleted, InstancePlaced]
    assert decide_forget_silent_nodes(state, {"node-a": 125.0, "node-b": 125.0}, 131.0, 10.0, ids()) == []


def test_decision_does_not_mutate_the_state():
    state = cluster(facts("node-a"), facts("node-b"), instances=[single("inst-1", "node-a")])
    before = (dict(state.nodes), dict(state.instances))
    decide_node_loss(state, [NodeLost("node-a", "x")], ids())
    assert (dict(state.nodes), dict(state.instances)) == before


def test_an_instance_left_on_a_forgotten_node_is_finished_off():
    """A leader that died after appending NodeLost but before InstanceDeleted: its successor, finding no
    silent node, still deletes and re-places the instance whose node the state no longer knows."""
    state = cluster(facts("node-a"), facts("node-b"), instances=[single("inst-1", "node-a")])
    state = apply(state, NodeLost("node-a", "x"))
    events = decide_forget_silent_nodes(state, {"node-b": 130.0}, now=131.0, timeout=10.0, new_instance_id=ids())
    assert [type(e) for e in events] == [InstanceDeleted, InstancePlaced]
    assert "node-a" in events[0].reason
    assert decide_forget_silent_nodes(replay(state, events), {"node-b": 130.0}, 131.0, 10.0, ids()) == []


def test_a_liveness_round_forgets_silent_nodes_then_places_waiting_models():
    budget = {"memory_budget": 70 * MB}
    state = cluster(facts("node-a", **budget), facts("node-b", **budget), facts("node-c", **budget))
    state = apply(state, InstanceAwaitingNodes("inst-1", MODEL, "pipeline", "ring", "does not fit"))
    events = decide_liveness(state, {"node-a": 129.0, "node-b": 129.0, "node-c": 100.0}, 131.0, 10.0, ids())
    assert [type(e) for e in events] == [NodeLost, InstancePlaced]  # placed on what is left after the loss
    assert {s.node_id for s in events[1].instance.shards} == {"node-a", "node-b"}
    assert decide_liveness(replay(state, events), {"node-a": 129.0, "node-b": 129.0}, 131.0, 10.0, ids()) == []


def test_a_group_member_placed_again_keeps_its_role_and_default_directly_or_after_waiting():
    role, default = GroupMember("validator", main="inst-main"), Speculation("ngram", 6)
    member = msgspec.structs.replace(single("inst-1", "node-a"), group=role, speculative=default)
    state = cluster(facts("node-a"), facts("node-b"), instances=[member])
    placed = decide_node_loss(state, [NodeLost("node-a", "x")], ids())[-1]
    assert isinstance(placed, InstancePlaced) and (placed.instance.group, placed.instance.speculative) == (role, default)
    budget = {"memory_budget": 70 * MB}
    split = msgspec.structs.replace(two_stage("inst-1", "node-a", "node-b"), group=role, speculative=default)
    state = cluster(facts("node-a", **budget), facts("node-b", **budget), instances=[split])
    after = replay(state, decide_node_loss(state, [NodeLost("node-b", "x")], ids()))
    assert (after.waiting["inst-1"].group, after.waiting["inst-1"].speculative) == (role, default)
    back = apply(after, NodeFactsRecorded(facts("node-b", **budget)))
    again = decide_place_waiting(back, ids())[0].instance
    assert (again.group, again.speculative) == (role, default)
