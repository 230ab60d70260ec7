"""Three hosts as network namespaces on one bridge, each running plain `exo` with the same cluster secret and
nothing else: no peers, no ports. They must find each other, form one bus and one cluster, spread a model
across themselves, keep streaming when the leader's master is killed, and survive a host cut off and healed
(the model, which fits on no two hosts, waits while the host is cut off and is placed again once it is back).

The hosts share this machine's file system, so the tests read each host's state dir (pids, peers.json)
directly. Skipped, with the reason, where namespaces cannot be made (not root, no iproute2).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import psutil
import pytest

from shared.cluster_secret import beacon_key
from tests.conftest import MODEL, REPO_ROOT, _tail, keep_or_remove_state, poll_until
from tests.shared_models import SharedModels
from tests.netns_lab import Lab, skip_reason

pytestmark = pytest.mark.slow

SECRET = "7a" * 32
API_PORT = 8080
DISCOVERY_PORT = 52416  # the default: nothing is configured
BUDGET = "45MB"  # no host holds the model alone (see test_cluster.py)


@dataclass
class Host:
    index: int
    address: str
    state_dir: Path
    proc: subprocess.Popen
    output: Path

    @property
    def base_url(self) -> str:
        return f"http://{self.address}:{API_PORT}"

    def health(self) -> dict | None:
        try:
            r = httpx.get(f"{self.base_url}/health", timeout=3)
            return r.json() if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None

    def pids(self) -> dict[str, int]:
        return json.loads((self.state_dir / "pids.json").read_text())

    def node_id(self) -> str:
        return (self.state_dir / "node_id").read_text().strip()

    def peers(self) -> list[dict]:
        try:
            return json.loads((self.state_dir / "peers.json").read_text())["peers"]
        except (OSError, ValueError, KeyError):
            return []

    def logs(self) -> str:
        parts = [f"== host {self.index} console ==\n{_tail(self.output, 40)}"]
        for path in sorted((self.state_dir / "logs").glob("*.log")):
            parts.append(f"== host {self.index} {path.name} ==\n{_tail(path, 15)}")
        return "\n".join(parts)


def wait_for(what: str, predicate, timeout: float, hosts: list[Host]):  # noqa: ANN001, ANN201 - any predicate
    return poll_until(predicate, timeout, what, lambda: "\n".join(h.logs() for h in hosts))


def start_host(lab: Lab, i: int, root: Path, models: SharedModels, hostname: str | None = "") -> Host:
    """`hostname`: "" names host i `host<i>`; None leaves the OS one, which every namespace shares (clones)."""
    state_dir = root / f"host{i}"
    state_dir.mkdir()
    models.link_into(state_dir / "models")  # the session's imported model: no GGUF conversion per host
    output = state_dir / "console.log"
    env = {k: v for k, v in os.environ.items() if k != "EXO_HOSTNAME"}
    env |= {"EXO_CONSOLE_LOGS": "1", "PYTHONUNBUFFERED": "1"}
    if hostname is not None:
        env["EXO_HOSTNAME"] = hostname or f"host{i}"
    argv = [*lab.run_in(i), sys.executable, "-m", "services.node.cli", "--state-dir", str(state_dir),
            "--host", "0.0.0.0", "--no-model", "--memory", BUDGET, "--cluster-secret", SECRET]  # fmt: skip
    with open(output, "wb") as out:
        proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    return Host(i, lab.address(i), state_dir, proc, output)


def stop_host(host: Host) -> None:
    tree = []
    try:
        root = psutil.Process(host.proc.pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        pass
    if host.proc.poll() is None:
        host.proc.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(tree, timeout=20)
    for p in alive:
        p.kill()


@pytest.fixture(scope="module")
def hosts(request: pytest.FixtureRequest, shared_models: SharedModels) -> Iterator[list[Host]]:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    lab = Lab(3).up()
    root = Path(tempfile.mkdtemp(prefix="exo-netns-"))
    started: list[Host] = []
    try:
        started = [start_host(lab, i, root, shared_models) for i in range(3)]
        started[0].lab = lab  # type: ignore[attr-defined] - the tests that cut links need it
        for host in started:
            wait_for(f"host {host.index} starting", lambda host=host: (host.state_dir / "node_id").exists(), 30, started)
        yield started
    finally:
        for host in started:
            stop_host(host)
        lab.down()
        keep_or_remove_state(root, request, "netns host state")


def lab_of(hosts: list[Host]) -> Lab:
    return hosts[0].lab  # type: ignore[attr-defined]


def test_hosts_find_each_other_with_no_configuration(hosts: list[Host]) -> None:
    for host in hosts:
        others = {h.node_id() for h in hosts if h is not host}
        wait_for(f"host {host.index} seeing both others",
                 lambda host=host, others=others: {p["node_id"] for p in host.peers()} == others, 30, hosts)  # fmt: skip
        ids = [p["node_id"] for p in host.peers()]
        assert len(ids) == len(set(ids)) == 2, ids  # never listed twice
        listed = subprocess.run([sys.executable, "-m", "services.node.cli", "peers", "--state-dir", str(host.state_dir)],
                                cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)  # fmt: skip
        assert listed.returncode == 0, listed.stderr
        for other in others:
            assert listed.stdout.count(other) == 1, listed.stdout
        assert all(p["latency_ms"] is not None for p in host.peers())


def test_the_hosts_share_one_bus_and_one_cluster_state(hosts: list[Host]) -> None:
    ids = sorted(h.node_id() for h in hosts)
    for host in hosts:
        wait_for(f"host {host.index} knowing all three nodes",
                 lambda host=host: (host.health() or {}).get("nodes") == ids, 60, hosts)  # fmt: skip
    leaders = {(h.health() or {}).get("master") for h in hosts}
    assert len(leaders) == 1 and leaders.pop() in ids


def test_a_strangers_beacons_are_ignored(hosts: list[Host]) -> None:
    import hashlib
    import hmac

    body = json.dumps({"kind": "beacon", "node_id": "node-stranger", "hostname": "evil", "route_port": 6222,
                       "discovery_port": DISCOVERY_PORT, "memory_total": 1, "memory_available": 1,
                       "backends": ["ring"], "sent_at": time.time(), "nonce": "x"}).encode()  # fmt: skip
    forged = b"EXOB1" + hmac.new(beacon_key("01" * 32), body, hashlib.sha256).digest() + body
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _ in range(5):
            for host in hosts:
                s.sendto(body, (host.address, DISCOVERY_PORT))  # unsigned
                s.sendto(forged, (host.address, DISCOVERY_PORT))  # signed with another cluster's secret
            time.sleep(0.3)
    time.sleep(2)
    for host in hosts:
        assert all(p["node_id"] != "node-stranger" for p in host.peers())


def test_a_bus_connection_without_credentials_is_refused(hosts: list[Host]) -> None:
    code = (
        "import asyncio, nats\n"
        "async def main():\n"
        "    try:\n"
        "        await nats.connect('nats://127.0.0.1:4222', allow_reconnect=False, connect_timeout=3)\n"
        "        print('connected')\n"
        "    except Exception as exc:\n"
        "        print('refused', exc)\n"
        "asyncio.run(main())\n"
    )
    result = subprocess.run([*lab_of(hosts).run_in(1), sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)  # fmt: skip
    assert result.stdout.startswith("refused") and "Authorization" in result.stdout, result.stdout + result.stderr
    # and the bus's client port is not on the network at all: only routes (with their own credentials) are
    with socket.socket() as s:
        s.settimeout(2)
        assert s.connect_ex((hosts[1].address, 4222)) != 0


@pytest.fixture(scope="module")
def instance(hosts: list[Host]) -> dict:
    first = hosts[0]
    wait_for("three nodes", lambda: len((first.health() or {}).get("nodes", [])) == 3, 60, hosts)
    r = httpx.post(f"{first.base_url}/instances", json={"model": MODEL}, timeout=60)
    assert r.status_code == 201, r.text
    placed = r.json()
    wait_for("a ready instance", lambda: (first.health() or {}).get("ready_instances"), 240, hosts)
    return placed


def test_a_model_spreads_across_the_hosts_and_answers(hosts: list[Host], instance: dict) -> None:
    nodes = {s["node_id"] for s in instance["shards"]} if "shards" in instance else None
    if nodes is not None:
        assert nodes == {h.node_id() for h in hosts}, instance
    client = openai.OpenAI(base_url=f"{hosts[1].base_url}/v1", api_key="none", timeout=300, max_retries=0)
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say hello."}],
                                       max_tokens=8, temperature=0)  # fmt: skip
    assert r.usage.completion_tokens >= 1


def stream_in_background(host: Host, max_tokens: int) -> tuple[threading.Thread, dict]:
    result: dict = {"chunks": 0}

    def run() -> None:
        try:
            client = openai.OpenAI(base_url=f"{host.base_url}/v1", api_key="none", timeout=300, max_retries=0)
            stream = client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "Tell me a long story about the sea."}],
                max_tokens=max_tokens, temperature=0, stream=True,
            )  # fmt: skip
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    result["chunks"] += 1
                if chunk.choices and chunk.choices[0].finish_reason:
                    result["finish"] = chunk.choices[0].finish_reason
        except Exception as exc:  # noqa: BLE001 - the test asserts on it
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def test_the_leader_killed_mid_stream(hosts: list[Host], instance: dict) -> None:
    first = hosts[0]
    before = first.health()
    leader_id, term = before["master"], before["leader_term"]
    leader = next(h for h in hosts if h.node_id() == leader_id)
    thread, result = stream_in_background(hosts[0], max_tokens=96)
    wait_for("tokens flowing", lambda: result["chunks"] >= 3 or "error" in result, 120, hosts)
    os.kill(leader.pids()["master"], signal.SIGKILL)
    killed = time.monotonic()
    wait_for("a new leader term", lambda: (first.health() or {}).get("leader_term", term) > term, 30, hosts)
    took = time.monotonic() - killed
    r = httpx.get(f"{first.base_url}/instances/preview", params={"model": MODEL}, timeout=30)
    assert r.status_code == 200, r.text
    thread.join(300)
    assert "error" not in result, result
    assert result.get("finish") in ("length", "stop") and result["chunks"] >= 3, result
    assert instance["instance_id"] in first.health()["ready_instances"]  # the new leader kept it
    print(f"leader killed -> new term seen in {took:.2f} s")


def test_a_host_cut_off_and_healed(hosts: list[Host], instance: dict) -> None:
    lab, first, cut = lab_of(hosts), hosts[0], hosts[2]
    cut_id = cut.node_id()
    lab.cut(2)
    cut_at = time.monotonic()
    try:
        wait_for("the cut host leaving the peer table",
                 lambda: all(p["node_id"] != cut_id for p in first.peers()), 15, hosts)  # fmt: skip
        gone = wait_for("the cut host leaving the cluster",
                        lambda: cut_id not in (first.health() or {}).get("nodes", [cut_id]), 30, hosts)  # fmt: skip
        detected = time.monotonic() - cut_at
        assert gone
        # its instance used the cut host: deleted; the model fits on no two hosts, so it waits for nodes
        wait_for("the instance leaving", lambda: instance["instance_id"] not in
                 {i["instance_id"] for i in httpx.get(f"{first.base_url}/instances", timeout=10).json()["instances"]},
                 20, hosts)  # fmt: skip
        waiting = httpx.get(f"{first.base_url}/instances", timeout=10).json()["waiting"]
        assert [(w["instance_id"], w["model"]) for w in waiting] == [(instance["instance_id"], MODEL)], waiting
        assert cut_id in waiting[0]["reason"]
        print(f"cut host detected as lost in {detected:.1f} s")
    finally:
        lab.heal(2)
    healed_at = time.monotonic()
    ids = sorted(h.node_id() for h in hosts)
    wait_for("the healed host back in the peer table",
             lambda: [p["node_id"] for p in first.peers()].count(cut_id) == 1, 30, hosts)  # fmt: skip
    wait_for("the healed host back in the cluster", lambda: (first.health() or {}).get("nodes") == ids, 60, hosts)
    # the waiting model is placed again over the three hosts, by itself, and answers
    ready = wait_for("the model placed again and ready",
                     lambda: (first.health() or {}).get("ready_instances"), 240, hosts)  # fmt: skip
    assert instance["instance_id"] not in ready and (first.health() or {}).get("waiting_instances") == []
    print(f"model ready again {time.monotonic() - healed_at:.1f} s after the heal")
    client = openai.OpenAI(base_url=f"{hosts[2].base_url}/v1", api_key="none", timeout=300, max_retries=0)
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say hello."}],
                                       max_tokens=8, temperature=0)  # fmt: skip
    assert r.usage.completion_tokens >= 1
