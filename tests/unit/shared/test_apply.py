"""The state reducer shared/apply.py over every event type, and the ClusterState helpers."""

from __future__ import annotations

import pytest

from shared.apply import apply
from shared.events import (
    Instance,
    InstanceDeleted,
    InstancePlaced,
    LeaderElected,
    NodeFactsRecorded,
    NodeLost,
    RunnerStatusChanged,
    ShardAssignment,
    WorkerStarted,
)
from shared.state import ClusterState, runner_key
from tests.unit.factories import GiB, facts


def instance(instance_id: str, model_id: str = "smollm2-135m", nodes: tuple[str, ...] = ("node-a", "node-b")) -> Instance:
    per = 30 // len(nodes)
    shards = tuple(ShardAssignment(n, rank, rank * per, (rank + 1) * per) for rank, n in enumerate(nodes))
    return Instance(instance_id, model_id, "pipeline", "ring", shards)


def status(instance_id: str, rank: int, phase: str = "ready", node_id: str = "node-a", **kw) -> RunnerStatusChanged:
    return RunnerStatusChanged(instance_id, node_id, rank, phase, **kw)  # type: ignore[arg-type]


def replay(*events) -> ClusterState:
    state = ClusterState()
    for e in events:
        state = apply(state, e)
    return state


# --- NodeFactsRecorded / NodeLost ---------------------------------------------------------------


def test_node_facts_recorded_adds_node():
    f = facts("node-a")
    state = apply(ClusterState(), NodeFactsRecorded(f))
    assert state.nodes == {"node-a": f}


def test_node_facts_recorded_replaces_previous_facts_of_same_node():
    old, new = facts("node-a", 8 * GiB), facts("node-a", 2 * GiB)
    state = replay(NodeFactsRecorded(old), NodeFactsRecorded(facts("node-b")), NodeFactsRecorded(new))
    assert state.nodes["node-a"] == new
    assert set(state.nodes) == {"node-a", "node-b"}


def test_node_lost_removes_only_that_node():
    state = replay(NodeFactsRecorded(facts("node-a")), NodeFactsRecorded(facts("node-b")))
    state = apply(state, NodeLost("node-a", reason="silent"))
    assert set(state.nodes) == {"node-b"}


def test_node_lost_for_unknown_node_is_harmless():
    state = replay(NodeFactsRecorded(facts("node-a")))
    after = apply(state, NodeLost("node-zzz", reason="never seen"))
    assert after.nodes == state.nodes


def test_node_lost_keeps_instances_but_forgets_that_nodes_runners():
    """Losing a node drops what its runners said (stale); deleting its instances is a separate decision."""
    inst = instance("inst-1")
    state = replay(
        NodeFactsRecorded(facts("node-a")),
        NodeFactsRecorded(facts("node-b")),
        InstancePlaced(inst),
        status("inst-1", 0, node_id="node-a"),
        status("inst-1", 1, node_id="node-b"),
    )
    after = apply(state, NodeLost("node-a", reason="silent"))
    assert after.instances == {"inst-1": inst}
    assert after.runner_status("inst-1", 0) is None
    assert after.runner_status("inst-1", 1) is not None
    assert not after.instance_ready("inst-1")


# --- WorkerStarted ------------------------------------------------------------------------------


def test_worker_started_forgets_runners_of_that_node_only():
    a, b = instance("inst-1"), instance("inst-2", nodes=("node-a",))
    state = replay(
        NodeFactsRecorded(facts("node-a")),
        InstancePlaced(a),
        InstancePlaced(b),
        status("inst-1", 0, node_id="node-a"),
        status("inst-1", 1, node_id="node-b"),
        status("inst-2", 0, node_id="node-a"),
    )
    after = apply(state, WorkerStarted("node-a"))
    assert set(after.runners) == {runner_key("inst-1", 1)}
    assert after.nodes == state.nodes  # the node itself is still there
    assert after.instances == state.instances


