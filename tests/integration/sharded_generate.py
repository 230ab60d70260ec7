"""One rank of a sharded generation (or the whole model in one process), for tests and measurements.

    MLX_RANK=r MLX_HOSTFILE=hosts.json python tests/integration/sharded_generate.py \
        --model /tmp/smol-f32 --strategy pipeline --layers 0:15,15:30 --max-tokens 128

Prints one JSON line: rank, tokens, text, decode/prefill tok/s and peak RSS (bytes) of this process.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import mlx.core as mx  # noqa: E402
from mlx_lm import stream_generate  # noqa: E402
from mlx_lm.sample_utils import make_sampler  # noqa: E402

from services.worker.runner.group import init_group, sync_ranks  # noqa: E402
from services.worker.runner.model.sharding import load_shard, parameter_bytes  # noqa: E402

PROMPT = [{"role": "user", "content": "Write a short story about a robot who learns to paint. Use vivid detail."}]


def peak_rss() -> int:
    """This process's peak resident set (VmHWM). Not getrusage's ru_maxrss: Linux carries that over
    exec from the parent, so a child of a big pytest process would report the parent's peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--strategy", choices=["single", "pipeline", "tensor"], default="single")
    parser.add_argument("--world-size", type=int, default=1)
    parser.add_argument("--layers", default="", help="comma-separated start:end per rank (pipeline)")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--temp", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--logits-on", choices=["every_rank", "last_rank", "vocab_split"], default="vocab_split")
    parser.add_argument("--cpu-kernel", choices=["auto", "on", "off"], default="off")
    args = parser.parse_args()

    group = init_group(args.world_size) if args.strategy != "single" else None
    rank = group.rank() if group is not None else 0
    start, end = 0, None
    if args.strategy == "pipeline" and args.layers:
        start, end = (int(x) for x in args.layers.split(",")[rank].split(":"))
    t0 = time.perf_counter()
    model, tokenizer = load_shard(args.model, args.strategy, group, start, end, args.logits_on, cpu_kernel=args.cpu_kernel)
    load_s = time.perf_counter() - t0
    rss_loaded = peak_rss()

    prompt = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=True)
    if args.seed is not None:
        mx.random.seed(args.seed)
    sampler = make_sampler(temp=args.temp)
    tokens, text, last = [], [], None
    for response in stream_generate(model, tokenizer, mx.array(prompt), max_tokens=args.max_tokens, sampler=sampler):
        tokens.append(int(response.token))
        text.append(response.text)
        last = response
    sync_ranks(group)
    out = {
        "rank": rank,
        "strategy": args.strategy,
        "world_size": args.world_size,
        "logits_on": args.logits_on,
        "tokens": tokens,
        "text": "".join(text),
        "prompt_tokens": len(prompt),
        "decode_tps": last.generation_tps if last else 0.0,
        "prefill_tps": last.prompt_tps if last else 0.0,
        "param_bytes": parameter_bytes(model),
        "peak_rss_loaded": rss_loaded,
        "peak_rss": peak_rss(),
        "load_s": load_s,
        "cpu_user_s": resource.getrusage(resource.RUSAGE_SELF).ru_utime,
        "cpu_sys_s": resource.getrusage(resource.RUSAGE_SELF).ru_stime,
        "wall_s": time.perf_counter() - t0,
    }
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
