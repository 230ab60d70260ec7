"""services/node/supervisor.py: backoff arithmetic, and a real Supervisor over tiny child processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from services.node import supervisor as sup
from services.node.supervisor import (
    BACKOFF_MAX_S,
    BACKOFF_START_S,
    HEALTHY_AFTER_S,
    ChildSpec,
    Supervisor,
    next_backoff,
)

SLEEPER = [sys.executable, "-c", "import time; time.sleep(30)"]

# --- next_backoff -------------------------------------------------------------------------------


def test_first_backoff_is_the_start():
    assert next_backoff(0.0, ran_for=0.1) == BACKOFF_START_S


def test_backoff_doubles_while_crashing_fast():
    b = next_backoff(0.0, 0.1)
    seen = [b]
    for _ in range(4):
        b = next_backoff(b, 0.1)
        seen.append(b)
    assert seen == [BACKOFF_START_S * 2**i for i in range(5)]


def test_backoff_capped():
    b = 0.0
    for _ in range(50):
        b = next_backoff(b, 0.1)
    assert b == BACKOFF_MAX_S
    assert next_backoff(BACKOFF_MAX_S, 0.1) == BACKOFF_MAX_S
    assert next_backoff(BACKOFF_MAX_S * 0.75, 0.1) == BACKOFF_MAX_S


def test_backoff_resets_after_a_healthy_run():
    assert next_backoff(BACKOFF_MAX_S, ran_for=HEALTHY_AFTER_S) == BACKOFF_START_S
    assert next_backoff(8.0, ran_for=HEALTHY_AFTER_S + 100) == BACKOFF_START_S
    assert next_backoff(8.0, ran_for=HEALTHY_AFTER_S - 0.01) == 16.0


def test_a_service_killed_after_serving_a_while_restarts_as_fast_every_time():
    """Issue 17: five kills of a gateway that had served 15 s each: the waits doubled to 8 s by the fifth. A
    healthy period resets the backoff, so the fifth crash is not slower than the first."""
    waits, b = [], 0.0
    for _ in range(5):
        b = next_backoff(b, ran_for=15.0)
        waits.append(b)
    assert waits == [BACKOFF_START_S] * 5


def test_a_crash_loop_during_start_still_backs_off():
    """A service dying within its start (a few seconds) is the loop the backoff is for: it keeps doubling."""
    waits, b = [], 0.0
    for _ in range(4):
        b = next_backoff(b, ran_for=3.0)
        waits.append(b)
    assert waits == [BACKOFF_START_S * 2**i for i in range(4)]


# --- a real supervisor --------------------------------------------------------------------------


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def wait_for(predicate, timeout: float, what: str):  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.02)
    pytest.fail(f"no {what} within {timeout} s")


def read_pids(path: Path) -> dict[str, int]:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}


@pytest.fixture
def pid_file(tmp_path: Path) -> Path:
    return tmp_path / "pids.json"


@pytest.fixture
async def supervisor(pid_file: Path):
    s = Supervisor(pid_file)
    yield s
    if not s.stopping:
        await s.stop()
    for c in s.children:  # never leave a child behind, whatever the test did
        if c.proc is not None and c.proc.returncode is None:
            c.proc.kill()
            await c.proc.wait()


async def test_start_writes_pids(supervisor: Supervisor, pid_file: Path):
    child = await supervisor.start(ChildSpec("sleeper", SLEEPER))
    pids = read_pids(pid_file)
    assert pids["sleeper"] == child.proc.pid
    assert pids["supervisor"] == os.getpid()
    assert alive(child.proc.pid)


async def test_child_env_is_passed(supervisor: Supervisor, tmp_path: Path):
    out = tmp_path / "env.txt"
    argv = [sys.executable, "-c", f"import os; open({str(out)!r}, 'w').write(os.environ['EXO_TEST_X'])"]
    await supervisor.start(ChildSpec("env", argv, env={"EXO_TEST_X": "hello"}))
    await wait_for(lambda: out.exists() and out.read_text() == "hello", 10, "env file")


async def test_killed_child_restarted_after_backoff(supervisor: Supervisor, pid_file: Path):
    child = await supervisor.start(ChildSpec("sleeper", SLEEPER))
    first = child.proc.pid
    killed_at = time.monotonic()
    os.kill(first, signal.SIGKILL)
    new = await wait_for(lambda: read_pids(pid_file).get("sleeper") not in (None, first) and read_pids(pid_file)["sleeper"], 10, "new pid")
    waited = time.monotonic() - killed_at
    assert waited >= BACKOFF_START_S * 0.9, f"restarted after {waited:.2f} s, before the backoff"
    assert new == child.proc.pid
    assert alive(new) and not alive(first)
    assert child.restarts == 1
    assert child.backoff == BACKOFF_START_S


async def test_second_crash_waits_longer(supervisor: Supervisor, pid_file: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(sup, "BACKOFF_START_S", 0.1)
    child = await supervisor.start(ChildSpec("sleeper", SLEEPER))
    pids = [child.proc.pid]
    for _ in range(2):
        os.kill(pids[-1], signal.SIGKILL)
        pids.append(await wait_for(lambda: (p := read_pids(pid_file).get("sleeper")) not in pids and p, 10, "new pid"))
    assert child.restarts == 2
    assert child.backoff == pytest.approx(0.2)


async def test_stop_ends_children_and_removes_pid_file(supervisor: Supervisor, pid_file: Path):
    a = await supervisor.start(ChildSpec("a", SLEEPER))
    b = await supervisor.start(ChildSpec("b", SLEEPER))
    pids = [a.proc.pid, b.proc.pid]
    started = time.monotonic()
    await supervisor.stop()
    assert time.monotonic() - started < 5
    assert a.proc.returncode == -signal.SIGTERM and b.proc.returncode == -signal.SIGTERM
    assert not any(alive(p) for p in pids)
    assert not pid_file.exists()


async def test_no_restart_after_stop(supervisor: Supervisor, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(sup, "BACKOFF_START_S", 0.05)
    child = await supervisor.start(ChildSpec("sleeper", SLEEPER))
    await supervisor.stop()
    await asyncio.sleep(0.3)
    assert child.restarts == 0
    assert child.proc.returncode is not None


async def test_stop_during_backoff_does_not_restart(supervisor: Supervisor):
    child = await supervisor.start(ChildSpec("sleeper", SLEEPER))
    first = child.proc.pid
    os.kill(first, signal.SIGKILL)
    await wait_for(lambda: child.proc.returncode is not None, 5, "exit seen")
    await supervisor.stop()  # within the 0.5 s backoff
    await asyncio.sleep(BACKOFF_START_S + 0.3)
    assert child.proc.pid == first and child.restarts == 0


async def test_child_ignoring_sigterm_is_killed_after_grace(
    supervisor: Supervisor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(sup, "STOP_GRACE_S", 0.5)
    ready = tmp_path / "ready"
    code = (
        "import signal, time, pathlib; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        f"pathlib.Path({str(ready)!r}).touch(); time.sleep(30)"
    )
    stubborn = await supervisor.start(ChildSpec("stubborn", [sys.executable, "-c", code]))
    await wait_for(ready.exists, 10, "SIGTERM handler installed")
    started = time.monotonic()
    await supervisor.stop()
    took = time.monotonic() - started
    assert stubborn.proc.returncode == -signal.SIGKILL
    assert not alive(stubborn.proc.pid)
    assert 0.4 <= took < 3, took


async def test_bus_stopped_after_services(supervisor: Supervisor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Services stop first (they may still talk to the bus while stopping), then the bus."""
    log = tmp_path / "order.log"

    def child(name: str) -> list[str]:
        code = (
            "import signal, sys, time\n"
            "def bye(*_):\n"
            f"    time.sleep({0.3 if name == 'worker' else 0.0})\n"
            f"    open({str(log)!r}, 'a').write({name!r} + '\\n'); sys.exit(0)\n"
            "signal.signal(signal.SIGTERM, bye)\n"
            f"open({str(log)!r} + '.{name}', 'w').close()\n"
            "time.sleep(30)\n"
        )
        return [sys.executable, "-c", code]

    await supervisor.start(ChildSpec(sup.BUS_CHILD, child("bus")))
    await supervisor.start(ChildSpec("worker", child("worker")))
    await wait_for(lambda: all(Path(f"{log}.{n}").exists() for n in ("bus", "worker")), 10, "children ready")
    await supervisor.stop()
    assert log.read_text().split() == ["worker", "bus"]


