"""Decode tokens/s with prompt-lookup speculation over without, on a repetitive task (rewrite a ~300-token text
with one change) and on free generation, greedy, in one run of the in-process engine on the real model
(SmolLM2-135M, in the weight format a node would choose here unless --format). Goals (issue 15): >= 1.5x on the
rewrite, >= 0.95 on free generation. Runs alternate plain/speculative, the median of --repeats counts.

    .venv/bin/python -m bench.speculative [--tokens 128] [--repeats 1] [--format f32] [--model DIR] [--draft-model]

--draft-model: the draft is the same model in a process of its own, asked over a nats-server on loopback as a
draft instance is (bench/draft_bus.py); the propose round trip is timed too (k = 0: the bus alone).

Decode rate: completion tokens after the first over the time after the first token (the first holds the prefill)."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from services.worker.models.store import ModelStore, default_weight_format
from services.worker.runner.blas import current_blas, runner_blas_env
from services.worker.runner.serve.control import Control, Submit
from services.worker.runner.serve.engine import Engine
from shared.generation import ChatMessage, GenerateRequest, SamplingParams, Speculation
from shared.models import get_card

TEXT = (
    "The village of Elm Hollow sits at the bottom of a green valley, where the river bends twice before it reaches "
    "the old stone bridge. Every Monday morning the baker opens his shop at six o'clock, and the smell of fresh "
    "bread drifts along the main street. Children walk to the school on the hill, carrying their books in canvas "
    "bags, while the farmers bring apples, pears and cheese to the market square. In the afternoon the library "
    "opens its doors, and the librarian, a tall woman named Clara, reads stories to anyone who comes in. Later, "
    "when the sun goes down behind the western hills, the lamps along the river are lit one by one, and the old "
    "men of the village gather at the inn to play cards and talk about the harvest. On Sundays the bells of the "
    "small church ring at nine, and families walk together along the river path to the meadow, where they eat "
    "lunch under the oak trees and watch the boats drift slowly past. Nobody in Elm Hollow is ever in a hurry."
)
TASKS = {
    "rewrite": f"Rewrite this text exactly, word for word, but change Monday to Friday:\n\n{TEXT}",
    "free": "Write a short story about a robot who learns to paint. Use vivid detail.",
}


def decode_rate(engine: Engine, question: str, tokens: int, speculation: Speculation | None) -> tuple[float, int, int, int]:
    """(decode tok/s, completion tokens, drafted, accepted)."""
    sampling = SamplingParams(max_tokens=tokens, temperature=0.0)
    prompt = engine.prompt_tokens(GenerateRequest("r", "smollm2-135m", sampling, messages=(ChatMessage("user", question),)))
    steps, _ = engine.run_cycle(Control([Submit("r", prompt, sampling, None, speculation)]))
    while not any(s.completion_tokens for s in steps) and engine.busy:
        steps = engine.step()
    first, start = max(s.completion_tokens for s in steps), time.perf_counter()
    last = steps[-1]
    while engine.busy:
        steps = engine.step()
        last = steps[-1] if steps else last
    elapsed = time.perf_counter() - start
    return (last.completion_tokens - first) / elapsed, last.completion_tokens, last.drafted, last.accepted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--draft-tokens", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--format", default=None, help="weight format (default: what a node here would choose)")
    parser.add_argument("--model", type=Path, default=None, help="an imported model folder (skips the import)")
    parser.add_argument("--draft-model", action="store_true", help="draft with the model in its own process, over NATS")
    args = parser.parse_args()
    # A runner's BLAS (the worker preloads MKL or OpenBLAS): with MLX's reference BLAS a forward pass of k + 1
    # tokens costs k + 1 single ones, which no draft can win back.
    if current_blas() == "reference" and (env := runner_blas_env(Path(sys.prefix), platform.system(), os.environ.get("LD_PRELOAD", ""))):
        os.execve(sys.executable, [sys.executable, "-m", "bench.speculative", *sys.argv[1:]], {**os.environ, **env})
    from mlx_lm import load

    card = get_card("smollm2-135m")
    fmt = args.format or default_weight_format(card)
    path = args.model or ModelStore(Path(tempfile.mkdtemp())).ensure(card, fmt)
    model, tokenizer = load(str(path))
    print(f"model {path} ({fmt}), blas {current_blas()}, {args.tokens} tokens, k <= {args.draft_tokens}, median of {args.repeats}", flush=True)
    speculation, bus = Speculation("ngram", args.draft_tokens), None
    if args.draft_model:
        from bench.draft_bus import DraftBus

        bus = DraftBus(path)
        speculation = Speculation(card.model_id, args.draft_tokens, draft_instance="bench")
        context = list(range(100, 400))
        for k in (0, 1, 4):
            print(f"propose round trip, k = {k}: {bus.round_trip_ms(context, k):.2f} ms (median of 30)", flush=True)

    def engine() -> Engine:
        made = Engine(model, tokenizer)
        made.model_drafts = bus.drafts if bus is not None else None
        return made

    for task, question in TASKS.items():
        plain, spec = [], []
        for _ in range(args.repeats):
            plain.append(decode_rate(engine(), question, args.tokens, None))
            spec.append(decode_rate(engine(), question, args.tokens, speculation))
        base, fast = statistics.median(r[0] for r in plain), statistics.median(r[0] for r in spec)
        _, made, drafted, accepted = spec[-1]
        rate = accepted / drafted if drafted else 0.0
        print(f"{task:8s} plain {base:6.1f} tok/s  speculative {fast:6.1f} tok/s  ratio {fast / base:.2f}  "
              f"({made} tokens, {drafted} drafted, {accepted} accepted: {rate:.0%})", flush=True)  # fmt: skip
    if bus is not None:
        bus.close()


if __name__ == "__main__":
    main()
