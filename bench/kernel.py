"""Benchmark exo's CPU kernel for quantized layers (services/worker/runner/model/kernels), in one run:

  1. the kernel alone over every quantized matrix of SmolLM2-135M (q4 layers + the 8-bit tied head), one
     activation row: GB/s of weights streamed, over this machine's memory bandwidth as a numpy sum over
     512 MB reads it, for each ISA and 1 or 2 threads;
  2. decode tokens/s of the real model loaded as a runner loads it (load_shard, the worker's BLAS), greedy:
     q4 through our kernel (1 and 2 threads) vs dense f32 vs MLX's own q4, interleaved rounds, as ratios.

    .venv/bin/python -m bench.kernel [--rounds 3] [--tokens 64]   -> JSON
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROMPT = [{"role": "user", "content": "Tell me a long story about a lighthouse keeper and a storm."}]


def numpy_bandwidth() -> float:
    import numpy as np

    a = np.ones(512 * 1024 * 1024 // 8)
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        a.sum()
        best = max(best, a.nbytes / (time.perf_counter() - start))
    return best / 1e9


def kernel_alone(model_path: Path, reps: int = 10, only_best: bool = False) -> dict:
    import mlx.core as mx
    from mlx_lm.utils import load_model

    from services.worker.runner.model.kernels import _exo_kernels as k
    from services.worker.runner.model.quantized_cpu import KernelEmbedding, KernelLinear, use_cpu_kernel

    model, _ = load_model(model_path)
    use_cpu_kernel(model)
    layers = [m for _, m in model.named_modules() if isinstance(m, (KernelLinear, KernelEmbedding))]
    weight_bytes = sum(m.weight.nbytes + m.scales.nbytes + m.biases.nbytes for m in layers)
    inputs = {m.weight.shape[1] * 32 // m.bits: mx.random.normal((1, m.weight.shape[1] * 32 // m.bits)) for m in layers}
    mx.eval(inputs)

    def one_pass() -> float:
        start = time.perf_counter()
        mx.eval([k.quantized_matvec(inputs[m.weight.shape[1] * 32 // m.bits], m.weight, m.scales, m.biases,
                                    m.group_size, m.bits) for m in layers])  # fmt: skip
        return time.perf_counter() - start

    bandwidth = numpy_bandwidth()
    out: dict = {"weights_mb": round(weight_bytes / 1e6, 1), "numpy_sum_gb_s": round(bandwidth, 1), "runs": []}
    best_isa = k.best_isa()
    for isa in ("scalar", "avx2", "avx512vnni"):
        if ("scalar", "avx2", "avx512vnni").index(isa) > ("scalar", "avx2", "avx512vnni").index(best_isa):
            continue
        if only_best and isa != best_isa:
            continue
        k.set_isa(isa)
        for threads in (1, 2) if isa != "scalar" else (1,):
            k.set_threads(threads)
            one_pass()
            seconds = min(one_pass() for _ in range(reps if isa != "scalar" else 2))
            gb_s = weight_bytes / seconds / 1e9
            out["runs"].append({"isa": isa, "threads": threads, "ms_per_pass": round(seconds * 1e3, 2),
                                "gb_s": round(gb_s, 1), "over_numpy": round(gb_s / bandwidth, 2)})  # fmt: skip
    k.set_isa(best_isa)
    k.set_threads(1)
    return out


def decode_once(model_path: str, tokens: int) -> dict:
    """One measurement in this process (run as a subprocess with the variant's environment)."""
    import mlx.core as mx
    from mlx_lm import stream_generate
    from mlx_lm.sample_utils import make_sampler

    from services.worker.runner.blas import current_blas
    from services.worker.runner.model.quantized_cpu import configure, weights_detail
    from services.worker.runner.model.sharding import load_shard

    configure(threads=int(os.environ["EXO_KERNEL_THREADS"]))
    model, tokenizer = load_shard(model_path, "single", cpu_kernel=os.environ["EXO_CPU_KERNEL"])
    prompt = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=True)
    for _ in stream_generate(model, tokenizer, mx.array(tokenizer.encode("Warm up.")), max_tokens=4):
        pass
    first = last = None
    response = None
    for response in stream_generate(model, tokenizer, mx.array(prompt), max_tokens=tokens, sampler=make_sampler(0.0)):
        last = time.perf_counter()
        first = first or last
    assert response is not None and first is not None and last is not None
    rate = (response.generation_tokens - 1) / (last - first)
    return {"blas": current_blas(), "weights": weights_detail(model), "decode_tok_s": round(rate, 2)}


def run_variant(model_path: Path, tokens: int, kernel: bool, threads: int = 1) -> dict:
    from services.worker.runner.blas import runner_blas_env

    env = {**os.environ, "EXO_CPU_KERNEL": "on" if kernel else "off", "EXO_KERNEL_THREADS": str(threads)}
    env.update(runner_blas_env(Path(sys.prefix), platform.system(), env.get("LD_PRELOAD", "")))
    out = subprocess.run([sys.executable, "-m", "bench.kernel", "--one", str(model_path), "--tokens", str(tokens)],
                         env=env, capture_output=True, text=True, check=True)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(decode_once(args.one, args.tokens)))
        return

    from bench.node_process import scratch_dir
    from services.worker.models.store import ModelStore
    from shared.models import get_card

    card = get_card("smollm2-135m")
    store = ModelStore(scratch_dir("exo-bench-kernel-"))
    q4, f32 = store.ensure(card, "q4"), store.ensure(card, "f32")
    result: dict = {"kernel_alone": kernel_alone(q4)}
    variants = {"q4_exo_kernel": (q4, True, 1), "q4_exo_kernel_2_threads": (q4, True, 2), "f32_dense": (f32, False, 1),
                "q4_mlx": (q4, False, 1)}  # fmt: skip
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    for _ in range(args.rounds):  # interleaved: drift on the machine hits every variant alike
        for name, (path, kernel, threads) in variants.items():
            runs[name].append(run_variant(path, args.tokens, kernel, threads))
    decode = {name: statistics.median(r["decode_tok_s"] for r in rs) for name, rs in runs.items()}
    result["decode_tok_s"] = decode
    result["weights"] = {name: rs[0]["weights"] for name, rs in runs.items()}
    result["blas"] = runs["f32_dense"][0]["blas"]
    result["kernel_over_f32"] = round(decode["q4_exo_kernel"] / decode["f32_dense"], 2)
    result["kernel_over_mlx_q4"] = round(decode["q4_exo_kernel"] / decode["q4_mlx"], 2)
    result["kernel_2_threads_over_1"] = round(decode["q4_exo_kernel_2_threads"] / decode["q4_exo_kernel"], 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