async def test_restart_all_starts_the_services_only_after_the_new_bus(supervisor: Supervisor, tmp_path: Path):
    """The formation restart: no service may start again while the old bus still runs (one service slow to
    stop kept it up, and a fast one, restarted by its watcher, connected to the old bus: CI saw its master
    mix the old log into the new cluster's state). Every child starts again exactly once, the bus first."""
    log = tmp_path / "starts.log"

    def child(name: str, stop_s: float) -> list[str]:
        code = (
            "import signal, sys, time\n"
            "def bye(*_):\n"
            f"    time.sleep({stop_s}); sys.exit(0)\n"
            "signal.signal(signal.SIGTERM, bye)\n"
            f"open({str(log)!r}, 'a').write({name!r} + '\\n')\n"
            "time.sleep(60)\n"
        )
        return [sys.executable, "-c", code]

    await supervisor.start(ChildSpec("fast", child("fast", 0.0)))
    await supervisor.start(ChildSpec(sup.BUS_CHILD, child("bus", 0.0)))
    await supervisor.start(ChildSpec("slow", child("slow", 1.5)))  # longer than the first restart backoff
    starts = lambda: log.read_text().split() if log.exists() else []  # noqa: E731
    await wait_for(lambda: len(starts()) == 3, 10, "three children started")
    ready = []

    async def bus_ready() -> None:
        await wait_for(lambda: starts().count("bus") == 2, 10, "the new bus started")
        ready.append(sorted(starts()[3:]))

    await supervisor.restart_all(bus_ready=bus_ready)
    await wait_for(lambda: len(starts()) == 6, 10, "every child started again")
    await asyncio.sleep(sup.BACKOFF_START_S + 1.0)  # a watcher that restarts on its own would do so by now
    assert sorted(starts()[3:]) == ["bus", "fast", "slow"], starts()
    assert starts()[3] == "bus", f"a service started again before the bus: {starts()}"
    assert ready == [["bus"]], f"services started before the new bus was ready: {starts()}"
    pids = read_pids(supervisor.pid_file)
    assert all(alive(pids[name]) for name in ("fast", sup.BUS_CHILD, "slow"))
