"""Independent restarts of the worker: kill -9 of the worker mid-stream. Its runner outlives it (it watches the
node's supervisor, not the worker), the supervisor restarts the worker, the new worker adopts the runner from
its registry (<state-dir>/runners/), and nothing else notices: the stream ends normally, the instance stays
ready (the adopted runner's status is kept), the next request is served by the same runner. Stopping the node
still stops the adopted runner, which is no child of the node's processes any more."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable

import openai
import psutil
import pytest

from tests.conftest import MODEL, Node
from tests.integration.test_failover import StreamOutcome, stream_and_kill

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def _pids(node: Node) -> dict | None:
    try:
        return node.pids()
    except (OSError, json.JSONDecodeError):
        return None  # mid-replace


def test_killed_worker_mid_stream_keeps_its_runner(start_node: Callable[..., Node]) -> None:
    node = start_node("worker-restart")
    stopped = False
    try:
        before = node.pids()
        runners = node.runner_pids()
        assert len(runners) == 1, runners
        runner = runners[0]
        assert psutil.Process(runner).ppid() == before["worker"]

        outcome = StreamOutcome()
        thread = threading.Thread(
            target=stream_and_kill, args=(node, lambda: os.kill(before["worker"], signal.SIGKILL), outcome), daemon=True
        )
        thread.start()
        assert outcome.killed.wait(60), "the stream never reached the kill\n" + node.log_tail()
        # From the kill on, the instance must never look unready (the runner still serves; the new worker keeps
        # its status when it adopts it).
        unready = []
        new_pids = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            health = node.try_health()
            if health is not None and not health["ready_instances"]:
                unready.append(time.monotonic() - outcome.killed_at)
            pids = _pids(node)
            if new_pids is None and pids and pids.get("worker") not in (None, before["worker"]):
                new_pids = pids
            adopted = new_pids is not None and _record_owner(node) == new_pids["worker"]
            if adopted and not thread.is_alive():
                break
            time.sleep(0.1)
        thread.join(60)
        assert not thread.is_alive(), "the stream hung after the worker was killed\n" + node.log_tail()
        assert outcome.error is None, f"the stream broke: {outcome.error!r}\n" + node.log_tail()
        assert outcome.finish_reason in ("length", "stop"), outcome
        assert outcome.chunks_after_kill > 0

        # the supervisor restarted the worker; nothing else was restarted
        assert new_pids is not None, "the worker was not restarted\n" + node.log_tail()
        assert psutil.Process(new_pids["worker"]).ppid() == before["supervisor"]
        for name in ("nats-server", "discovery", "master", "gateway", "supervisor"):
            assert new_pids[name] == before[name], f"{name} was restarted too"
        # the new worker adopted the same runner (its registry record names the new worker) and started no other
        assert _record_owner(node) == new_pids["worker"], "the runner was not adopted\n" + node.log_tail()
        assert psutil.pid_exists(runner) and node.runner_pids() == [runner]
        assert psutil.Process(runner).ppid() != new_pids["worker"]  # adopted, not a child
        assert not unready, f"the instance was not ready at {unready[:5]} s after the kill\n" + node.log_tail()
        assert "runner adopted" in (node.log_dir / "worker.log").read_text(errors="replace")

        client = openai.OpenAI(base_url=node.api_url, api_key="none", timeout=60, max_retries=0)
        response = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=10)
        assert "Paris" in response.choices[0].message.content
        assert node.runner_pids() == [runner], "the request was not served by the adopted runner"

        runner_proc = psutil.Process(runner)
        stopped = True
        node.stop()  # asserts the whole tree, the adopted runner included, exits in time
        assert not _alive(runner_proc), "the adopted runner outlived its node"
        assert not list((node.state_dir / "runners").glob("*.json")), "records of stopped runners are left behind"
    finally:
        if not stopped:
            node.stop()


def _record_owner(node: Node) -> int | None:
    records = list((node.state_dir / "runners").glob("*.json"))
    try:
        return json.loads(records[0].read_text())["worker_pid"] if len(records) == 1 else None
    except (OSError, ValueError, KeyError):
        return None


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
