"""Load time and decode speed of every tiny family model (tests/tiny_families.py) on 1 rank and on a 2-stage
pipeline over MLX's ring on loopback, side by side in one run: the runner's own load_shard and Engine in real
rank processes (tests/integration/family_ranks.py), under the runner's BLAS settings.

    .venv/bin/python -m bench.families [--tokens 128] [--rounds 2]

Per family: cold load (the first load_shard of the process, its files dropped from the page cache first),
warm load (a second load_shard of the same folder), decode tokens/s of one greedy request. A pipeline's load
is its slowest rank's. The cases alternate round by round (this machine's speed drifts); medians are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from services.worker.runner.blas import runner_blas_env
from tests.integration.family_ranks import run_topology
from tests.tiny_families import build_all

CASES = {"1 rank": ("single", 1), "2-stage": ("pipeline", 2)}


def measure(models: dict[str, Path], case: str, tokens: int, scratch: Path) -> dict[str, dict[str, float]]:
    strategy, world = CASES[case]
    folder = Path(tempfile.mkdtemp(dir=scratch))
    ranks = run_topology(models, strategy, world, folder, tokens, "--loads", "2", "--greedy-only", timeout_s=900)
    out = {}
    for name in models:
        per_rank = [r["models"][name] for r in ranks]
        out[name] = {
            "cold_s": max(r["load_s"][0] for r in per_rank),
            "warm_s": max(r["load_s"][1] for r in per_rank),
            "tok_s": per_rank[0]["decode_tps"],
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    os.environ.update(runner_blas_env(Path(sys.prefix), platform.system(), os.environ.get("LD_PRELOAD", "")))
    scratch = Path(tempfile.mkdtemp(prefix="exo-bench-families-"))
    try:
        models = build_all(scratch / "models")
        runs: dict[str, list[dict[str, dict[str, float]]]] = {case: [] for case in CASES}
        for i in range(args.rounds):
            for case in (list(CASES) if i % 2 == 0 else list(reversed(CASES))):
                runs[case].append(measure(models, case, args.tokens, scratch))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report(models, runs)


def report(models: dict[str, Path], runs: dict[str, list[dict[str, dict[str, float]]]]) -> None:
    def median(case: str, name: str, key: str) -> float:
        return statistics.median(run[name][key] for run in runs[case])

    print(f"{'family':16} | {'1 rank: cold s  warm s   tok/s':32} | {'2-stage: cold s  warm s   tok/s':33} | tok/s ratio")
    table = {}
    for name in models:
        row = {case: {k: median(case, name, k) for k in ("cold_s", "warm_s", "tok_s")} for case in CASES}
        one, two = row["1 rank"], row["2-stage"]
        ratio = two["tok_s"] / one["tok_s"] if one["tok_s"] else 0.0
        print(f"{name:16} | {one['cold_s']:13.3f} {one['warm_s']:7.3f} {one['tok_s']:8.1f}   "
              f"| {two['cold_s']:14.3f} {two['warm_s']:7.3f} {two['tok_s']:8.1f}    | {ratio:.2f}")  # fmt: skip
        table[name] = {**row, "pipeline_over_single_tok_s": ratio}
    print(json.dumps(table))


if __name__ == "__main__":
    main()
