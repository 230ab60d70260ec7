"""Decode ms per token of one model split over ring ranks, at the engine level: our Engine, ControlChannel and
PipelineStage in real rank processes over MLX's ring (no NATS, no gateway), for one rank, a 2-stage and a
3-stage pipeline; each case on every core and again pinned to a CPU set (`taskset`), round after round.

What it is for: telling the pipeline's own cost apart from the cost of ranks sharing cores. Nodes on one
small machine (this 2-core build VM, or the benchmark of bench/pipeline.py) put 2-3 ranks on 2 cores;
nodes on separate machines give every rank its own. On a machine with enough cores, the unpinned case
is the second situation and the pinned case the first, on the same hardware in the same run.

    .venv/bin/python -m bench.pipeline_ranks [--model-path DIR] [--random-weights] [--cpus all --cpus 0-1]
                                             [--rounds 3] [--tokens 64]

Without --model-path the f32 SmolLM2 folder is imported into a scratch model store. --random-weights
replaces the weights with random ones of the same shapes and dtype (timing only; for a machine that only
has the config and tokenizer files).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.pipeline import PROMPT  # the prompt of the through-the-gateway benchmark


def rank_child() -> None:
    """One rank (WORLD, MODEL, TOKENS and the ring's MLX_* variables in the environment): a warm-up request,
    then two measured ones; rank 0 prints the median ms between tokens and the cores the process used."""
    from services.worker.runner.serve.control import Control, ControlChannel, Submit
    from services.worker.runner.serve.engine import Engine
    from services.worker.runner.group import init_group, sync_ranks
    from services.worker.runner.model.sharding import load_shard
    from shared.generation import SamplingParams

    world, tokens = int(os.environ["WORLD"]), int(os.environ["TOKENS"])
    group = init_group(world) if world > 1 else None
    rank = group.rank() if group else 0
    n_layers = int(os.environ["N_LAYERS"])
    bounds = [round(n_layers * i / world) for i in range(world + 1)]  # even layer ranges, rank order
    start, end = bounds[rank], bounds[rank + 1]
    model, tokenizer = load_shard(os.environ["MODEL"], "pipeline" if group else "single", group, start, end)
    engine = Engine(model, tokenizer, world_size=world)
    channel = ControlChannel(group) if group else None
    if channel:
        channel.post(Control() if rank == 0 else None)
    prompt = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=True)
    gaps: list[float] = []

    def cycle(control: Control) -> list:
        if channel is not None:
            control, posted = channel.take(), control
            channel.post(posted if rank == 0 else None)
        steps, _ = engine.run_cycle(control)
        return steps

    def request(i: int) -> None:
        submit = Control([Submit(f"r{i}", prompt, SamplingParams(max_tokens=tokens, temperature=0.0))])
        steps, last = cycle(submit), None
        while not any(s.finish_reason for s in steps):
            steps = cycle(Control())
            if steps and steps[0].completion_tokens > 1:
                now = time.perf_counter()
                if last is not None:
                    gaps.append(now - last)
                last = now

    request(0)
    gaps.clear()
    cpu, wall = time.process_time(), time.perf_counter()
    for i in (1, 2):
        request(i)
    cores = (time.process_time() - cpu) / (time.perf_counter() - wall)
    if channel is not None:
        cycle(Control(shutdown=True))
        sync_ranks(group)
    if rank == 0:
        print(json.dumps({"ms": statistics.median(gaps) * 1000, "cores": cores, "gaps": len(gaps)}), flush=True)


def run_case(world: int, cpus: str, model: Path, tokens: int, n_layers: int, scratch: Path) -> dict | None:
    from services.worker.runner.blas import runner_blas_env
    from services.worker.dataplane import choose_free_ports, ring_config, write_files
    from shared.events import Instance, ShardAssignment

    shards = tuple(ShardAssignment(f"node-{r}", r, 0, n_layers) for r in range(world))
    instance = Instance(f"bench-{time.monotonic_ns()}", "bench", "pipeline", "ring", shards)
    ports = choose_free_ports(world)
    base = {**os.environ, **runner_blas_env(Path(sys.prefix), platform.system(), os.environ.get("LD_PRELOAD", ""))}
    base.update(WORLD=str(world), MODEL=str(model), TOKENS=str(tokens), N_LAYERS=str(n_layers))
    procs = []
    for rank in range(world):
        env = dict(base)
        if world > 1:
            config = ring_config(instance, rank, {s.node_id: "127.0.0.1" for s in shards}, ports, scratch)
            write_files(config)
            env.update(config.env)
        pin = [] if cpus == "all" else ["taskset", "-c", cpus]
        command = [*pin, sys.executable, "-m", "bench.pipeline_ranks", "--rank-child"]
        procs.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=900) for p in procs]
    try:
        return json.loads(outputs[0][0].strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        print(f"world {world} cpus {cpus} failed:\n{outputs[0][1][-3000:]}", file=sys.stderr)
        return None


def random_weights(source: Path, target: Path) -> Path:
    """A folder with `source`'s config and tokenizer files and random weights of the model's shapes and
    float32 dtype (the config alone is enough: no weight file is read)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.utils import (  # mlx-lm's own config -> model class mapping
        _get_classes,
        load_config,
    )

    config = load_config(source)
    model_class, args_class = _get_classes(config)
    mx.random.seed(0)
    weights = dict(tree_flatten(model_class(args_class.from_dict(config)).parameters()))
    target.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(target / "model.safetensors"), weights, metadata={"format": "mlx"})
    for f in source.iterdir():
        if f.suffix in (".json", ".model", ".txt", ".jinja") and f.name != "model.safetensors.index.json":
            (target / f.name).write_bytes(f.read_bytes())
    return target


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-path", type=Path)
    parser.add_argument("--random-weights", action="store_true")
    parser.add_argument("--cpus", action="append", help="a CPU set for taskset, or 'all' (unpinned); repeat for several (default: all, then 0-1)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rank-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank_child:
        return rank_child()
    scratch = Path(tempfile.mkdtemp(prefix="exo-bench-ranks-"))
    try:
        measure(args, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def measure(args: argparse.Namespace, scratch: Path) -> None:
    model = args.model_path
    if model is None:
        from services.worker.models.store import ModelStore
        from shared.models import get_card

        model = ModelStore(scratch / "models").ensure(get_card("smollm2-135m"), "f32")
    if args.random_weights:
        model = random_weights(model, scratch / "random")
    n_layers = json.loads((model / "config.json").read_text())["num_hidden_layers"]
    cpusets = args.cpus or ["all", "0-1"]
    rows = []
    for i in range(args.rounds):
        for cpus in cpusets:
            row: dict = {"round": i, "cpus": cpus}
            for world in (1, 2, 3):
                result = run_case(world, cpus, model, args.tokens, n_layers, scratch)
                row[f"ms_{world}"] = result and round(result["ms"], 2)
                row[f"cores_{world}"] = result and round(result["cores"], 2)
                row[f"gaps_{world}"] = result and result["gaps"]  # token gaps measured (EOS cuts them short)
            if all(row[f"ms_{w}"] for w in (1, 2, 3)):
                row["pipeline_2_over_single"] = round(row["ms_1"] / row["ms_2"], 3)
                row["pipeline_3_over_single"] = round(row["ms_1"] / row["ms_3"], 3)
            print(json.dumps(row), file=sys.stderr, flush=True)
            rows.append(row)
    summary = {
        cpus: {
            key: round(statistics.median(r[key] for r in rows if r["cpus"] == cpus and key in r), 3)
            for key in ("pipeline_2_over_single", "pipeline_3_over_single")
            if any(key in r for r in rows if r["cpus"] == cpus)
        }
        for cpus in cpusets
    }
    print(json.dumps({"cpu_count": os.cpu_count(), "rounds": rows, "median_over_rounds": summary}, indent=2))


if __name__ == "__main__":
    main()
