"""One raw mlx-lm measurement in a process of its own (so the BLAS and memory are what a runner would get):
prefill tokens/s, time to first token and decode tokens/s of `stream_generate` on a model folder.

    python -m bench.raw_mlx MODEL_FOLDER [--tokens 64] [--prompt-words 0]   -> one JSON line
"""

from __future__ import annotations

import argparse
import json
import time

PROMPT = [{"role": "user", "content": "Tell me a long story about a lighthouse keeper and a storm."}]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model_path")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--prompt-words", type=int, default=0, help="extra words in the prompt (prefill size)")
    parser.add_argument("--text", default=None, help="a plain prompt (no chat template) instead of the chat one")
    args = parser.parse_args()

    import mlx.core as mx
    from mlx_lm import load, stream_generate
    from mlx_lm.sample_utils import make_sampler

    from services.worker.runner.blas import current_blas

    model, tokenizer = load(args.model_path)
    messages = PROMPT
    if args.prompt_words:
        filler = " ".join(f"word{i}" for i in range(args.prompt_words))
        messages = [{"role": "user", "content": f"{filler}\n\n{PROMPT[0]['content']}"}]
    if args.text is not None:
        prompt = tokenizer.encode(args.text)
    else:
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    # warm-up on another prompt: first-call costs (allocation, kernel set-up) are not what we measure
    for _ in stream_generate(model, tokenizer, mx.array(tokenizer.encode("Warm up.")), max_tokens=2):
        pass
    start = time.perf_counter()
    first = last = None
    response = None
    for response in stream_generate(model, tokenizer, mx.array(prompt), max_tokens=args.tokens, sampler=make_sampler(0.0)):
        now = time.perf_counter()
        first = first or now
        last = now
    assert response is not None and first is not None and last is not None
    print(json.dumps({
        "blas": current_blas(),
        "prompt_tokens": len(prompt),
        "ttft_s": first - start,
        "prefill_tok_s": response.prompt_tps,
        "decode_tok_s": (response.generation_tokens - 1) / (last - first) if last > first else 0.0,
        "generated": response.generation_tokens,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
