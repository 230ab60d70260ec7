"""The master's pure decisions: services/master/decide_commands.py (placement itself is tested elsewhere)."""

from __future__ import annotations

import msgspec
import pytest

from services.master.decide_commands import (
    MEMORY_CHANGE_WORTH_RECORDING,
    decide_delete,
    decide_place,
    decide_report,
    decide_worker_started,
    facts_event,
    nodes_to_forget,
)
from shared.apply import apply
from shared.commands import (
    DeleteInstance,
    PlaceInstance,
    ReportRunner,
    ReportWorkerStarted,
)
from shared.events import (
    Instance,
    InstanceDeleted,
    InstancePlaced,
    NodeFactsRecorded,
    NodeLost,
    RunnerStatusChanged,
    ShardAssignment,
    WorkerStarted,
)
from shared.facts import NetworkInterface
from shared.state import ClusterState
from tests.unit.factories import GiB, facts

INSTANCE = Instance(
    "inst-1",
    "smollm2-135m",
    "pipeline",
    "ring",
    (ShardAssignment("node-a", 0, 0, 15), ShardAssignment("node-b", 1, 15, 30)),
)


def with_instance(*events) -> ClusterState:
    state = ClusterState()
    for e in (NodeFactsRecorded(facts("node-a")), NodeFactsRecorded(facts("node-b")), InstancePlaced(INSTANCE), *events):
        state = apply(state, e)
    return state


def report(phase="importing", rank=0, node="node-a", detail="", progress=None, instance_id="inst-1") -> ReportRunner:
    return ReportRunner(instance_id, node, rank, phase, detail=detail, progress=progress)


def record(state: ClusterState, cmd: ReportRunner) -> ClusterState:
    events, reply = decide_report(state, cmd)
    assert reply.ok, reply.error
    for e in events:
        state = apply(state, e)
    return state


# --- decide_place -------------------------------------------------------------------------------


def test_place_unknown_model():
    events, reply = decide_place(with_instance(), PlaceInstance("gpt-17"), "inst-new")
    assert events == []
    assert not reply.ok
    assert "unknown model" in reply.error and "gpt-17" in reply.error


def test_place_if_absent_returns_existing_instance():
    events, reply = decide_place(with_instance(), PlaceInstance("smollm2-135m", if_absent=True), "inst-new")
    assert events == []
    assert reply.ok and reply.instance_id == "inst-1"


def test_place_without_if_absent_places_another():
    events, reply = decide_place(with_instance(), PlaceInstance("smollm2-135m"), "inst-new")
    assert reply.ok and reply.instance_id == "inst-new"
    assert len(events) == 1 and isinstance(events[0], InstancePlaced)
    assert events[0].instance.instance_id == "inst-new"


def test_place_with_no_worker_nodes_gives_reason():
    state = apply(ClusterState(), NodeFactsRecorded(facts("node-g", roles=("gateway",))))
    events, reply = decide_place(state, PlaceInstance("smollm2-135m"), "inst-new")
    assert events == []
    assert not reply.ok
    assert reply.error and "worker" in reply.error
    assert reply.instance_id is None


def test_place_with_empty_cluster_gives_reason():
    events, reply = decide_place(ClusterState(), PlaceInstance("smollm2-135m", if_absent=True), "inst-new")
    assert events == [] and not reply.ok and reply.error


def test_place_success_produces_instance_placed():
    state = apply(ClusterState(), NodeFactsRecorded(facts("node-a")))
    events, reply = decide_place(state, PlaceInstance("smollm2-135m"), "inst-new")
    assert reply.ok and reply.error is None and reply.instance_id == "inst-new"
    assert len(events) == 1
    (event,) = events
    assert isinstance(event, InstancePlaced)
    inst = event.instance
    assert inst.instance_id == "inst-new" and inst.model_id == "smollm2-135m"
    assert [s.node_id for s in inst.shards] == ["node-a"]
    # applying the decision makes the instance part of the state
    after = apply(state, event)
    assert after.instances_of("smollm2-135m") == [inst]


def test_place_model_too_big_is_refused_with_reason():
    state = apply(ClusterState(), NodeFactsRecorded(facts("node-a", memory_available=1 * GiB)))
    events, reply = decide_place(state, PlaceInstance("deepseek-r1"), "inst-new")
    assert events == [] and not reply.ok and "deepseek-r1" in reply.error


# --- decide_delete ------------------------------------------------------------------------------


def test_delete_existing():
    events, reply = decide_delete(with_instance(), DeleteInstance("inst-1"))
    assert reply.ok and reply.instance_id == "inst-1"
    assert len(events) == 1 and isinstance(events[0], InstanceDeleted)
    assert events[0].instance_id == "inst-1" and events[0].reason


def test_delete_unknown():
    events, reply = decide_delete(with_instance(), DeleteInstance("inst-404"))
    assert events == []
    assert not reply.ok and "inst-404" in reply.error


# --- decide_report ------------------------------------------------------------------------------


def test_report_first_status_recorded():
    events, reply = decide_report(with_instance(), report("importing", progress=0.0))
    assert reply.ok and reply.instance_id == "inst-1"
    assert events == [RunnerStatusChanged("inst-1", "node-a", 0, "importing", "", 0.0)]


