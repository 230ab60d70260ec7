"""The worker's pure plan: services/worker/plan.py."""

from __future__ import annotations

import pytest

from services.worker.plan import (
    HEALTHY_RUN_S,
    RESTART_BACKOFF_FIRST_S,
    RESTART_BACKOFF_MAX_S,
    Adoption,
    RestartRunner,
    LocalRunner,
    StartRunner,
    StopRunner,
    adopted_runner,
    my_shards,
    next_start_due,
    plan,
    record_exit,
    restart_backoff,
    triage_recorded,
)
from shared.runner_record import RunnerRecord
from shared.apply import apply
from shared.events import Instance, InstanceDeleted, InstancePlaced, ShardAssignment
from shared.state import ClusterState

ME = "node-me"
OTHER = "node-other"

SHARED = Instance(
    "inst-1", "smollm2-135m", "pipeline", "ring", (ShardAssignment(OTHER, 0, 0, 15), ShardAssignment(ME, 1, 15, 30))
)
ONLY_OTHER = Instance("inst-2", "smollm2-135m", "pipeline", "ring", (ShardAssignment(OTHER, 0, 0, 30),))
ONLY_ME = Instance("inst-3", "llama-3.3-70b", "tensor", "ring", (ShardAssignment(ME, 0, 0, 80),))


def state_with(*instances: Instance) -> ClusterState:
    state = ClusterState()
    for inst in instances:
        state = apply(state, InstancePlaced(inst))
    return state


def test_start_missing_runner_for_my_shard():
    actions = plan(state_with(SHARED), {}, ME, now=100.0)
    assert actions == [StartRunner(SHARED, SHARED.shards[1])]
    assert actions[0].shard.node_id == ME and actions[0].shard.rank == 1


def test_nothing_for_shards_of_other_nodes():
    assert plan(state_with(ONLY_OTHER), {}, ME, now=100.0) == []


def test_nothing_on_empty_state():
    assert plan(ClusterState(), {}, ME, now=0.0) == []


def test_start_one_per_instance_of_mine_only():
    actions = plan(state_with(SHARED, ONLY_OTHER, ONLY_ME), {}, ME, now=100.0)
    assert all(isinstance(a, StartRunner) for a in actions)
    assert sorted(a.instance.instance_id for a in actions) == ["inst-1", "inst-3"]
    assert all(a.shard.node_id == ME for a in actions)


def test_my_shards():
    pairs = my_shards(state_with(SHARED, ONLY_OTHER, ONLY_ME), ME)
    assert sorted((i.instance_id, s.rank) for i, s in pairs) == [("inst-1", 1), ("inst-3", 0)]


def test_running_runner_left_alone():
    local = {"inst-1": LocalRunner("inst-1", 1, running=True, attempts=1)}
    assert plan(state_with(SHARED), local, ME, now=100.0) == []


def test_stop_orphaned_runner_after_instance_deleted():
    state = state_with(SHARED)
    local = {"inst-1": LocalRunner("inst-1", 1, running=True, attempts=1)}
    assert plan(state, local, ME, now=100.0) == []
    state = apply(state, InstanceDeleted("inst-1", reason="deleted on request"))
    actions = plan(state, local, ME, now=100.0)
    assert len(actions) == 1
    assert isinstance(actions[0], StopRunner) and actions[0].instance_id == "inst-1"
    assert actions[0].reason


def test_no_stop_for_an_exited_orphan():
    state = state_with()
    local = {"inst-1": LocalRunner("inst-1", 1, running=False, attempts=1, last_exit_at=50.0)}
    assert plan(state, local, ME, now=100.0) == []


def test_stop_orphan_and_start_new_in_one_plan():
    state = state_with(ONLY_ME)
    local = {"inst-1": LocalRunner("inst-1", 1, running=True, attempts=1)}
    actions = plan(state, local, ME, now=100.0)
    assert StopRunner("inst-1", reason=actions[0].reason) in actions
    assert StartRunner(ONLY_ME, ONLY_ME.shards[0]) in actions
    assert len(actions) == 2


# --- restarts -----------------------------------------------------------------------------------


def exited(attempts: int, at: float) -> dict[str, LocalRunner]:
    return {"inst-1": LocalRunner("inst-1", 1, running=False, attempts=attempts, last_exit_at=at)}


