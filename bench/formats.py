"""Benchmark the weight format and BLAS the worker chooses for this device against the as-loaded 4-bit model
(MLX's bundled BLAS), in one run: decode and prefill tokens/s; and our decode against llama.cpp on the same GGUF.

    .venv/bin/python -m bench.formats [--llama-python /path/to/venv/bin/python] [--rounds 3]

llama.cpp is built in the benchmark's own environment, never a project dependency:
    python3 -m venv /tmp/llamavenv && /tmp/llamavenv/bin/pip install llama-cpp-python
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess

from bench.node_process import run_raw, scratch_dir
from services.worker.models.store import ModelStore, default_weight_format, packaged_file
from shared.models import get_card

PREFILL_WORDS = 150  # ~300-token prompt


def median_of(rounds: list[dict], key: str) -> float:
    return round(statistics.median(r[key] for r in rounds), 2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--llama-python", default=None, help="python of a venv with llama-cpp-python")
    args = parser.parse_args()
    card = get_card("smollm2-135m")
    store = ModelStore(scratch_dir("exo-bench-formats-"))
    chosen = default_weight_format(card)
    q4 = store.ensure(card, "q4")
    best = store.ensure(card, chosen)

    runs: dict[str, list[dict]] = {"as_loaded_q4": [], "chosen": [], "llama_cpp_1t": [], "llama_cpp_2t": []}
    for _ in range(args.rounds):  # interleaved: drift on the machine hits every variant alike
        runs["as_loaded_q4"].append(run_raw(q4, args.tokens, PREFILL_WORDS, bundled_blas=True))
        runs["chosen"].append(run_raw(best, args.tokens, PREFILL_WORDS))
        if args.llama_python:
            for threads in (1, 2):
                out = subprocess.run(
                    [args.llama_python, "bench/llama_cpp_decode.py", str(packaged_file(card.source)),
                     "--threads", str(threads), "--tokens", str(args.tokens), "--prompt-words", str(PREFILL_WORDS)],
                    capture_output=True, text=True, check=True,
                )  # fmt: skip
                runs[f"llama_cpp_{threads}t"].append(json.loads(out.stdout.strip().splitlines()[-1]))

    base, ours = runs["as_loaded_q4"], runs["chosen"]
    result = {
        "chosen_format": chosen,
        "chosen_blas": ours[0]["blas"],
        "prompt_tokens": ours[0]["prompt_tokens"],
        "as_loaded_q4": {"decode_tok_s": median_of(base, "decode_tok_s"), "prefill_tok_s": median_of(base, "prefill_tok_s")},
        "chosen": {"decode_tok_s": median_of(ours, "decode_tok_s"), "prefill_tok_s": median_of(ours, "prefill_tok_s")},
        "decode_ratio": round(median_of(ours, "decode_tok_s") / median_of(base, "decode_tok_s"), 2),
        "prefill_ratio": round(median_of(ours, "prefill_tok_s") / median_of(base, "prefill_tok_s"), 2),
    }
    for threads in (1, 2):
        llama = runs[f"llama_cpp_{threads}t"]
        if llama:
            result[f"llama_cpp_{threads}_thread_decode_tok_s"] = median_of(llama, "decode_tok_s")
            result[f"our_decode_over_llama_cpp_{threads}_thread"] = round(
                median_of(ours, "decode_tok_s") / median_of(llama, "decode_tok_s"), 2
            )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
