"""A runner outlives a killed worker, never its node: services/worker/runner/lifetime.py and the registry."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from services.worker.runners import registry
from shared.runner_record import RunnerRecord
from shared.processes import Anchor, create_time, process_alive
from services.worker.runner.lifetime import ADOPTION_TIMEOUT_S, lifetime_verdict


def test_a_runner_with_a_live_worker_stays():
    assert lifetime_verdict(node_alive=True, worker_alive=True, orphaned_since=None, now=10.0) == (None, None)


def test_a_runner_waits_to_be_adopted_after_its_worker_died():
    reason, since = lifetime_verdict(node_alive=True, worker_alive=False, orphaned_since=None, now=10.0)
    assert reason is None and since == 10.0
    reason, since = lifetime_verdict(True, False, since, now=10.0 + ADOPTION_TIMEOUT_S - 1)
    assert reason is None and since == 10.0


def test_an_adopted_runner_is_no_orphan_any_more():
    assert lifetime_verdict(True, True, orphaned_since=10.0, now=40.0) == (None, None)


def test_a_runner_no_worker_adopted_in_time_exits():
    reason, _ = lifetime_verdict(True, False, orphaned_since=10.0, now=10.0 + ADOPTION_TIMEOUT_S)
    assert reason is not None and "adopted" in reason


def test_a_runner_never_outlives_its_node():
    reason, _ = lifetime_verdict(node_alive=False, worker_alive=True, orphaned_since=None, now=10.0)
    assert reason is not None and "supervisor" in reason


def test_registry_round_trip_and_guarded_removal(tmp_path: Path):
    record = RunnerRecord("inst-1", 0, "smollm2-135m", pid=os.getpid(), create_time=create_time(os.getpid()),
                          started_at=1.0, worker_pid=1, worker_create_time=0.0)  # fmt: skip
    path = registry.write_record(tmp_path, record)
    assert path == tmp_path / "runners" / "inst-1-0.json"
    assert registry.read_all(tmp_path) == [(path, record)]
    registry.remove_record(tmp_path, "inst-1", 0, pid=record.pid + 1)  # another runner's: kept
    assert path.exists()
    registry.remove_record(tmp_path, "inst-1", 0, pid=record.pid)
    assert not path.exists() and registry.read_all(tmp_path) == []


def test_unreadable_record_reads_as_none(tmp_path: Path):
    (tmp_path / "runners").mkdir()
    (tmp_path / "runners" / "x-0.json").write_text("{not json")
    assert registry.read_all(tmp_path) == [(tmp_path / "runners" / "x-0.json", None)]


def test_process_alive_checks_the_create_time():
    me, created = os.getpid(), create_time(os.getpid())
    assert process_alive(me, created)
    assert not process_alive(me, created - 5.0)  # the same pid, another process: a reused pid
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = int(done.stdout)
    assert not process_alive(gone, create_time(gone) or 0.0)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="the start since boot is read from /proc (Linux)")
def test_a_step_of_the_wall_clock_does_not_make_a_live_process_look_gone(monkeypatch: pytest.MonkeyPatch):
    """psutil's create time adds the boot time, which Linux derives from the wall clock: a clock step moves it
    (simulated here by moving psutil's boot time). CI saw every service of a node take one for its supervisor's
    death. Anchors hold a process by its start since boot instead."""
    import psutil._pslinux as pslinux

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        parent, me = Anchor.of(os.getppid()), os.getpid()
        named = Anchor.known(child.pid, create_time(child.pid) or 0.0)  # a worker named by a runner record
        mine = create_time(me)
        assert mine is not None and parent.alive() and named.alive() and process_alive(me, mine)
        real = pslinux.boot_time
        monkeypatch.setattr(pslinux, "boot_time", lambda: real() + 100.0)  # the wall clock stepped 100 s ahead
        assert not process_alive(me, mine)  # what a create time says after the step
        assert parent.alive() and named.alive()  # what the anchors say
        # Left as it was: a create time recorded before the step no longer matches when first read after it.
        assert not Anchor.known(child.pid, (create_time(child.pid) or 0.0) - 100.0).alive()
    finally:
        child.kill()
        child.wait()
    assert not named.alive()  # gone is still gone


def test_the_supervisor_passes_its_own_pid_to_the_services():
    """run_node, in the supervisor, names its own pid in every service's spec: runners watch that pid (the worker
    passes it on in theirs), so they never outlive the node."""
    from services.node.cli import run_node  # noqa: F401 - the caller, which passes os.getpid()
    from services.node.node_config import node_config, node_parser, service_specs

    config = node_config(node_parser().parse_args([]), {})
    specs = service_specs(config, Path("/tmp/x"), "nats://127.0.0.1:4222", 0, os.getpid())
    assert {spec.common.supervisor_pid for spec in specs.values()} == {os.getpid()}


WATCHER = """
import asyncio, os, sys
from services.worker.runner.lifetime import watch_lifetime

async def main():
    stop = asyncio.Event()  # the pids as a RunnerSpec names them: the node's supervisor, the worker (none: parent)
    worker = int(os.environ["TEST_WORKER_PID"]) if "TEST_WORKER_PID" in os.environ else None
    asyncio.create_task(watch_lifetime(stop, int(sys.argv[2]), worker, None, timeout=float(sys.argv[1])))
    await stop.wait()

asyncio.run(main())
"""


def _watcher(timeout: float, supervisor_pid: int, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WATCHER, str(timeout), str(supervisor_pid)], **kw)


def test_a_runner_process_exits_when_the_supervisor_dies():
    supervisor = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    watcher = _watcher(600.0, supervisor.pid)
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            watcher.wait(1.5)  # its worker (us) and its node live: it stays
        supervisor.kill()
        supervisor.wait()
        assert watcher.wait(10) == 0
    finally:
        for p in (supervisor, watcher):
            p.kill()
            p.wait()


def test_a_runner_process_no_worker_adopts_exits_after_the_timeout():
    # The "worker" starts the runner, then dies (exits); the node (us) lives on and nothing adopts the runner.
    start_and_die = (
        "import os, subprocess, sys; env = {**os.environ, 'TEST_WORKER_PID': str(os.getpid())};"
        "print(subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, env=env).pid)"
    )
    worker = subprocess.run(
        [sys.executable, "-c", start_and_die, sys.executable, "-c", WATCHER, "2.0", str(os.getpid())],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    orphan = psutil.Process(int(worker.stdout))
    started = time.monotonic()
    psutil.wait_procs([orphan], timeout=15)
    assert not orphan.is_running() or orphan.status() == psutil.STATUS_ZOMBIE, "the orphaned runner never exited"
    assert time.monotonic() - started >= 1.0  # it waited for an adoption first