def test_backoff_doubles_from_the_first_wait_up_to_the_cap():
    waits = [restart_backoff(n) for n in range(0, 12)]
    assert waits[0] == 0.0  # the first start does not wait
    assert waits[1] == RESTART_BACKOFF_FIRST_S > 0
    assert waits[2] == 2 * waits[1] and waits[3] == 2 * waits[2]
    assert waits == sorted(waits)
    assert max(waits) == RESTART_BACKOFF_MAX_S == waits[-1]
    assert restart_backoff(10_000) == RESTART_BACKOFF_MAX_S  # no overflow however often it died


def test_next_start_due_is_the_exit_time_plus_the_backoff():
    assert next_start_due(LocalRunner("inst-1", 1, running=True, attempts=3)) is None
    assert next_start_due(exited(3, at=100.0)["inst-1"]) == 100.0 + restart_backoff(3)
    never_exited = LocalRunner("inst-1", 1, running=False, attempts=1, last_exit_at=None)
    assert next_start_due(never_exited) == float("-inf")


def test_restart_after_first_exit_waits_first_backoff():
    state = state_with(SHARED)
    first = restart_backoff(1)
    assert plan(state, exited(1, at=100.0), ME, now=100.0) == []
    assert plan(state, exited(1, at=100.0), ME, now=100.0 + first - 0.01) == []
    assert plan(state, exited(1, at=100.0), ME, now=100.0 + first) == [StartRunner(SHARED, SHARED.shards[1])]


def test_restart_after_second_exit_waits_longer():
    state = state_with(SHARED)
    first, second = restart_backoff(1), restart_backoff(2)
    assert second > first
    assert plan(state, exited(2, at=100.0), ME, now=100.0 + first) == []
    assert plan(state, exited(2, at=100.0), ME, now=100.0 + second - 0.01) == []
    assert len(plan(state, exited(2, at=100.0), ME, now=100.0 + second)) == 1


@pytest.mark.parametrize("attempts", [3, 4, 10, 1000])
def test_a_runner_that_died_many_times_is_still_restarted_after_the_capped_wait(attempts):
    """Issue 17: after 3 attempts the runner used to stay down for good."""
    state = state_with(SHARED)
    wait = restart_backoff(attempts)
    assert wait <= RESTART_BACKOFF_MAX_S
    assert plan(state, exited(attempts, at=0.0), ME, now=wait - 0.01) == []
    assert plan(state, exited(attempts, at=0.0), ME, now=wait) == [StartRunner(SHARED, SHARED.shards[1])]


def test_exited_without_exit_time_restarts_at_once():
    state = state_with(SHARED)
    local = {"inst-1": LocalRunner("inst-1", 1, running=False, attempts=1, last_exit_at=None)}
    assert len(plan(state, local, ME, now=0.0)) == 1


def simulate_crashing_runner(state, local, crash, until: float, step: float = 0.5) -> list[float]:
    """Simulate the worker: each StartRunner makes attempts+1 and marks the start time; `crash(now, started)`
    says whether the runner dies at `now`, and record_exit records it. Returns the start times."""
    now, starts = 0.0, []
    while now < until:
        runner = local.get("inst-1")
        if runner is not None and runner.running and crash(now, runner.started_at):
            record_exit(runner, now)
        for action in plan(state, local, ME, now):
            assert isinstance(action, StartRunner)
            previous = local.get("inst-1")
            local["inst-1"] = LocalRunner("inst-1", 1, running=True,
                                          attempts=(previous.attempts if previous else 0) + 1, started_at=now)
            starts.append(now)
        now += step
    return starts


def test_a_runner_that_always_crashes_keeps_being_started_with_doubling_capped_waits():
    starts = simulate_crashing_runner(state_with(SHARED), {}, crash=lambda now, started: True, until=600.0)
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert len(starts) > 20, "restarts stopped"
    for n, gap in enumerate(gaps, start=1):  # the crash is seen one step after the start
        assert restart_backoff(n) + 0.5 <= gap < restart_backoff(n) + 1.0 + 1e-9
    assert all(gap <= RESTART_BACKOFF_MAX_S + 1.0 for gap in gaps)
    assert gaps[-1] >= RESTART_BACKOFF_MAX_S


