"""The worker's next actions: plan(state, local, node_id, now) -> actions. Pure; no I/O."""

from __future__ import annotations

import msgspec

from shared.events import Instance, ShardAssignment
from shared.ids import InstanceId
from shared.state import ClusterState, runner_key

from shared.runner_record import RunnerRecord

# A runner that keeps dying is started again forever, each wait twice the last, up to a cap: giving up after a few
# tries left the instance failed for good while nothing else would place it (issue 17).
RESTART_BACKOFF_FIRST_S = 1.0  # before the 2nd start
RESTART_BACKOFF_MAX_S = 30.0
HEALTHY_RUN_S = 60.0  # a runner that served this long starts again with a clean slate of attempts


class LocalRunner(msgspec.Struct):
    """What the worker knows of a runner it started (or tried to)."""

    instance_id: str
    rank: int
    running: bool
    attempts: int = 0
    last_exit_at: float | None = None
    started_at: float | None = None
    # The log sequence up to which failures of the other ranks are behind it: the state's at its start (or its
    # adoption), then that of the failure it was stopped for. A later failure stops it (see _stop_for_failed_siblings).
    seen_seq: int = 0


def record_exit(runner: LocalRunner, now: float) -> None:
    """A runner process ended: it may be restarted after its backoff; one that served long enough starts over."""
    if runner.started_at is not None and now - runner.started_at >= HEALTHY_RUN_S:
        runner.attempts = 0
    runner.running = False
    runner.last_exit_at = now


class StartRunner(msgspec.Struct, frozen=True):
    instance: Instance
    shard: ShardAssignment


class StopRunner(msgspec.Struct, frozen=True):
    instance_id: str
    reason: str


class RestartRunner(msgspec.Struct, frozen=True):
    """Stop the process but keep the runner: it starts again after its backoff (an expected exit)."""

    instance_id: str
    reason: str
    failure_seq: int  # becomes the runner's seen_seq: one stop per failure


Action = StartRunner | StopRunner | RestartRunner


def my_shards(state: ClusterState, node_id: str) -> list[tuple[Instance, ShardAssignment]]:
    return [(inst, shard) for inst in state.instances.values() for shard in inst.shards if shard.node_id == node_id]


def plan(state: ClusterState, local: dict[str, LocalRunner], node_id: str, now: float) -> list[Action]:
    return _stop_orphans(state, local) + _stop_for_failed_siblings(state, local) + _start_missing(
        state, local, node_id, now)  # fmt: skip


def _stop_for_failed_siblings(state: ClusterState, local: dict[str, LocalRunner]) -> list[Action]:
    """Another rank of an instance whose runner runs here failed after ours started: ours waits on a group
    that is gone (a follower blocked in a collective may never notice), so stop it; it starts again after its
    backoff and the ranks form a new group. Our own rank's failure is not a sibling's."""
    actions: list[Action] = []
    for key_id, runner in local.items():
        instance_id = InstanceId(key_id)
        instance = state.instances.get(instance_id)
        if not runner.running or instance is None:
            continue
        failed = [(state.failures[key], shard.rank) for shard in instance.shards if shard.rank != runner.rank
                  and state.failures.get(key := runner_key(instance_id, shard.rank), 0) > runner.seen_seq]  # fmt: skip
        if failed:
            seq, rank = max(failed)
            status = state.runner_status(instance_id, rank)
            detail = status.detail[:200] if status is not None and status.phase == "failed" else ""
            actions.append(RestartRunner(instance_id, f"rank {rank} failed: {detail}", seq))
    return actions


def _stop_orphans(state: ClusterState, local: dict[str, LocalRunner]) -> list[Action]:
    return [
        StopRunner(instance_id, reason="instance deleted")
        for instance_id, runner in local.items()
        if runner.running and instance_id not in state.instances
    ]


def _start_missing(state: ClusterState, local: dict[str, LocalRunner], node_id: str, now: float) -> list[Action]:
    actions: list[Action] = []
    for instance, shard in my_shards(state, node_id):
        runner = local.get(instance.instance_id)
        if runner is None:
            actions.append(StartRunner(instance, shard))
        elif not runner.running and _may_restart(runner, now):
            actions.append(StartRunner(instance, shard))
    return actions


def restart_backoff(attempts: int) -> float:
    """The wait after the exit of start number `attempts` before the next one: 1 s, 2 s, 4 s ... up to the cap."""
    if attempts <= 0:
        return 0.0
    return min(RESTART_BACKOFF_FIRST_S * 2.0 ** min(attempts - 1, 32), RESTART_BACKOFF_MAX_S)


def next_start_due(runner: LocalRunner) -> float | None:
    """When (monotonic seconds) the plan starts this runner again; None while it runs."""
    if runner.running:
        return None
    if runner.last_exit_at is None:
        return float("-inf")  # never ran to an exit we know of: start now
    return runner.last_exit_at + restart_backoff(runner.attempts)


def _may_restart(runner: LocalRunner, now: float) -> bool:
    due = next_start_due(runner)
    return due is not None and now >= due


class Adoption(msgspec.Struct, frozen=True):
    """What a (re)started worker does with the runners its registry records (see services/worker/runners/registry.py)."""

    adopt: list[RunnerRecord]  # alive and still wanted: keep serving, watch them
    stop: list[tuple[RunnerRecord, str]]  # alive but not wanted any more: stop them (by pid), with the reason
    forget: list[RunnerRecord]  # gone (or a reused pid): only their records remain, remove them


def triage_recorded(
    state: ClusterState, records: list[RunnerRecord], alive: set[int], node_id: str
) -> Adoption:
    """`alive`: the pids of recorded runners whose process still runs with the recorded create time."""
    adopt: list[RunnerRecord] = []
    stop: list[tuple[RunnerRecord, str]] = []
    forget: list[RunnerRecord] = []
    wanted: dict[tuple[str, int], Instance] = {(i.instance_id, s.rank): i for i, s in my_shards(state, node_id)}
    taken: set[tuple[str, int]] = set()
    for record in records:
        key = (record.instance_id, record.rank)
        instance = wanted.get(key)
        if record.pid not in alive:
            forget.append(record)
        elif instance is None:
            stop.append((record, "instance deleted or its shard moved while the worker was down"))
        elif instance.model_id != record.model_id:
            stop.append((record, f"runs {record.model_id}, the instance wants {instance.model_id}"))
        elif key in taken:
            stop.append((record, "a second runner for the same shard"))
        else:
            taken.add(key)
            adopt.append(record)
    return Adoption(adopt, stop, forget)


def adopted_runner(record: RunnerRecord, now: float, wall_now: float, seq: int = 0) -> LocalRunner:
    """The plan's view of an adopted runner: running, one attempt, started when the process started; failures
    up to `seq` (the state's at the adoption) are behind it."""
    return LocalRunner(
        record.instance_id, record.rank, running=True, attempts=1,
        started_at=now - max(0.0, wall_now - record.create_time), seen_seq=seq,
    )  # fmt: skip
