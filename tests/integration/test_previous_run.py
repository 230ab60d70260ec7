"""What a killed node leaves behind ends: the bus with its parent (Linux), a left bus at the next start.

Real processes: a real nats-server on this node's configuration, and a real parent killed with -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from services.node.embedded_bus import base_config
from services.node.previous_run import stop_left_bus
from services.node.nats_server import nats_server_argv, write_config
from tests.conftest import REPO_ROOT, free_port


def alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE  # a zombie has ended
    except psutil.NoSuchProcess:
        return False


def poll_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def gone_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def start_bus(state_dir: Path) -> subprocess.Popen:
    config = base_config(state_dir, "node-a", "ab" * 32, "127.0.0.1", free_port(), "127.0.0.1", 0)
    conf = write_config(state_dir, config)
    return subprocess.Popen(nats_server_argv(conf), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def record(state_dir: Path, **pids: int) -> None:
    (state_dir / "pids.json").write_text(json.dumps({k.replace("_", "-"): v for k, v in pids.items()}))


def test_a_bus_left_by_a_killed_run_is_stopped_at_the_next_start(tmp_path: Path) -> None:
    bus = start_bus(tmp_path)
    try:
        record(tmp_path, nats_server=bus.pid, supervisor=gone_pid())
        assert stop_left_bus(tmp_path) == bus.pid
        assert bus.wait(5) is not None  # ours to reap: it is this test's child
    finally:
        bus.kill()


def test_only_what_is_certainly_this_nodes_is_stopped(tmp_path: Path) -> None:
    mine, other = tmp_path / "mine", tmp_path / "other"
    mine.mkdir()
    other.mkdir()
    bus = start_bus(other)  # another node's bus (another state dir) under the recorded pid
    try:
        record(mine, nats_server=bus.pid, supervisor=gone_pid())
        assert stop_left_bus(mine) is None
        record(other, nats_server=bus.pid, supervisor=os.getpid())  # its run is alive: not a leftover
        assert stop_left_bus(other) is None
        assert bus.poll() is None
        (mine / "pids.json").write_text("{not json")
        assert stop_left_bus(mine) is None
        assert stop_left_bus(tmp_path / "never-ran") is None
    finally:
        bus.kill()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_bus_ends_with_its_parent_killed_with_minus_9() -> None:
    parent_code = (
        "import subprocess, sys, time\n"
        "from services.node import die_with_parent\n"
        "child = subprocess.Popen(die_with_parent.argv(['sleep', '120']))\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        child = psutil.Process(int(parent.stdout.readline()))
        assert poll_until(lambda: child.name() == "sleep", 5)  # the wrapper has exec'd the program
        os.kill(parent.pid, signal.SIGKILL)
        assert poll_until(lambda: not alive(child), 5), "the child outlived its parent"
    finally:
        parent.kill()
        parent.wait()