def test_a_healthy_run_resets_the_backoff():
    """Five fast crashes build up a long wait; a run longer than HEALTHY_RUN_S then crashes: restarted after the
    first wait again, not the long one."""
    state, local = state_with(SHARED), {}
    healthy_from = 40.0

    def crash(now, started):
        return now < healthy_from or now - started >= HEALTHY_RUN_S + 1

    starts = simulate_crashing_runner(state, local, crash, until=healthy_from + 2 * HEALTHY_RUN_S)
    healthy_start = max(s for s in starts if s <= healthy_from + RESTART_BACKOFF_MAX_S)
    after = [s for s in starts if s > healthy_start]
    assert after, "not restarted after the healthy run crashed"
    crashed_at = healthy_start + HEALTHY_RUN_S + 1
    assert after[0] - crashed_at <= RESTART_BACKOFF_FIRST_S + 0.5


def test_plan_does_not_mutate_inputs():
    state = state_with(SHARED)
    local = exited(1, at=0.0)
    before = (local["inst-1"].running, local["inst-1"].attempts, local["inst-1"].last_exit_at)
    plan(state, local, ME, now=100.0)
    assert (local["inst-1"].running, local["inst-1"].attempts, local["inst-1"].last_exit_at) == before
    assert set(local) == {"inst-1"}


def test_record_exit_resets_attempts_only_after_a_healthy_run():
    from services.worker.plan import HEALTHY_RUN_S, record_exit

    crashed_fast = LocalRunner("inst-1", 1, running=True, attempts=2, started_at=100.0)
    record_exit(crashed_fast, 100.0 + HEALTHY_RUN_S / 2)
    assert (crashed_fast.running, crashed_fast.attempts, crashed_fast.last_exit_at) == (False, 2, 100.0 + HEALTHY_RUN_S / 2)

    served_long = LocalRunner("inst-1", 1, running=True, attempts=3, started_at=100.0)
    record_exit(served_long, 100.0 + HEALTHY_RUN_S + 1)
    assert served_long.attempts == 0 and not served_long.running


def stop_for_failed_sibling(event, local: dict[str, LocalRunner], me: str, seq: int = 5):  # noqa: ANN001, ANN201
    """The plan's stop for `event` (applied at log sequence `seq`), or None: the sibling rule is part of plan()."""
    del me  # the rule compares ranks: ours is the runner's own
    state = apply(state_with(SHARED), event, seq)
    stops = [a for a in plan(state, local, ME, now=100.0) if isinstance(a, RestartRunner)]
    return stops[0] if stops else None


def test_a_failed_sibling_rank_stops_our_runner_but_not_our_own_report():
    from shared.events import RunnerStatusChanged

    local = {"inst-1": LocalRunner("inst-1", 1, running=True, attempts=1)}
    sibling = RunnerStatusChanged("inst-1", OTHER, 0, "failed", "runner exited with code -9")
    stop = stop_for_failed_sibling(sibling, local, ME)
    assert stop is not None and stop.instance_id == "inst-1" and "rank 0 failed" in stop.reason
    assert stop_for_failed_sibling(RunnerStatusChanged("inst-1", ME, 1, "failed", "x"), local, ME) is None
    assert stop_for_failed_sibling(RunnerStatusChanged("inst-1", OTHER, 0, "loading"), local, ME) is None
    assert stop_for_failed_sibling(RunnerStatusChanged("inst-2", OTHER, 0, "failed"), local, ME) is None
    local["inst-1"].running = False
    assert stop_for_failed_sibling(sibling, local, ME) is None


def test_a_sibling_failure_stops_our_runner_once_and_not_a_restarted_one():
    """As state, the rule needs the sequence of the failure: else the failed status, still in the state, would
    stop our runner again each plan, and stop its restart too."""
    from shared.events import RunnerStatusChanged

    state = apply(state_with(SHARED), RunnerStatusChanged("inst-1", OTHER, 0, "failed", "lost"), 7)
    state = apply(state, RunnerStatusChanged("inst-1", OTHER, 0, "loading"), 8)  # the sibling is back already
    runner = LocalRunner("inst-1", 1, running=True, attempts=1, seen_seq=6)
    assert plan(state, {"inst-1": runner}, ME, now=100.0) == [RestartRunner("inst-1", "rank 0 failed: ", 7)]
    runner.seen_seq = 7  # what the worker does with the action: the next plan leaves it alone
    assert plan(state, {"inst-1": runner}, ME, now=100.0) == []
    restarted = LocalRunner("inst-1", 1, running=True, attempts=2, seen_seq=state.last_seq)  # started after it
    assert plan(state, {"inst-1": restarted}, ME, now=100.0) == []
    again = apply(state, RunnerStatusChanged("inst-1", OTHER, 0, "failed", "lost again"), 9)
    assert plan(again, {"inst-1": restarted}, ME, now=100.0) == [RestartRunner("inst-1", "rank 0 failed: lost again", 9)]
    assert apply(again, InstanceDeleted("inst-1", reason="deleted on request")).failures == {}


