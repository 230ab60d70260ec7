"""One rank of every tiny family model in turn (tests/tiny_families.py), through the runner's own load_shard
and Engine, for tests/integration/test_families.py and bench/families.py.

    MLX_RANK=r MLX_HOSTFILE=hosts.json python tests/integration/family_ranks.py --strategy pipeline \
        --world-size 2 --models /tmp/m/llama,/tmp/m/qwen2 --max-tokens 64

Per model: load (--loads times: the first with the files dropped from the page cache, "cold"; then "warm"),
then one greedy and one seeded-sampled request in the same batch (or greedy alone with --greedy-only).
Every rank does the same steps, so the ranks' collectives meet without a control channel. Prints one JSON
line: rank, and per model the tokens of each request, load seconds and decode tokens/s. `run_topology` starts
every rank of one topology and collects those lines.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from services.worker.runner.group import init_group, sync_ranks  # noqa: E402
from services.worker.runner.model.families import ShardingError  # noqa: E402
from services.worker.runner.model.sharding import load_shard  # noqa: E402
from shared.events import Instance, ShardAssignment  # noqa: E402
from shared.generation import SamplingParams  # noqa: E402
from tests.integration.rank_processes import run_rank_processes  # noqa: E402
from tests.tiny_families import layer_split  # noqa: E402

PROMPT = [{"role": "user", "content": "Write a short story about a robot who learns to paint."}]
SEED = 7


def drop_from_page_cache(folder: Path) -> None:
    """Ask the kernel to forget the folder's cached pages (clean pages need no privilege), for a cold load."""
    for file in folder.iterdir():
        with open(file, "rb") as f:
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def generate(engine: Any, prompt: list[int], max_tokens: int, greedy_only: bool) -> dict[str, Any]:
    """Run the requests to their end; the tokens are read off what the engine advances each request by (the
    batch's responses, and the first token of a request alone, which the engine computes itself)."""
    requests = {"greedy": SamplingParams(max_tokens=max_tokens, temperature=0.0)}
    if not greedy_only:
        requests["sampled"] = SamplingParams(max_tokens=max_tokens, temperature=1.0, seed=SEED)
    tokens: dict[str, list[int]] = {name: [] for name in requests}
    advance = engine._advance

    def recording_advance(active: Any, response: Any) -> Any:
        tokens[active.request_id].append(int(response.token))
        return advance(active, response)

    engine._advance = recording_advance
    for name, sampling in requests.items():
        engine.submit(name, prompt, sampling)
    first = last = None
    for _ in range(4 * max_tokens + 16):
        if not engine.busy:
            break
        engine.step()
        now = time.perf_counter()
        if first is None and tokens["greedy"]:
            first = now
        last = now
    out: dict[str, Any] = dict(tokens)
    n = len(out["greedy"])
    out["decode_tps"] = (n - 1) / (last - first) if first and last and last > first else 0.0
    return out


def run_model(folder: Path, args: argparse.Namespace, group: Any) -> dict[str, Any]:
    from services.worker.runner.serve.engine import Engine

    rank = group.rank() if group is not None else 0
    n_layers = json.loads((folder / "config.json").read_text())["num_hidden_layers"]
    start, end = layer_split(n_layers, args.world_size)[rank] if args.strategy == "pipeline" else (0, None)
    load_s = []
    for i in range(args.loads):
        if i == 0:
            drop_from_page_cache(folder)
        t0 = time.perf_counter()
        try:
            # MLX's own quantized kernels on every topology: exo's CPU kernel (int8 activations) serves only unsplit
            # quantized layers, so with it one process and a tensor split would compare two numerics, not a split
            # (the kernel's own tokens are checked in test_quantized_cpu.py).
            model, tokenizer = load_shard(folder, args.strategy, group, start, end, cpu_kernel="off")
        except ShardingError as exc:  # the same on every rank, before any collective
            return {"skipped": str(exc)}
        load_s.append(time.perf_counter() - t0)
    engine = Engine(model, tokenizer, max_batch=2, world_size=args.world_size)
    prompt = list(tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=True))
    result = generate(engine, prompt, args.max_tokens, args.greedy_only)
    sync_ranks(group)
    return {**result, "load_s": load_s, "layer_bytes": layer_bytes(model)}


def layer_bytes(model: Any) -> int:
    """Bytes of the decoder layers' parameters this rank holds (the embedding and head are counted apart)."""
    from mlx.utils import tree_flatten

    return sum(v.nbytes for k, v in tree_flatten(model.parameters()) if "layers." in k)


def run_topology(
    models: dict[str, Path], strategy: str, world: int, tmp: Path, max_tokens: int, *extra: str, timeout_s: float = 300
) -> list[dict]:
    """Start `world` ranks of family_ranks.py over every model; their JSON results, in rank order."""
    args = [sys.executable, str(Path(__file__).resolve()), "--models", ",".join(str(p) for p in models.values())]
    args += ["--strategy", strategy, "--world-size", str(world), "--max-tokens", str(max_tokens), *extra]
    instance = None
    if world > 1:
        instance = Instance("families", "tiny", strategy, "ring", tuple(ShardAssignment(f"node-{r}", r, 0, 4) for r in range(world)))
    return run_rank_processes(args, instance, tmp, timeout_s, f"{strategy}x{world}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", required=True, help="comma-separated model folders")
    parser.add_argument("--strategy", choices=["single", "pipeline", "tensor"], default="single")
    parser.add_argument("--world-size", type=int, default=1)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--loads", type=int, default=1)
    parser.add_argument("--greedy-only", action="store_true")
    args = parser.parse_args()
    group = init_group(args.world_size) if args.strategy != "single" else None
    results = {Path(m).name: run_model(Path(m), args, group) for m in args.models.split(",")}
    print(json.dumps({"rank": group.rank() if group is not None else 0, "models": results}), flush=True)


if __name__ == "__main__":
    main()
