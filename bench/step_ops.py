"""Graph ops of one decode step of SmolLM2-135M as a runner loads it (load_shard), by op name, for each
combination of the CPU fusion (EXO_CPU_FUSION) and the CPU kernel (EXO_CPU_KERNEL):

    .venv/bin/python -m bench.step_ops   -> JSON {variant: {"ops": N, "by_op": {...}}}

Counted with mx.export_to_dot on the logits of one token after a 13-token prompt (TEXT) (each node is an op the
thread driving MLX builds and the stream thread dispatches: ~4 us each on this machine, issue 16).
"""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

TEXT = "Tell me a long story about a lighthouse keeper and a storm."


def count_once(model_path: str) -> dict:
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    from services.worker.runner.model.sharding import load_shard

    fusion, kernel = os.environ["EXO_CPU_FUSION"], os.environ["EXO_CPU_KERNEL"]  # set by main, per variant
    model, tokenizer = load_shard(model_path, "single", cpu_fusion=fusion, cpu_kernel=kernel)
    cache = make_prompt_cache(model)
    mx.eval(model(mx.array([tokenizer.encode(TEXT)]), cache=cache))
    logits = model(mx.array([[42]]), cache=cache)[:, -1, :]
    with tempfile.TemporaryDirectory() as tmp:
        dot = Path(tmp) / "step.dot"
        mx.export_to_dot(str(dot), mx.argmax(logits, axis=-1))
        names = re.findall(r'label ="([A-Za-z][A-Za-z0-9_]*)', dot.read_text())
    return {"ops": len(names), "by_op": dict(collections.Counter(names).most_common())}


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--one":
        print(json.dumps(count_once(sys.argv[2])))
        return
    from bench.node_process import scratch_dir
    from services.worker.models.store import ModelStore
    from shared.models import get_card

    store = ModelStore(scratch_dir("exo-bench-ops-"))
    card = get_card("smollm2-135m")
    variants = {
        "f32_unfused": ("f32", "off", "off"),
        "f32_fused": ("f32", "on", "off"),
        "q4_kernel_fused": ("q4", "on", "on"),
    }
    out = {}
    for name, (fmt, fusion, kernel) in variants.items():
        env = {**os.environ, "EXO_CPU_FUSION": fusion, "EXO_CPU_KERNEL": kernel}
        run = subprocess.run([sys.executable, "-m", "bench.step_ops", "--one", str(store.ensure(card, fmt))],
                             env=env, capture_output=True, text=True, check=True)  # fmt: skip
        out[name] = json.loads(run.stdout.strip().splitlines()[-1])
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
