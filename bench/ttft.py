"""Where the time to first token goes, for a 13-token prompt through a real node (kernel on or off):

  client   the openai client's TTFT (request sent -> first content chunk);
  gateway  the gateway's own TTFT (Prometheus exo_time_to_first_token_seconds: its submit -> first chunk);
  runner   the runner's (its `generated` log line: request admitted -> first token published);
  model    the model alone in this process, loaded as a runner loads it: the chat template, prefill and the
           first greedy token (mx.eval), the floor of all the above.

client - gateway is HTTP + the OpenAI adapter; gateway - runner is the bus both ways, routing and admission
(tokenizing and the chat template); runner - model is the runner's scheduling.

    .venv/bin/python -m bench.ttft [--requests 10] [--kernel on|off]   -> JSON of medians, in ms
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
import urllib.request

import openai

from bench.llamacpp import MODEL, PROMPT, stream_once
from bench.node_process import Node, scratch_dir

_HIST = re.compile(r"^exo_time_to_first_token_seconds_(sum|count)\{[^}]*\} ([0-9.e+-]+)$", re.M)


def gateway_ttft(base_url: str) -> tuple[float, float]:
    """(sum, count) of the gateway's TTFT histogram."""
    with urllib.request.urlopen(base_url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    found = {k: 0.0 for k in ("sum", "count")}
    for key, value in _HIST.findall(text):
        found[key] += float(value)
    return found["sum"], found["count"]


def runner_ttfts(node: Node) -> list[float]:
    logs = "".join(p.read_text(errors="replace") for p in node.state_dir.rglob("*.log"))
    return [float(v) for v in re.findall(r"generated .*?ttft_s=([0-9.]+)", logs)]


def model_alone(path: str, requests: int, kernel: str) -> float:
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    from services.worker.runner.model.sharding import load_shard

    model, tokenizer = load_shard(path, "single", cpu_kernel=kernel)
    times = []
    for _ in range(requests + 1):
        start = time.perf_counter()
        prompt = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=True)
        logits = model(mx.array([prompt]), cache=make_prompt_cache(model))[:, -1, :]
        mx.eval(mx.argmax(logits, axis=-1))
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--kernel", choices=["on", "off"], default="on")
    args = parser.parse_args()
    tmp = scratch_dir("exo-bench-ttft-")
    node = Node(tmp / "node", env={"EXO_CPU_KERNEL": args.kernel})
    node.start()
    try:
        node.wait_ready()
        client = openai.OpenAI(base_url=node.base_url + "/v1", api_key="none", timeout=600)
        stream_once(client, 4)
        before_sum, before_count = gateway_ttft(node.base_url)
        skip = len(runner_ttfts(node))
        client_ttft = [stream_once(client, 2)["ttft_s"] for _ in range(args.requests)]
        time.sleep(1.0)  # the last `generated` log lines
        after_sum, after_count = gateway_ttft(node.base_url)
        runner = runner_ttfts(node)[skip:]
        models = next((node.state_dir / "models").rglob("model.safetensors"), None)
    finally:
        node.stop()
    out = {
        "prompt": PROMPT[0]["content"], "kernel": args.kernel, "requests": args.requests,
        "client_ms": round(statistics.median(client_ttft) * 1e3, 1),
        "gateway_mean_ms": round((after_sum - before_sum) / max(1.0, after_count - before_count) * 1e3, 1),
        "runner_ms": round(statistics.median(runner) * 1e3, 1) if runner else None,
    }  # fmt: skip
    if models is not None:
        out["model_alone_ms"] = round(model_alone(str(models.parent), args.requests, args.kernel) * 1e3, 1)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