def test_worker_started_keeps_the_runners_it_adopted():
    a = instance("inst-1")
    state = replay(
        InstancePlaced(a), InstancePlaced(instance("inst-2", nodes=("node-a",))),
        status("inst-1", 0, node_id="node-a"), status("inst-1", 1, node_id="node-b"),
        status("inst-2", 0, node_id="node-a"),
    )  # fmt: skip
    after = apply(state, WorkerStarted("node-a", kept=(runner_key("inst-2", 0),)))
    assert set(after.runners) == {runner_key("inst-1", 1), runner_key("inst-2", 0)}


def test_worker_started_without_kept_decodes_from_an_old_log():
    from shared.events import decode_event

    assert decode_event(b'{"type":"WorkerStarted","node_id":"node-a"}') == WorkerStarted("node-a")


def test_worker_started_without_runners_is_harmless():
    state = replay(InstancePlaced(instance("inst-1")), status("inst-1", 1, node_id="node-b"))
    after = apply(state, WorkerStarted("node-a"))
    assert after.runners == state.runners


# --- InstancePlaced / InstanceDeleted -----------------------------------------------------------


def test_instance_placed_adds_instance():
    inst = instance("inst-1")
    state = apply(ClusterState(), InstancePlaced(inst))
    assert state.instances == {"inst-1": inst}
    assert state.instances["inst-1"].world_size == 2


def test_instance_deleted_drops_instance_and_its_runners_only():
    a, b = instance("inst-1"), instance("inst-2")
    state = replay(
        InstancePlaced(a),
        InstancePlaced(b),
        status("inst-1", 0),
        status("inst-1", 1, node_id="node-b"),
        status("inst-2", 0),
    )
    assert len(state.runners) == 3
    after = apply(state, InstanceDeleted("inst-1", reason="test"))
    assert set(after.instances) == {"inst-2"}
    assert set(after.runners) == {runner_key("inst-2", 0)}


def test_instance_deleted_does_not_drop_runners_of_an_instance_whose_id_shares_a_prefix():
    state = replay(InstancePlaced(instance("inst-1")), InstancePlaced(instance("inst-10")), status("inst-10", 0))
    after = apply(state, InstanceDeleted("inst-1", reason="test"))
    assert set(after.instances) == {"inst-10"}
    assert after.runner_status("inst-10", 0) is not None


def test_instance_deleted_unknown_is_harmless():
    state = replay(InstancePlaced(instance("inst-1")))
    after = apply(state, InstanceDeleted("inst-404", reason="test"))
    assert after.instances == state.instances


# --- RunnerStatusChanged ------------------------------------------------------------------------


def test_runner_status_recorded_and_latest_wins():
    state = replay(
        InstancePlaced(instance("inst-1")),
        status("inst-1", 0, "importing", progress=0.4),
        status("inst-1", 0, "loading"),
    )
    current = state.runner_status("inst-1", 0)
    assert current is not None and current.phase == "loading"
    assert state.runner_status("inst-1", 1) is None


def test_runner_status_for_unknown_instance_is_ignored():
    state = replay(InstancePlaced(instance("inst-1")))
    after = apply(state, status("inst-gone", 0))
    assert after.runners == {}
    assert after is state or after == state


def test_runner_status_after_delete_is_ignored():
    state = replay(InstancePlaced(instance("inst-1")), InstanceDeleted("inst-1", reason="x"), status("inst-1", 0))
    assert state.runners == {}
    assert state.instances == {}


# --- LeaderElected ------------------------------------------------------------------------------


def test_leader_elected_sets_leader_and_term():
    state = replay(LeaderElected("node-a", 3))
    assert (state.leader_node_id, state.leader_term) == ("node-a", 3)
    state = apply(state, LeaderElected("node-b", 9))
    assert (state.leader_node_id, state.leader_term) == ("node-b", 9)


@pytest.mark.parametrize("term", [9, 4], ids=["same term", "older term"])
def test_leader_elected_with_a_term_not_newer_is_ignored(term):
    """Terms only grow: a stale or forged claim must not unseat the leader (it could not write anyway)."""
    state = replay(LeaderElected("node-a", 9))
    after = apply(state, LeaderElected("node-impostor", term), seq=12)
    assert (after.leader_node_id, after.leader_term) == ("node-a", 9)
    assert after.last_seq == 12


