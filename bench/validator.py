"""Time to first token with a validator running beside the main generation over without it (issue 15's goal:
<= 1.1), same run, through a real node: requests of each kind interleaved, medians compared to plain.

  plain             no trifurcation;
  deny-list         the deny-list validator (no model: the gateway's concurrent path alone);
  guard-same        the guard model (the same SmolLM2) on the main model's own instance: its prefill shares
                    the batch, and the machine's cores, with the main request;
  guard-own         (--own-instance) the guard model on an instance of its own (the same weights by their
                    folder, so no plain request lands on it; same node, same cores unless --pin).

The draft is off in every kind ("draft": "none"), so the validator is the only difference.

`--pin` (with --own-instance) gives each instance a device group of its own the way one machine can: the main
instance's runner on CPU 0, the guard's on CPU 1 (every thread of each, by sched_setaffinity), the rest of the
node unpinned. Plain decoding then runs on one core too, so the ratio is what the guard beside it costs, as on
the seed's disjoint device groups; unpinned, every kind shares both cores.

    .venv/bin/python -m bench.validator [--requests 8] [--own-instance [--pin]]   -> JSON of medians, in ms, and ratios
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import urllib.request
from pathlib import Path

import openai

from bench.llamacpp import MODEL, PROMPT
from bench.node_process import Node, scratch_dir


def ttft(client: openai.OpenAI, extra: dict | None, tokens: int) -> tuple[float, float]:
    """(time to first token, time to the end) of one streamed answer, read to its end (a request left
    half-read would leave its validator running into the next one's measurement)."""
    start = time.perf_counter()
    first = None
    for chunk in client.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=tokens, temperature=0,
                                                stream=True, extra_body=extra):  # fmt: skip
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - start
    if first is None:
        raise RuntimeError("no content came")
    return first, time.perf_counter() - start


def second_instance(node: Node) -> str:
    """The guard's own instance: the same weights named by their folder (a model of its own, so plain requests,
    which go to any instance of MODEL, never land on it); its id once it is ready."""
    folder = next(node.state_dir.rglob("model.safetensors")).parent
    body = json.dumps({"model": str(folder)}).encode()
    ask = urllib.request.Request(node.base_url + "/instances", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(ask, timeout=30) as r:
        instance_id = json.load(r)["instance_id"]
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        listed = node.instances() or {"instances": []}
        if any(i["instance_id"] == instance_id and i["ready"] for i in listed["instances"]):
            return instance_id
        time.sleep(0.5)
    raise TimeoutError("the second instance did not become ready")


def pin_runner(node: Node, instance_id: str, cpu: int) -> list[int]:
    """Every thread of the instance's runner (its rank 0, from the node's runner registry) on one CPU."""
    record = json.loads((node.state_dir / "runners" / f"{instance_id}-0.json").read_text())
    tids = [int(t.name) for t in Path(f"/proc/{record['pid']}/task").iterdir()]
    for tid in tids:
        os.sched_setaffinity(tid, {cpu})
    return tids


def kinds(own: str | None) -> dict[str, dict | None]:
    def tri(**kw: object) -> dict:
        return {"trifurcated": {"draft": "none", "policy": "annotate", **kw}}

    out = {"plain": None, "deny-list": tri(validator="deny-list", deny=["bomb"]), "guard-same": tri()}
    if own is not None:
        out["guard-own"] = tri(validator=own)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--own-instance", action="store_true")
    parser.add_argument("--pin", action="store_true", help="main runner on CPU 0, the guard's on CPU 1")
    args = parser.parse_args()
    if args.pin and not args.own_instance:
        parser.error("--pin needs --own-instance")
    node = Node(scratch_dir("exo-bench-validator-") / "node")
    node.start()
    try:
        node.wait_ready()
        own = second_instance(node) if args.own_instance else None
        if args.pin:
            assert own is not None
            main_id = next(i for i in node.health()["ready_instances"] if i != own)  # type: ignore[index]
            pin_runner(node, main_id, 0)
            pin_runner(node, own, 1)
        client = openai.OpenAI(base_url=node.base_url + "/v1", api_key="none", timeout=600)
        each = kinds(own)
        for extra in each.values():  # warm every path once
            ttft(client, extra, args.tokens)
        times: dict[str, list[float]] = {k: [] for k in each}
        ends: dict[str, list[float]] = {k: [] for k in each}
        for _ in range(args.requests):
            for kind, extra in each.items():
                first, end = ttft(client, extra, args.tokens)
                times[kind].append(first)
                ends[kind].append(end)
    finally:
        node.stop()
    medians = {k: statistics.median(v) for k, v in times.items()}
    whole = {k: statistics.median(v) for k, v in ends.items()}
    out = {"requests": args.requests, "tokens": args.tokens, "pinned": args.pin,
           "ttft_ms": {k: round(m * 1e3, 1) for k, m in medians.items()},
           "ttft_ratio_over_plain": {k: round(m / medians["plain"], 3) for k, m in medians.items() if k != "plain"},
           "whole_answer_ratio_over_plain": {k: round(m / whole["plain"], 3) for k, m in whole.items() if k != "plain"}}  # fmt: skip
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
