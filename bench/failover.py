"""Benchmark failover on loopback nodes (no model: the control plane alone), medians over --runs:

  (a) kill -9 of the leader's master in a 3-node cluster -> another master answers commands;
  (b) kill -9 of a lone node's master -> the supervisor restarts it, it replays the log, wins the lease
      (after the dead one's expires) and answers commands;
  (c) kill -9 of a lone node's discovery -> restarted and publishing this node's facts again;
  (d) kill -9 of a whole node (supervisor and every process of it) -> the leader records it lost.

"Answers commands": a delete of an instance that does not exist, sent on the bus, is answered (it goes the
fenced write path of the leader and writes nothing) instead of finding no responder.
Kills of one service on one node are spaced by the supervisor's healthy time (30 s), else its restart
backoff (0.5 s doubling) would be measured instead of the service.

    .venv/bin/python -m bench.failover [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from bench.node_process import BENCH_SECRET, Node, scratch_dir
from services.node.supervisor import HEALTHY_AFTER_S
from shared import subjects
from shared.bus import connect
from shared.cluster_secret import remember
from shared.commands import DeleteInstance, encode

POLL_S = 0.02


def pids(node: Node) -> dict[str, int]:
    return json.loads((node.state_dir / "pids.json").read_text())


def node_id(node: Node) -> str:
    return (node.state_dir / "node_id").read_text().strip()


def wait_health(node: Node, predicate: Callable[[dict], bool], timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        h = node.health()
        if h is not None and predicate(h):
            return h
        time.sleep(0.1)
    raise TimeoutError(f"{node.state_dir.name}: condition not met; last health {node.health()}")


async def seconds_until_answered(nc: NATS, since: float, timeout: float = 30.0) -> float:
    """Seconds from `since` until a master answers a (harmless) delete: no-responders while none leads. Short
    request timeouts: a request sent in the instant of the kill goes to the dying process and is lost."""
    payload = encode(DeleteInstance("bench-no-such-instance"))
    while time.monotonic() - since < timeout:
        try:
            await nc.request(subjects.CMD_DELETE_INSTANCE, payload, timeout=0.25)
            return time.monotonic() - since
        except (NoRespondersError, NatsTimeout):
            await asyncio.sleep(POLL_S)
    raise TimeoutError(f"no master answered within {timeout} s")


def start_cluster(root: Path, size: int) -> list[Node]:
    first = Node(root / "n0", "--no-model", "--no-worker")
    first.start()
    wait_health(first, lambda h: h["master"] is not None)
    nodes = [first]
    for i in range(1, size):
        n = Node(root / f"n{i}", "--no-model", "--no-worker", "--nats-url", f"nats://127.0.0.1:{first.nats_port}")
        n.start()
        nodes.append(n)
    wait_health(first, lambda h: len(h["nodes"]) == size)
    for n in nodes:
        wait_health(n, lambda h: h["master"] is not None)
    return nodes


async def leader_failover(nodes: list[Node], runs: int) -> list[float]:
    """(a): each run kills whichever master leads; a node's master is killed again only after 30 s."""
    nc = await connect(bus_url(nodes[0]), "bench-failover")
    times, last_kill = [], {}
    try:
        for _ in range(runs):
            health = wait_health(nodes[0], lambda h: h["master"] is not None)
            (leader,) = [n for n in nodes if node_id(n) == health["master"]]
            wait = last_kill.get(leader.state_dir, 0) + HEALTHY_AFTER_S + 1 - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            await seconds_until_answered(nc, time.monotonic(), timeout=5)  # a leader answers before the kill
            os.kill(pids(leader)["master"], signal.SIGKILL)
            killed = last_kill[leader.state_dir] = time.monotonic()
            times.append(await seconds_until_answered(nc, killed))
            after = wait_health(nodes[0], lambda h, t=health["leader_term"]: h["leader_term"] > t)
            print(f"  (a) {times[-1]:.2f} s: term {health['leader_term']} -> {after['leader_term']}", file=sys.stderr)
    finally:
        await nc.close()
    return times


