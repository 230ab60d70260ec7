"""Chaos run: kill -9 one process of a node (each service, and the runner) while 4 streams run, and count what
the clients saw. One real node with the default model; each kill waits until the node answers again.

Each streamed request ends as one of:
  ok        finished with a finish_reason
  error     a clear error: an HTTP 4xx/503 before the stream, or an SSE error event
  5xx       an HTTP 500-599 other than 503 (an unhandled error)
  broken    the connection broke, or the stream ended with neither a finish nor an error event (lost)
  hung      no end within --hang-s seconds
A kill after which the node does not answer a plain request within --recover-s counts as `not_recovered`, and
the remaining trials of that target are skipped.

    .venv/bin/python -m bench.chaos [--trials 5] [--targets discovery,master,worker,gateway,runner]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections import Counter

import httpx

from bench.node_process import Node, scratch_dir

STREAMS = 4
TARGETS = ("discovery", "master", "worker", "gateway", "runner")


def target_pid(node: Node, target: str) -> int:
    if target == "runner":
        records = sorted((node.state_dir / "runners").glob("*.json"))
        return json.loads(records[0].read_text())["pid"]
    return json.loads((node.state_dir / "pids.json").read_text())[target]


async def one_stream(client: httpx.AsyncClient, url: str, i: int, hang_s: float) -> str:
    body = {
        "model": "smollm2-135m",
        "messages": [{"role": "user", "content": f"Write a long story about a lighthouse keeper number {i}."}],
        "max_tokens": 120,
        "stream": True,
    }

    async def consume() -> str:
        async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
            if r.status_code >= 500 and r.status_code != 503:
                return "5xx"
            if r.status_code >= 400:
                return "error"
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    return "error"
                if any(c.get("finish_reason") for c in chunk.get("choices", [])):
                    return "ok"
            return "broken"

    try:
        return await asyncio.wait_for(consume(), hang_s)
    except TimeoutError:
        return "hung"
    except httpx.HTTPError:
        return "broken"


async def wait_answering(node: Node, timeout: float) -> None:
    """Until a plain request through the gateway succeeds again (the node recovered from the kill)."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=30) as client:
        while time.monotonic() < deadline:
            try:
                r = await client.post(
                    node.base_url + "/v1/completions", json={"model": "smollm2-135m", "prompt": "Hi", "max_tokens": 2}
                )
                if r.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.5)
    raise TimeoutError("the node did not answer again after the kill")


async def trial(node: Node, target: str, args: argparse.Namespace) -> Counter[str]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(args.hang_s, connect=5)) as client:
        streams = [asyncio.create_task(one_stream(client, node.base_url, i, args.hang_s)) for i in range(STREAMS)]
        await asyncio.sleep(args.kill_after_s)
        os.kill(target_pid(node, target), signal.SIGKILL)
        outcomes = Counter(await asyncio.gather(*streams))
    try:
        await wait_answering(node, args.recover_s)
    except TimeoutError:
        outcomes["not_recovered"] += 1
    return outcomes


async def run(args: argparse.Namespace) -> dict[str, dict[str, int]]:
    node = Node(scratch_dir("exo-chaos-") / "node")
    node.start()
    try:
        node.wait_ready()
        await wait_answering(node, args.recover_s)
        totals: dict[str, Counter[str]] = {}
        for target in args.targets.split(","):
            totals[target] = Counter()
            for t in range(args.trials):
                outcomes = await trial(node, target, args)
                totals[target] += outcomes
                print(f"  {target} trial {t + 1}: {dict(outcomes)}", file=sys.stderr)
                if outcomes["not_recovered"]:
                    break
        return {target: dict(c) for target, c in totals.items()}
    finally:
        node.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--targets", default=",".join(TARGETS))
    p.add_argument("--hang-s", type=float, default=90.0, help="a stream with no end after this long is hung")
    p.add_argument("--recover-s", type=float, default=180.0, help="how long the node may take to answer again")
    p.add_argument("--kill-after-s", type=float, default=1.5, help="seconds between starting the streams and the kill")
    args = p.parse_args()
    totals = asyncio.run(run(args))
    grand = sum((Counter(c) for c in totals.values()), Counter())
    print(json.dumps({"streams_per_trial": STREAMS, "trials": args.trials, "by_target": totals, "total": dict(grand)}))


if __name__ == "__main__":
    main()
