"""Benchmark one model across several nodes (one machine, one bus), through the gateway, in one run: decode
tokens/s of a 2- and a 3-stage pipeline and of 3-rank tensor parallel over a single node; the 3-stage
pipeline again with MLX's own busy-polling ring (`EXO_RING_WAIT=spin`, what runners did before
services/worker/runner/ring_wait.py); and placement time over 64 synthetic nodes.

    .venv/bin/python -m bench.pipeline [--tokens 96] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import urllib.request
from pathlib import Path

import openai

from bench.engine import stream_once
from bench.node_process import Node, scratch_dir
from services.master.placement import place
from shared.commands import PlaceInstance
from shared.facts import NodeFacts
from shared.models import get_card
from shared.state import ClusterState

MODEL = "smollm2-135m"
PROMPT = [{"role": "user", "content": "Write a long story about a robot who learns to paint."}]


def decode_tok_s(node: Node, tokens: int) -> float:
    client = openai.OpenAI(base_url=node.base_url + "/v1", api_key="none", timeout=600)
    r = stream_once(client, PROMPT, tokens)
    return (r["usage"].completion_tokens - 1) / (r["last"] - r["first"])


def cluster(root: Path, size: int, memory: str, strategy: str, env: dict[str, str]) -> list[Node]:
    first = Node(root / "0", "--no-model", "--memory", memory, env=env)
    first.start()
    deadline = time.monotonic() + 60
    while first.health() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    nodes = [first]
    for i in range(1, size):
        n = Node(root / str(i), "--no-model", "--no-master", "--memory", memory,
                 "--nats-url", f"nats://127.0.0.1:{first.nats_port}", env=env)  # fmt: skip
        n.start()
        nodes.append(n)
    while len((first.health() or {}).get("nodes", [])) < size:
        time.sleep(0.2)
    body = json.dumps({"model": MODEL, "strategy": strategy, "min_nodes": size}).encode()
    request = urllib.request.Request(first.base_url + "/instances", body, {"Content-Type": "application/json"})
    placed = json.load(urllib.request.urlopen(request, timeout=30))
    assert len(placed["shards"]) == size, placed
    first.wait_ready()
    return nodes


def measure(nodes: list[Node], tokens: int, rounds: int) -> float:
    decode_tok_s(nodes[0], 4)  # warm-up
    return statistics.median(decode_tok_s(nodes[0], tokens) for _ in range(rounds))


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
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    root = scratch_dir("exo-bench-pipeline-")
    results: dict[str, float] = {}
    spin = {"EXO_RING_WAIT": "spin"}
    for label, size, memory, strategy, env in [
        ("single", 1, "2GB", "pipeline", {}),
        ("pipeline_2", 2, "70MB", "pipeline", {}),
        ("pipeline_3", 3, "45MB", "pipeline", {}),
        ("tensor_3", 3, "1GB", "tensor", {}),
        ("pipeline_3_spin", 3, "45MB", "pipeline", spin),
        ("single_again", 1, "2GB", "pipeline", {}),
    ]:
        nodes = cluster(root / label, size, memory, strategy, env)
        try:
            results[label] = round(measure(nodes, args.tokens, args.rounds), 2)
        finally:
            for n in reversed(nodes):
                n.stop()
    single = statistics.mean([results["single"], results["single_again"]])  # before and after: drift shows
    print(json.dumps({
        "decode_tok_s": results,
        "pipeline_2_over_single": round(results["pipeline_2"] / single, 3),
        "pipeline_3_over_single": round(results["pipeline_3"] / single, 3),
        "tensor_3_over_single": round(results["tensor_3"] / single, 3),
        "pipeline_3_spin_over_single": round(results["pipeline_3_spin"] / single, 3),
        "placement_64_nodes_ms": round(statistics.median(placement_ms() for _ in range(20)), 2),
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