async def lone_node_restarts(node: Node, runs: int) -> tuple[list[float], list[float]]:
    """(b) and (c), interleaved, each kill of a service 30 s after its previous one."""
    nc = await connect(bus_url(node), "bench-failover")
    master_times, discovery_times = [], []
    try:
        for i in range(runs):
            if i:
                await asyncio.sleep(HEALTHY_AFTER_S + 1)
            term = wait_health(node, lambda h: h["master"] is not None)["leader_term"]
            os.kill(pids(node)["master"], signal.SIGKILL)
            killed = time.monotonic()
            master_times.append(await seconds_until_answered(nc, killed))
            wait_health(node, lambda h, t=term: h["leader_term"] > t)  # it did claim the log: caught up
            facts = await nc.subscribe(subjects.facts(node_id(node)))
            os.kill(pids(node)["discovery"], signal.SIGKILL)
            killed = time.monotonic()
            await facts.next_msg(timeout=30)  # the old process is dead: this comes from the new one
            discovery_times.append(time.monotonic() - killed)
            await facts.unsubscribe()
            print(f"  (b) {master_times[-1]:.2f} s  (c) {discovery_times[-1]:.2f} s", file=sys.stderr)
    finally:
        await nc.close()
    return master_times, discovery_times


def node_loss_detection(nodes: list[Node], root: Path, runs: int) -> list[float]:
    """(d): a fourth node joins, then all its processes die at once; seconds until the cluster state drops it."""
    import psutil

    times = []
    for i in range(runs):
        extra = Node(root / f"lost{i}", "--no-model", "--no-worker", "--no-gateway", "--no-master",
                     "--nats-url", f"nats://127.0.0.1:{nodes[0].nats_port}")  # fmt: skip
        extra.start()
        wait_health(nodes[0], lambda h: len(h["nodes"]) == len(nodes) + 1)
        lost = node_id(extra)
        root_proc = psutil.Process(extra.proc.pid)
        for p in [root_proc, *root_proc.children(recursive=True)]:
            p.kill()
        killed = time.monotonic()
        wait_health(nodes[0], lambda h, lost=lost: lost not in h["nodes"], timeout=60)
        times.append(time.monotonic() - killed)
        extra.proc.wait()
        print(f"  (d) {times[-1]:.2f} s", file=sys.stderr)
    return times


def bus_url(node: Node) -> str:
    """The node's loopback bus; shared.bus.connect adds the credentials from the secret it remembers."""
    return f"nats://127.0.0.1:{node.nats_port}"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores ({cpu}), Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    remember(BENCH_SECRET)  # our own bus connection, like the nodes', carries the credentials (never os.environ)
    root = scratch_dir("exo-bench-failover-")
    trio = start_cluster(root / "trio", 3)
    try:
        leader = asyncio.run(leader_failover(trio, args.runs))
        lost = node_loss_detection(trio, root / "trio", args.runs)
    finally:
        for n in reversed(trio):
            n.stop()
    (lone,) = start_cluster(root / "lone", 1)
    try:
        master, discovery = asyncio.run(lone_node_restarts(lone, args.runs))
    finally:
        lone.stop()
    rows = [
        ("(a) kill -9 leader master (3 nodes) -> new leader answers", leader),
        ("(b) kill -9 master (1 node) -> restarted, caught up, answers", master),
        ("(c) kill -9 discovery (1 node) -> restarted, facts again", discovery),
        ("(d) kill -9 of a whole node -> recorded lost by the leader", lost),
    ]
    print(f"command: {' '.join([os.path.relpath(sys.executable), '-m', 'bench.failover', *sys.argv[1:]])}")
    print(f"machine: {machine()}")
    print(f"{'case':64} {'median s':>9} {'min':>6} {'max':>6}  runs")
    for label, values in rows:
        print(f"{label:64} {statistics.median(values):9.2f} {min(values):6.2f} {max(values):6.2f}  {len(values)}")


if __name__ == "__main__":
    main()