def test_report_unknown_instance_refused():
    events, reply = decide_report(with_instance(), report(instance_id="inst-404"))
    assert events == [] and not reply.ok and "inst-404" in reply.error


@pytest.mark.parametrize("rank,node", [(1, "node-a"), (0, "node-b"), (7, "node-a"), (0, "node-z")])
def test_report_rank_not_on_that_node_refused(rank, node):
    events, reply = decide_report(with_instance(), report(rank=rank, node=node))
    assert events == []
    assert not reply.ok
    assert f"rank {rank}" in reply.error and node in reply.error


def test_report_second_rank_on_its_own_node_accepted():
    events, reply = decide_report(with_instance(), report("ready", rank=1, node="node-b"))
    assert reply.ok and len(events) == 1 and events[0].rank == 1


def test_duplicate_report_dropped():
    state = record(with_instance(), report("loading", detail="layers 0-15"))
    events, reply = decide_report(state, report("loading", detail="layers 0-15"))
    assert events == []
    assert reply.ok and reply.instance_id == "inst-1"


def test_duplicate_ready_dropped():
    state = record(with_instance(), report("ready"))
    events, reply = decide_report(state, report("ready"))
    assert events == [] and reply.ok


def test_detail_change_without_progress_recorded():
    state = record(with_instance(), report("loading", detail="reading"))
    events, _ = decide_report(state, report("loading", detail="warming up"))
    assert len(events) == 1 and events[0].detail == "warming up"


def test_small_progress_steps_dropped():
    state = record(with_instance(), report("importing", progress=0.40))
    for p in (0.41, 0.42, 0.44):
        events, reply = decide_report(state, report("importing", progress=p))
        assert events == [], p
        assert reply.ok


def test_progress_step_of_5_percent_or_more_recorded():
    state = record(with_instance(), report("importing", progress=0.40))
    events, _ = decide_report(state, report("importing", progress=0.46))
    assert len(events) == 1 and events[0].progress == 0.46


def test_progress_measured_from_last_recorded_value():
    """Many small steps add up: 0.40 -> 0.42 -> 0.44 -> 0.46 is recorded at 0.46."""
    state = record(with_instance(), report("importing", progress=0.40))
    recorded = []
    for p in (0.42, 0.44, 0.46, 0.48):
        events, _ = decide_report(state, report("importing", progress=p))
        for e in events:
            recorded.append(e.progress)
            state = apply(state, e)
    assert recorded == [0.46]
    assert state.runner_status("inst-1", 0).progress == 0.46


def test_progress_completion_recorded_even_if_small_step():
    state = record(with_instance(), report("importing", progress=0.98))
    events, _ = decide_report(state, report("importing", progress=1.0))
    assert len(events) == 1 and events[0].progress == 1.0


def test_progress_completion_not_recorded_twice():
    state = record(with_instance(), report("importing", progress=1.0))
    events, _ = decide_report(state, report("importing", progress=1.0))
    assert events == []


def test_progress_step_of_exactly_5_percent_recorded():
    state = record(with_instance(), report("importing", progress=0.10))
    events, _ = decide_report(state, report("importing", progress=0.15))
    assert len(events) == 1


@pytest.mark.parametrize("old,new", [("importing", "loading"), ("loading", "ready"), ("ready", "failed"), ("ready", "stopped")])
def test_phase_change_always_recorded(old, new):
    state = record(with_instance(), report(old, progress=0.5, detail="same"))
    # same progress and detail: only the phase moved
    events, _ = decide_report(state, report(new, progress=0.5, detail="same"))
    assert len(events) == 1 and events[0].phase == new


def test_phase_change_with_tiny_progress_move_recorded():
    state = record(with_instance(), report("importing", progress=0.99))
    events, _ = decide_report(state, report("loading", progress=0.0))
    assert len(events) == 1 and events[0].phase == "loading"


def test_progress_appearing_or_disappearing_recorded():
    state = record(with_instance(), report("loading"))
    events, _ = decide_report(state, report("loading", progress=0.01))
    assert len(events) == 1
    state = apply(state, events[0])
    events, _ = decide_report(state, report("loading", progress=None))
    assert len(events) == 1 and events[0].progress is None


# --- decide_worker_started ----------------------------------------------------------------------


def test_worker_started_with_stale_runners_forgets_them():
    state = record(with_instance(), report("ready"))
    events, reply = decide_worker_started(state, ReportWorkerStarted("node-a"))
    assert reply.ok
    assert events == [WorkerStarted("node-a")]
    after = apply(state, events[0])
    assert after.runner_status("inst-1", 0) is None


def test_worker_started_keeps_the_adopted_runners():
    """A runner that outlived its killed worker and was adopted still serves: its status stays."""
    state = record(with_instance(), report("ready"))
    events, reply = decide_worker_started(state, ReportWorkerStarted("node-a", kept=("inst-1/0",)))
    assert reply.ok and events == []  # nothing stale: nothing to write
    assert state.runner_status("inst-1", 0).phase == "ready"


