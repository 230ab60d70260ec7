"""Real `exo` nodes for the tests: start one as a subprocess with its own state dir and ports, inspect it, stop
it and assert that its whole process tree exits. The fixtures that use them are in tests/conftest.py."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import nats.errors
import psutil
import pytest

from shared.cluster_secret import nats_client_credentials, nats_credentials, write_private

if TYPE_CHECKING:
    from tests.shared_models import SharedModels

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m"
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 15.0
START_ATTEMPTS = 3  # free ports are picked, then bound by the node: another process may take one between


TEST_CLUSTER_SECRET = "5e" * 32

def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(deque(f, maxlen=lines))
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"


@dataclass
class Node:
    """A running `exo` node started by the tests."""

    name: str
    state_dir: Path
    port: int
    nats_port: int
    output_path: Path
    proc: subprocess.Popen
    stopped: bool = False
    _tree: dict[int, psutil.Process] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/v1"

    @property
    def nats_url(self) -> str:
        """The node's bus, with the credentials derived from the tests' cluster secret."""
        user, password = nats_client_credentials(TEST_CLUSTER_SECRET)
        return f"nats://{user}:{password}@127.0.0.1:{self.nats_port}"

    def nats_url_as(self, role: str) -> str:
        """The node's bus as one of the roles of shared/bus_roles.py (e.g. the master, to write the log)."""
        user, password = nats_credentials(TEST_CLUSTER_SECRET, role)
        return f"nats://{user}:{password}@127.0.0.1:{self.nats_port}"

    @property
    def nats_url_without_credentials(self) -> str:
        return f"nats://127.0.0.1:{self.nats_port}"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    # -- inspection -------------------------------------------------------------------------------

    def pids(self) -> dict[str, int]:
        """The supervisor's pids.json: {"nats-server": pid, "discovery": pid, ..., "supervisor": pid}."""
        return json.loads((self.state_dir / "pids.json").read_text())

    def runner_pids(self) -> list[int]:
        """Runner subprocesses: the children of the worker, then the runners it adopted (they outlived a killed
        worker and are no one's children here; the worker's registry <state-dir>/runners/ records them)."""
        try:
            worker = psutil.Process(self.pids()["worker"])
            pids = [p.pid for p in worker.children() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        except (psutil.NoSuchProcess, FileNotFoundError, KeyError):
            pids = []
        return pids + [p.pid for p in self.recorded_runners() if p.pid not in pids]

    def recorded_runners(self) -> list[psutil.Process]:
        """Live processes of the runner registry (pid and create time as recorded: a reused pid is not one)."""
        found = []
        for path in sorted((self.state_dir / "runners").glob("*.json")):
            try:
                record = json.loads(path.read_text())
                proc = psutil.Process(record["pid"])
                if abs(proc.create_time() - record["create_time"]) < 0.01 and _is_alive(proc):
                    found.append(proc)
            except (OSError, ValueError, KeyError, psutil.Error):
                continue
        return found

    def runner_logs(self) -> list[Path]:
        return sorted(self.log_dir.glob("runner-*.log"))

    def log_tail(self, lines: int = 40) -> str:
        """The tail of the node's console output, then of each service's log file."""
        parts = [f"== {self.output_path.name} (console of exo) ==\n{_tail(self.output_path, lines)}"]
        for path in sorted(self.log_dir.glob("*.log")):
            parts.append(f"== {path.name} ==\n{_tail(path, lines // 2)}")
        return "\n".join(parts)

    def health(self, timeout: float = 5.0) -> dict:
        response = httpx.get(f"{self.base_url}/health", timeout=timeout)
        response.raise_for_status()
        return response.json()

    def runner_details(self) -> list[str]:
        """The ready status of each ready runner of the cluster's instances (`GET /instances`): what it runs."""
        response = httpx.get(f"{self.base_url}/instances", timeout=10)
        response.raise_for_status()
        return [r["detail"] for i in response.json()["instances"] for r in i["runners"] if r["phase"] == "ready"]

    def try_health(self) -> dict | None:
        try:
            return self.health(timeout=2.0)
        except (httpx.HTTPError, ValueError):
            return None

    def wait_until(self, predicate: Callable[[dict], bool], timeout: float, what: str) -> dict:
        """Poll /health until predicate(health) holds; fail with the node's logs otherwise."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"node {self.name} exited with {self.proc.returncode} while waiting for {what}\n"
                            + self.log_tail())  # fmt: skip
            last = self.try_health()
            if last is not None and predicate(last):
                return last
            time.sleep(0.25)
        pytest.fail(f"node {self.name}: no {what} within {timeout:.0f} s; last /health: {last}\n" + self.log_tail())

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> dict:
        return self.wait_until(lambda h: bool(h["ready_instances"]), timeout, "ready instance")

    # -- stopping ---------------------------------------------------------------------------------

    def process_tree(self) -> list[psutil.Process]:
        """The supervisor and every process below it (services run in sessions of their own, so by parentage),
        and the runners that outlived a killed worker (re-parented away from the tree, still the node's)."""
        try:
            root = psutil.Process(self.proc.pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            tree = []
        return tree + [p for p in self.recorded_runners() if p.pid not in {t.pid for t in tree}]

    def stop(self) -> None:
        """SIGTERM the node (what Ctrl-C does) and assert that its whole process tree exits in time."""
        if self.stopped:
            return
        self.stopped = True
        tree = self.process_tree()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
        _, alive = psutil.wait_procs(tree, timeout=max(0.1, deadline - time.monotonic()))
        alive = [p for p in alive if _is_alive(p)]
        if alive or self.proc.poll() is None:
            described = [_describe(p) for p in alive]
            for p in alive:
                try:
                    p.kill()
                except psutil.NoSuchProcess:
                    pass
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            pytest.fail(
                f"node {self.name}: still running {STOP_TIMEOUT_S:.0f} s after SIGTERM: {described}\n" + self.log_tail()
            )
        assert not (self.state_dir / "pids.json").exists(), "the supervisor left pids.json behind"


def _is_alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _describe(p: psutil.Process) -> str:
    try:
        return f"{p.pid} {' '.join(p.cmdline())[:120]}"
    except psutil.Error:
        return str(p.pid)


def poll_until(predicate: Callable[[], object], timeout: float, what: str, logs: Callable[[], str]) -> object:
    """Poll until predicate() is truthy and return it; fail with logs() otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"no {what} within {timeout:.0f} s\n" + logs())


def wait_for(predicate: Callable[[], object], timeout: float, what: str, node: Node) -> object:
    """Poll until predicate() is truthy and return it; fail with the node's logs otherwise."""
    return poll_until(predicate, timeout, what, node.log_tail)


async def micro_replies(nc, subject: str, wait: float = 1.0) -> list[dict]:  # noqa: ANN001 - a nats client
    """Every reply to one request on `subject` (e.g. $SRV.PING: one per micro service), until `wait` passes quietly."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    await nc.publish(subject, b"", reply=inbox)
    replies = []
    try:
        while True:
            replies.append(json.loads((await sub.next_msg(timeout=wait)).data))
    except nats.errors.TimeoutError:
        pass
    await sub.unsubscribe()
    return replies


def launch_node(state_root: Path, name: str, *extra_args: str, models: SharedModels | None = None) -> Node:
    """Start `exo` with its own state dir and free ports; returns once the API answers /health.

    With a model (the default) it also waits for a ready instance. With `models`, the node's store starts with
    the session's imported model (the node imports it itself otherwise)."""
    env = {**os.environ, "EXO_CONSOLE_LOGS": "1", "PYTHONUNBUFFERED": "1"}
    wants_model = "--no-model" not in extra_args
    for attempt in range(1, START_ATTEMPTS + 1):
        state_dir = state_root / f"{name}-{attempt}"
        state_dir.mkdir(parents=True)
        if models is not None:
            models.link_into(state_dir / "models")
        port, nats_port = free_port(), free_port()
        while nats_port == port:
            nats_port = free_port()
        output_path = state_dir / "exo-console.log"
        argv = [sys.executable, "-m", "services.node.cli", "--state-dir", str(state_dir),
                "--port", str(port), "--nats-port", str(nats_port), *extra_args]  # fmt: skip
        # Nodes of the tests share one secret (so --nats-url joins work) but never find each other by
        # accident: each beacons on a UDP port of its own and none takes bus routes, unless a test says so.
        if "--cluster-secret" not in extra_args and "--cluster-secret-file" not in extra_args:
            secret_file = state_root / "cluster-secret"  # a file, as users should: never on a command line
            write_private(secret_file, TEST_CLUSTER_SECRET)
            argv += ["--cluster-secret-file", str(secret_file)]
        if "--discovery-port" not in extra_args:
            argv += ["--discovery-port", str(free_udp_port())]
        if "--route-port" not in extra_args:
            argv += ["--route-port", "0"]
        with open(output_path, "wb") as out:
            proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        node = Node(name, state_dir, port, nats_port, output_path, proc)
        # The gateway answering is not enough when its port was taken by someone else: it must be ours.
        # Checked once: a node that meets its first peer just after it started restarts its services, so a
        # second look could catch the gateway between two lives.
        deadline = time.monotonic() + 60.0
        ours = False
        while time.monotonic() < deadline and proc.poll() is None and not ours:
            ours = node.try_health() is not None and _own_gateway(node)
            if not ours:
                time.sleep(0.25)
        if proc.poll() is not None or not ours:
            output = _tail(output_path, 60)
            node.stopped = True
            exit_code = proc.poll()  # before we kill it
            if exit_code is None:
                _kill_tree(node)
            if "is taken" in output or "address already in use" in output.lower():
                continue  # lost a race for a port; try others
            how = "its gateway never answered" if exit_code is None else f"exit code {exit_code}"
            pytest.fail(f"node {name} did not start ({how})\n" + node.log_tail(60))
        if wants_model:
            try:
                node.wait_ready()
            except BaseException:
                _kill_tree(node)
                node.stopped = True
                raise
        return node
    pytest.fail(f"node {name}: no free ports after {START_ATTEMPTS} attempts")


def _own_gateway(node: Node) -> bool:
    """True when the process listening on the API port belongs to this node's tree."""
    try:
        gateway_pid = node.pids()["gateway"]
    except (OSError, ValueError, KeyError):
        return False
    try:
        conns = psutil.Process(gateway_pid).net_connections(kind="tcp")
    except psutil.Error:
        return False
    return any(c.status == psutil.CONN_LISTEN and c.laddr.port == node.port for c in conns)


def _kill_tree(node: Node) -> None:
    for p in reversed(node.process_tree()):
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    try:
        node.proc.wait(10)
    except subprocess.TimeoutExpired:
        pass
