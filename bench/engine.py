"""Benchmark the runner as an engine, through the gateway, in one run:

- continuous batching: aggregate decode tokens/s of 8 concurrent streams over single-stream tokens/s;
- prefix cache: time to first token of a chat's second turn (sharing a ~500-token prefix) over the first turn's.

    .venv/bin/python -m bench.engine [--streams 8] [--tokens 64]
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time

import openai

from bench.node_process import Node, scratch_dir

MODEL = "smollm2-135m"


def stream_once(client: openai.OpenAI, messages: list[dict], tokens: int) -> dict:
    start = time.perf_counter()
    first = last = None
    usage = None
    for chunk in client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=tokens, temperature=0, stream=True,
        stream_options={"include_usage": True},
    ):  # fmt: skip
        now = time.perf_counter()
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or now
            last = now
        if chunk.usage:
            usage = chunk.usage
    return {"start": start, "first": first, "last": last, "usage": usage}


def question(i: int) -> list[dict]:
    return [{"role": "user", "content": f"Tell me story number {i} about a fox, in detail."}]


def batching(client: openai.OpenAI, streams: int, tokens: int) -> dict:
    single = stream_once(client, question(0), tokens)
    single_tps = single["usage"].completion_tokens / (single["last"] - single["start"])
    results: list[dict] = [{} for _ in range(streams)]

    def worker(i: int) -> None:
        results[i] = stream_once(client, question(i + 1), tokens)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(streams)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ended = max(r["last"] for r in results)
    total = sum(r["usage"].completion_tokens for r in results)
    aggregate = total / (ended - began)
    # Decode only: from the moment every stream has its first token (all prefills done) to the end.
    all_started = max(r["first"] for r in results)
    after = sum(r["usage"].completion_tokens for r in results) - sum(_tokens_before(r, all_started) for r in results)
    single_decode = (single["usage"].completion_tokens - 1) / (single["last"] - single["first"])
    aggregate_decode = after / (ended - all_started)
    return {
        "streams": streams,
        "single_stream_tok_s": round(single_tps, 2),
        "aggregate_tok_s": round(aggregate, 2),
        "ratio_with_prefill": round(aggregate / single_tps, 2),
        "single_stream_decode_tok_s": round(single_decode, 2),
        "aggregate_decode_tok_s": round(aggregate_decode, 2),
        "decode_ratio": round(aggregate_decode / single_decode, 2),
    }


def _tokens_before(result: dict, moment: float) -> int:
    """Tokens a stream had received by `moment`, assuming even spacing between its first and last token."""
    n = result["usage"].completion_tokens
    if moment <= result["first"]:
        return 0
    span = result["last"] - result["first"]
    return n if span <= 0 else min(n, 1 + int((n - 1) * (moment - result["first"]) / span))


def prefix_cache(client: openai.OpenAI, rounds: int) -> dict:
    ratios = []
    for r in range(rounds):
        history = " ".join(f"Fact {i} (round {r}): the lighthouse has {i} windows facing the sea." for i in range(25))
        turn1 = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": history}]
        first = stream_once(client, turn1, 16)
        answer = "I have noted all the facts."
        turn2 = turn1 + [{"role": "assistant", "content": answer}, {"role": "user", "content": "How many windows?"}]
        second = stream_once(client, turn2, 16)
        ratios.append(
            {
                "prompt_tokens": first["usage"].prompt_tokens,
                "ttft1_ms": round((first["first"] - first["start"]) * 1000),
                "ttft2_ms": round((second["first"] - second["start"]) * 1000),
                "cached_tokens_turn2": second["usage"].prompt_tokens_details.cached_tokens,
            }
        )
    for r in ratios:
        r["ratio"] = round(r["ttft2_ms"] / r["ttft1_ms"], 3)
    return {"rounds": ratios, "median_ratio": statistics.median(r["ratio"] for r in ratios)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    node = Node(scratch_dir("exo-bench-engine-"))
    node.start()
    try:
        node.wait_ready()
        client = openai.OpenAI(base_url=node.base_url + "/v1", api_key="none", timeout=600)
        stream_once(client, question(99), 4)  # warm-up
        result = {"batching": batching(client, args.streams, args.tokens), "prefix_cache": prefix_cache(client, args.rounds)}
    finally:
        node.stop()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