def test_worker_started_forgets_the_runners_it_did_not_adopt():
    state = record(with_instance(), report("ready"))
    second = Instance("inst-2", "smollm2-135m", "pipeline", "ring", (ShardAssignment("node-a", 0, 0, 30),))
    state = record(apply(state, InstancePlaced(second)), report("ready", instance_id="inst-2"))
    events, reply = decide_worker_started(state, ReportWorkerStarted("node-a", kept=("inst-2/0",)))
    assert reply.ok and events == [WorkerStarted("node-a", kept=("inst-2/0",))]
    after = apply(state, events[0])
    assert after.runner_status("inst-1", 0) is None  # really died: stale, forgotten
    assert after.runner_status("inst-2", 0).phase == "ready"  # adopted: kept


def test_worker_started_without_runners_writes_nothing():
    state = record(with_instance(), report("ready", rank=1, node="node-b"))
    events, reply = decide_worker_started(state, ReportWorkerStarted("node-a"))
    assert reply.ok and events == []


# --- facts_event --------------------------------------------------------------------------------


def test_facts_of_new_node_recorded():
    f = facts("node-new")
    assert facts_event(with_instance(), f) == NodeFactsRecorded(f)


def test_identical_facts_ignored():
    state = with_instance()
    assert facts_event(state, facts("node-a")) is None


def test_small_memory_drift_ignored():
    state = with_instance()  # node-a: 8 GiB available of 16 GiB
    drift = int(16 * GiB * (MEMORY_CHANGE_WORTH_RECORDING - 0.01))
    assert facts_event(state, facts("node-a", memory_available=8 * GiB + drift)) is None
    assert facts_event(state, facts("node-a", memory_available=8 * GiB - drift)) is None


@pytest.mark.parametrize("sign", [1, -1])
def test_memory_change_over_10_percent_recorded(sign):
    state = with_instance()
    change = int(16 * GiB * (MEMORY_CHANGE_WORTH_RECORDING + 0.01))
    new = facts("node-a", memory_available=8 * GiB + sign * change)
    assert facts_event(state, new) == NodeFactsRecorded(new)


@pytest.mark.parametrize(
    "change",
    [
        {"hostname": "renamed"},
        {"memory_budget": 2 * GiB},
        {"memory_total": 32 * GiB},
        {"cpu_count": 4},
        {"backends": ("ring", "jaccl")},
        {"roles": ("worker", "gateway")},
        {"rdma": True},
        {"interfaces": (NetworkInterface("eth0", ("10.0.0.9",)),)},
    ],
    ids=lambda c: next(iter(c)),
)
def test_other_field_change_recorded_even_with_no_memory_drift(change):
    state = with_instance()
    new = facts("node-a", **change)
    assert facts_event(state, new) == NodeFactsRecorded(new)


def test_other_field_change_with_small_memory_drift_recorded():
    state = with_instance()
    new = facts("node-a", memory_available=8 * GiB + 1000, roles=())
    assert facts_event(state, new) == NodeFactsRecorded(new)


def test_drift_accumulates_against_last_recorded_facts():
    """The comparison is with what was recorded, so slow drift is recorded once it adds up."""
    state = with_instance()
    step = int(16 * GiB * 0.04)
    current = 8 * GiB
    recorded = 0
    for _ in range(5):
        current -= step
        event = facts_event(state, facts("node-a", memory_available=current))
        if event is not None:
            recorded += 1
            state = apply(state, event)
    assert recorded >= 1
    assert state.nodes["node-a"].memory_available < 8 * GiB - int(16 * GiB * 0.10)


# --- nodes_to_forget ----------------------------------------------------------------------------


def test_nodes_to_forget_only_silent_ones():
    state = with_instance()
    lost = nodes_to_forget(state, {"node-a": 100.0, "node-b": 125.0}, now=131.0, timeout=10.0)
    assert [n.node_id for n in lost] == ["node-a"]
    assert isinstance(lost[0], NodeLost)
    assert "31" in lost[0].reason


def test_nodes_to_forget_boundary_not_forgotten():
    state = with_instance()
    assert nodes_to_forget(state, {"node-a": 100.0, "node-b": 100.0}, now=110.0, timeout=10.0) == []


def test_nodes_to_forget_without_baseline_keeps_node():
    state = with_instance()
    assert nodes_to_forget(state, {}, now=1e9, timeout=10.0) == []


def test_nodes_to_forget_ignores_last_seen_of_unknown_nodes():
    state = with_instance()
    lost = nodes_to_forget(state, {"node-a": 0.0, "node-b": 0.0, "node-ghost": 0.0}, now=100.0, timeout=10.0)
    assert sorted(n.node_id for n in lost) == ["node-a", "node-b"]


def test_decisions_do_not_mutate_state():
    state = with_instance()
    snapshot = msgspec.json.encode(state)
    decide_place(state, PlaceInstance("smollm2-135m"), "inst-x")
    decide_delete(state, DeleteInstance("inst-1"))
    decide_report(state, report("ready"))
    facts_event(state, facts("node-a", cpu_count=1))
    assert msgspec.json.encode(state) == snapshot
