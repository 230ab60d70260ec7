"""Benchmark: single-stream decode tokens/s and time to first token through the gateway, against raw
mlx-lm `stream_generate` in-process on the same model folder and prompt, in one run; plus the time from
starting `exo` (model already imported) to the first token.

    .venv/bin/python -m bench.gateway_vs_raw [--tokens 128] [--rounds 3]

Every figure is a ratio against the baseline measured in the same run (these machines are noisy).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import openai

from bench.node_process import Node, run_raw, scratch_dir

MODEL = "smollm2-135m"
PROMPT = [{"role": "user", "content": "Tell me a long story about a lighthouse keeper and a storm."}]


def story(round_: int) -> str:
    """A plain prompt, different from its first token on in every round, so the gateway's prefix cache cannot
    help (raw runs in a fresh process each round)."""
    return f"{round_ * 7919 % 1000} lighthouses stood on the coast. Tell a long story about their keepers:"


def raw_round(model_path: Path, text: str, tokens: int) -> tuple[float, float]:
    """(time to first token in s, decode tok/s) of mlx-lm in a process set up as the worker sets up a runner."""
    out = run_raw(model_path, tokens, text=text)
    return out["ttft_s"], out["decode_tok_s"]


def gateway_round(client: openai.OpenAI, text: str, tokens: int) -> tuple[float, float]:
    """The same through the gateway's /v1/completions (no chat template: the same tokens as raw)."""
    start = time.perf_counter()
    first = last = None
    count = 0
    stream = client.completions.create(
        model=MODEL, prompt=text, max_tokens=tokens, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    for chunk in stream:
        now = time.perf_counter()
        if chunk.choices and chunk.choices[0].text:
            first = first or now
            last = now
        if chunk.usage:
            count = chunk.usage.completion_tokens
    return first - start, (count - 1) / (last - first)


def startup_to_first_token(state_dir: Path) -> float:
    node = Node(state_dir)
    spawned = node.start()
    try:
        node.wait_ready()
        client = openai.OpenAI(base_url=node.base_url + "/v1", api_key="none")
        stream = client.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=2, stream=True)
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                return time.monotonic() - spawned
        raise RuntimeError("no token")
    finally:
        node.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--state-dir", type=Path, default=None, help="reuse a node state dir (default: temporary)")
    args = parser.parse_args()
    state_dir = args.state_dir or scratch_dir("exo-bench-")

    node = Node(state_dir)
    node.start()
    node.wait_ready()
    model_path = next(p.parent for p in (state_dir / "models" / MODEL).glob("*/.complete"))
    client = openai.OpenAI(base_url=node.base_url + "/v1", api_key="none")
    gateway_round(client, "Warm up.", 2)  # first-request costs are not what we measure
    raw, gateway = [], []
    try:
        for r in range(args.rounds):  # interleaved, so drift on the machine hits both alike
            raw.append(raw_round(model_path, story(r), args.tokens))
            gateway.append(gateway_round(client, story(r), args.tokens))
    finally:
        node.stop()
    startup = [startup_to_first_token(state_dir) for _ in range(2)]

    raw_ttft = statistics.median(r[0] for r in raw)
    gw_ttft = statistics.median(g[0] for g in gateway)
    raw_tps = statistics.median(r[1] for r in raw)
    gw_tps = statistics.median(g[1] for g in gateway)
    result = {
        "model_folder": str(model_path),
        "tokens": args.tokens,
        "rounds": args.rounds,
        "raw_decode_tok_s": round(raw_tps, 2),
        "gateway_decode_tok_s": round(gw_tps, 2),
        "decode_ratio": round(gw_tps / raw_tps, 3),
        "raw_ttft_ms": round(raw_ttft * 1000, 1),
        "gateway_ttft_ms": round(gw_ttft * 1000, 1),
        "added_ttft_ms_median": round((gw_ttft - raw_ttft) * 1000, 1),
        "added_ttft_ms_per_round": [round((g[0] - r[0]) * 1000, 1) for r, g in zip(raw, gateway)],
        "exo_start_to_first_token_s": [round(s, 2) for s in startup],
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