def test_no_leader_before_the_first_election():
    assert (ClusterState().leader_node_id, ClusterState().leader_term) == (None, 0)


# --- last_seq -----------------------------------------------------------------------------------


def test_last_seq_set_when_given():
    state = apply(ClusterState(), LeaderElected("node-a", 1), seq=7)
    assert state.last_seq == 7
    state = apply(state, NodeFactsRecorded(facts("node-a")), seq=8)
    assert state.last_seq == 8


def test_last_seq_kept_when_not_given():
    state = apply(ClusterState(), LeaderElected("node-a", 1), seq=7)
    state = apply(state, NodeFactsRecorded(facts("node-a")))
    assert state.last_seq == 7


def test_last_seq_advances_even_for_an_ignored_event():
    """A follower must not re-read an event it skipped: the seq moves even when the state does not."""
    state = apply(ClusterState(), status("inst-gone", 0), seq=3)
    assert state.last_seq == 3
    assert state.runners == {}


def test_default_last_seq_is_zero():
    assert ClusterState().last_seq == 0


# --- immutability -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "event",
    [
        NodeFactsRecorded(facts("node-c")),
        NodeLost("node-a", reason="x"),
        InstancePlaced(instance("inst-3")),
        InstanceDeleted("inst-1", reason="x"),
        status("inst-1", 1, "failed", node_id="node-b"),
        LeaderElected("node-b", 2),
        WorkerStarted("node-a"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_apply_leaves_old_state_unchanged(event):
    before = replay(
        NodeFactsRecorded(facts("node-a")),
        NodeFactsRecorded(facts("node-b")),
        InstancePlaced(instance("inst-1")),
        status("inst-1", 0),
        LeaderElected("node-a", 1),
    )
    snapshot = (dict(before.nodes), dict(before.instances), dict(before.runners), before.leader_node_id, before.last_seq)
    after = apply(before, event, seq=99)
    assert after is not before
    assert after != before
    assert (dict(before.nodes), dict(before.instances), dict(before.runners), before.leader_node_id, before.last_seq) == snapshot
    assert before.last_seq == 0 and after.last_seq == 99


def test_default_states_do_not_share_mutable_dicts():
    a = apply(ClusterState(), NodeFactsRecorded(facts("node-a")))
    assert ClusterState().nodes == {}
    assert a.nodes != ClusterState().nodes


# --- ClusterState helpers -----------------------------------------------------------------------


def test_instance_runners_in_rank_order_with_none_for_missing():
    state = replay(InstancePlaced(instance("inst-1")), status("inst-1", 1, "loading", node_id="node-b"))
    runners = state.instance_runners("inst-1")
    assert len(runners) == 2
    assert runners[0] is None
    assert runners[1] is not None and runners[1].rank == 1 and runners[1].phase == "loading"


def test_instance_ready_only_when_every_rank_ready():
    state = replay(InstancePlaced(instance("inst-1")))
    assert not state.instance_ready("inst-1")
    state = apply(state, status("inst-1", 0, "ready"))
    assert not state.instance_ready("inst-1")
    state = apply(state, status("inst-1", 1, "loading", node_id="node-b"))
    assert not state.instance_ready("inst-1")
    state = apply(state, status("inst-1", 1, "ready", node_id="node-b"))
    assert state.instance_ready("inst-1")
    state = apply(state, status("inst-1", 0, "failed"))
    assert not state.instance_ready("inst-1")


def test_instances_of_filters_by_model():
    a = instance("inst-1", "smollm2-135m")
    b = instance("inst-2", "llama-3.3-70b")
    c = instance("inst-3", "smollm2-135m")
    state = replay(InstancePlaced(a), InstancePlaced(b), InstancePlaced(c))
    assert sorted(i.instance_id for i in state.instances_of("smollm2-135m")) == ["inst-1", "inst-3"]
    assert state.instances_of("llama-3.3-70b") == [b]
    assert state.instances_of("nope") == []
