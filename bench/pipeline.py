"""Benchmark one model across several nodes (one machine, one bus per cluster), through the gateway, in one
run: decode tokens/s of a 2- and a 3-stage pipeline and of 3-rank tensor parallel over a single node; the
3-stage pipeline again with MLX's own busy-polling ring (`EXO_RING_WAIT=spin`, what runners did before
services/worker/runner/ring/ring_wait.py); a single node without the CPU fusion of norms and RoPEs
(`EXO_CPU_FUSION=off`, services/worker/runner/model/cpu_fusion.py), the baseline of that fusion; and placement
time over 64 synthetic nodes.

The two single nodes and the three clusters run side by side (idle ranks sleep; the CPU all of them use while
idle is measured and printed) and are measured in turns, round after round, in a rotating order: each round gives
every case the same machine conditions, and each round's ratios are taken against that round's single
node. This machine's speed drifts by +-10 % over minutes; measured one cluster after another, the drift
lands in the ratios. The spin case runs alone afterwards (its idle ranks would burn the cores the others
use) against a single node measured right before it.

    .venv/bin/python -m bench.pipeline [--tokens 96] [--rounds 7]
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import time
import urllib.request
from pathlib import Path

import openai
import psutil

from bench.engine import stream_once
from bench.node_process import Node, scratch_dir
from services.master.placement import place
from shared.commands import PlaceInstance
from shared.facts import NodeFacts
from shared.models import get_card
from shared.state import ClusterState

MODEL = "smollm2-135m"
PROMPT = [{"role": "user", "content": "Write a long story about a robot who learns to paint."}]
# label: (nodes, memory budget per node, strategy, environment). "single_unfused": one node with mlx-lm's own
# norm and RoPE modules (EXO_CPU_FUSION=off, services/worker/runner/model/cpu_fusion.py), the baseline of the fusion.
CASES = {
    "single": (1, "2GB", "pipeline", {}),
    "single_unfused": (1, "2GB", "pipeline", {"EXO_CPU_FUSION": "off"}),
    "pipeline_2": (2, "70MB", "pipeline", {}),
    "pipeline_3": (3, "45MB", "pipeline", {}),
    "tensor_3": (3, "1GB", "tensor", {}),
}


def decode_tok_s(node: Node, tokens: int) -> float:
    client = openai.OpenAI(base_url=node.base_url + "/v1", api_key="none", timeout=600)
    r = stream_once(client, PROMPT, tokens)
    return (r["usage"].completion_tokens - 1) / (r["last"] - r["first"])


def cluster(root: Path, size: int, memory: str, strategy: str, env: dict[str, str]) -> list[Node]:
    """`size` nodes on one bus, with a secret of their own (clusters side by side stay apart), and one
    instance of the model placed over all of them."""
    secret = secrets.token_hex(32)
    first = Node(root / "0", "--no-model", "--memory", memory, env=env, secret=secret)
    first.start()
    deadline = time.monotonic() + 60
    while first.health() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    nodes = [first]
    for i in range(1, size):
        n = Node(root / str(i), "--no-model", "--no-master", "--memory", memory,
                 "--nats-url", f"nats://127.0.0.1:{first.nats_port}", env=env, secret=secret)  # fmt: skip
        n.start()
        nodes.append(n)
    while len((first.health() or {}).get("nodes", [])) < size:
        time.sleep(0.2)
    body = json.dumps({"model": MODEL, "strategy": strategy, "min_nodes": size}).encode()
    request = urllib.request.Request(first.base_url + "/instances", body, {"Content-Type": "application/json"})
    placed = json.load(urllib.request.urlopen(request, timeout=30))
    assert len(placed["shards"]) == size, placed
    first.wait_ready()
    decode_tok_s(first, 4)  # warm-up
    return nodes


def stop(nodes: list[Node]) -> None:
    for n in reversed(nodes):
        n.stop()


def idle_cores(clusters: dict[str, list[Node]], seconds: float = 3.0) -> float:
    """CPU cores that every node process and its children (services, runners, nats-server) use together
    while nothing is asked of them: what the clusters standing by cost the one being measured."""
    procs = []
    for nodes in clusters.values():
        for node in nodes:
            assert node.proc is not None
            root = psutil.Process(node.proc.pid)
            procs += [root, *root.children(recursive=True)]

    def cpu() -> float:
        total = 0.0
        for p in procs:
            try:
                total += sum(p.cpu_times()[:2])
            except psutil.NoSuchProcess:
                pass
        return total

    before = cpu()
    time.sleep(seconds)
    return (cpu() - before) / seconds


def interleaved(clusters: dict[str, list[Node]], tokens: int, rounds: int) -> list[dict[str, float]]:
    """One decode run per case per round; the order rotates every round."""
    labels = list(clusters)
    runs = []
    for i in range(rounds):
        order = labels[i % len(labels):] + labels[: i % len(labels)]
        runs.append({label: decode_tok_s(clusters[label][0], tokens) for label in order})
    return runs


def placement_ms(n_nodes: int = 64) -> float:
    card = get_card("llama-3.1-405b")
    nodes = {
        f"node-{i}": NodeFacts(f"node-{i}", f"host-{i}", 192 * 2**30, (64 + i) * 2**30, None, 24, "M2 Ultra",
                               ("ring", "jaccl"), (), ("worker",), rdma=True)  # fmt: skip
        for i in range(n_nodes)
    }
    state = ClusterState(nodes=nodes)
    started = time.perf_counter()
    plan = place(state, PlaceInstance(card.model_id), card, "inst-bench")
    elapsed = (time.perf_counter() - started) * 1000
    assert not hasattr(plan, "reason"), plan
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    root = scratch_dir("exo-bench-pipeline-")
    clusters: dict[str, list[Node]] = {}
    try:
        for label, (size, memory, strategy, env) in CASES.items():
            clusters[label] = cluster(root / label, size, memory, strategy, env)
        standing_by = idle_cores(clusters)
        runs = interleaved(clusters, args.tokens, args.rounds)
    finally:
        for nodes in clusters.values():
            stop(nodes)
    clusters.clear()
    try:
        clusters["single_before_spin"] = cluster(root / "single_before_spin", 1, "2GB", "pipeline", {})
        single_alone = statistics.median(decode_tok_s(clusters["single_before_spin"][0], args.tokens) for _ in range(3))
        stop(clusters.pop("single_before_spin"))
        clusters["spin"] = cluster(root / "pipeline_3_spin", 3, "45MB", "pipeline", {"EXO_RING_WAIT": "spin"})
        spin = statistics.median(decode_tok_s(clusters["spin"][0], args.tokens) for _ in range(3))
    finally:
        for nodes in clusters.values():
            stop(nodes)

    def ratio(label: str, over: str = "single") -> float:  # median over rounds of (case / baseline in the same round)
        return round(statistics.median(run[label] / run[over] for run in runs), 3)

    print(json.dumps({
        "decode_tok_s_median": {label: round(statistics.median(run[label] for run in runs), 2) for label in CASES},
        "rounds": [{label: round(v, 2) for label, v in run.items()} for run in runs],
        "idle_cores_all_clusters": round(standing_by, 3),
        "pipeline_2_over_single": ratio("pipeline_2"),
        "pipeline_3_over_single": ratio("pipeline_3"),
        "tensor_3_over_single": ratio("tensor_3"),
        "single_over_single_unfused": ratio("single", "single_unfused"),
        "pipeline_2_over_single_unfused": ratio("pipeline_2", "single_unfused"),
        "pipeline_3_over_single_unfused": ratio("pipeline_3", "single_unfused"),
        "pipeline_3_spin_over_single_alone": round(spin / single_alone, 3),
        "placement_64_nodes_ms": round(statistics.median(placement_ms() for _ in range(20)), 2),
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