# --- adoption of runners that outlived a killed worker ------------------------------------------


def recorded(instance_id: str, rank: int, pid: int, model_id: str = "smollm2-135m") -> RunnerRecord:
    return RunnerRecord(instance_id, rank, model_id, pid, create_time=1000.0 + pid, started_at=1000.0,
                        worker_pid=7, worker_create_time=900.0)  # fmt: skip


def test_alive_and_wanted_runner_is_adopted():
    record = recorded("inst-1", 1, pid=11)
    decision = triage_recorded(state_with(SHARED), [record], alive={11}, node_id=ME)
    assert decision == Adoption(adopt=[record], stop=[], forget=[])


def test_dead_runner_record_is_forgotten_even_when_wanted():
    record = recorded("inst-1", 1, pid=11)
    decision = triage_recorded(state_with(SHARED), [record], alive=set(), node_id=ME)
    assert decision == Adoption(adopt=[], stop=[], forget=[record])


def test_alive_runner_of_a_deleted_instance_is_stopped():
    record = recorded("inst-1", 1, pid=11)
    state = apply(state_with(SHARED), InstanceDeleted("inst-1", reason="gone"))
    decision = triage_recorded(state, [record], alive={11}, node_id=ME)
    assert decision.adopt == [] and decision.forget == []
    assert [r for r, _ in decision.stop] == [record]


def test_alive_runner_of_a_shard_now_elsewhere_or_another_rank_is_stopped():
    on_other_node = recorded("inst-2", 0, pid=12)  # inst-2's only shard is on OTHER
    wrong_rank = recorded("inst-1", 0, pid=13)  # rank 0 of inst-1 is OTHER's
    decision = triage_recorded(state_with(SHARED, ONLY_OTHER), [on_other_node, wrong_rank], alive={12, 13}, node_id=ME)
    assert decision.adopt == []
    assert [r for r, _ in decision.stop] == [on_other_node, wrong_rank]


def test_runner_of_another_model_is_stopped():
    record = recorded("inst-3", 0, pid=14, model_id="smollm2-135m")  # inst-3 is llama-3.3-70b
    decision = triage_recorded(state_with(ONLY_ME), [record], alive={14}, node_id=ME)
    assert decision.adopt == [] and [r for r, _ in decision.stop] == [record]


def test_second_runner_for_one_shard_is_stopped():
    first, second = (recorded("inst-3", 0, pid=p, model_id="llama-3.3-70b") for p in (15, 16))
    decision = triage_recorded(state_with(ONLY_ME), [first, second], alive={15, 16}, node_id=ME)
    assert decision.adopt == [first] and [r for r, _ in decision.stop] == [second]


def test_adopted_runner_is_not_started_again_and_counts_its_age():
    state = state_with(SHARED)
    record = recorded("inst-1", 1, pid=11)  # its process started at 1011.0 (wall clock)
    runner = adopted_runner(record, now=500.0, wall_now=1011.0 + HEALTHY_RUN_S)
    assert runner.running and runner.attempts == 1 and runner.started_at == 500.0 - HEALTHY_RUN_S
    assert plan(state, {"inst-1": runner}, ME, now=500.0) == []
    record_exit(runner, now=500.0)  # it served long enough: a crash now starts over with a clean slate
    assert runner.attempts == 0
    assert plan(state, {"inst-1": runner}, ME, now=500.0) == [StartRunner(SHARED, SHARED.shards[1])]


def test_adopted_runner_of_a_deleted_instance_is_stopped_by_the_plan():
    runner = adopted_runner(recorded("inst-1", 1, pid=11), now=500.0, wall_now=1012.0)
    assert plan(ClusterState(), {"inst-1": runner}, ME, now=500.0) == [StopRunner("inst-1", reason="instance deleted")]
