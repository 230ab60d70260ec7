"""Decode and prefill tokens/s of llama.cpp (llama-cpp-python) on a GGUF. Runs in the benchmark's own venv,
not the project's: `python bench/llama_cpp_decode.py GGUF [--threads N] [--tokens 64]` -> one JSON line."""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("gguf")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--prompt-words", type=int, default=0)
    args = parser.parse_args()
    from llama_cpp import Llama

    llm = Llama(model_path=args.gguf, n_ctx=4096, n_threads=args.threads, n_threads_batch=args.threads, verbose=False)
    filler = " ".join(f"word{i}" for i in range(args.prompt_words))
    messages = [{"role": "user", "content": f"{filler}\n\nTell me a long story about a lighthouse keeper and a storm."}]
    start = time.perf_counter()
    first = last = None
    count = 0
    for chunk in llm.create_chat_completion(messages=messages, max_tokens=args.tokens, temperature=0.0, stream=True):
        if chunk["choices"][0]["delta"].get("content"):
            now = time.perf_counter()
            first = first or now
            last = now
            count += 1
    print(json.dumps({
        "threads": args.threads,
        "ttft_s": first - start,
        "decode_tok_s": (count - 1) / (last - first),
        "generated_chunks": count,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
