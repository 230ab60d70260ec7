"""End-to-end check of a node on a Linux NVIDIA GPU (after `./setup.sh` installed MLX's CUDA build):

  1. MLX's default device is the GPU and a matmul on it agrees with numpy;
  2. a real `exo` node's runner reports ready on the GPU (its ready status names the device);
  3. greedy decode tokens/s and time to first token through the gateway (openai client, streaming).

    .venv/bin/python -m bench.gpu [--tokens 200]   -> JSON; exits 1 where any check fails
"""

from __future__ import annotations

import argparse
import json
import sys

import openai

from bench.llamacpp import stream_once
from bench.node_process import Node, scratch_dir


def device_check() -> dict:
    import mlx.core as mx
    import numpy as np

    a = np.random.default_rng(0).standard_normal((256, 256)).astype(np.float32)
    got = np.array(mx.matmul(mx.array(a), mx.array(a)))
    return {"default_device": str(mx.default_device()), "gpu": mx.default_device() == mx.gpu,
            "matmul_max_error": float(np.abs(got - a @ a).max())}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=200)
    args = parser.parse_args()
    result: dict = {"device": device_check()}
    node = Node(scratch_dir("exo-bench-gpu-"))
    node.start()
    try:
        node.wait_ready(timeout=600)
        instances = node.instances() or {}
        result["instances"] = instances
        client = openai.OpenAI(base_url=node.base_url + "/v1", api_key="none", timeout=600)
        stream_once(client, 8)
        runs = [stream_once(client, args.tokens) for _ in range(3)]
        result["decode_tok_s"] = sorted(r["decode_tok_s"] for r in runs)[1]
        result["ttft_s"] = sorted(r["ttft_s"] for r in runs)[1]
    finally:
        node.stop()
    ok = result["device"]["gpu"] and result["device"]["matmul_max_error"] < 1e-2 and "device gpu" in json.dumps(instances)
    result["ok"] = bool(ok)
    print(json.dumps(result, indent=2))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
