"""One benchmark run in a fresh process: prefill tok/s (~200-token prompt) and
greedy decode tok/s (64 tokens). Prints one JSON line.
Usage: python bench_one.py MODEL_DIR [--preload LIB ...]
--preload dlopens LIB with RTLD_GLOBAL *before* importing mlx (no env var needed)."""
import ctypes, json, os, sys, time

args = sys.argv[1:]
model_dir = args[0]
preloads = [args[i + 1] for i, a in enumerate(args) if a == "--preload"]
for lib in preloads:
    ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)

import mlx.core as mx
from mlx_lm import load
from mlx_lm.models.cache import make_prompt_cache

model, tok = load(model_dir)
text = ("The history of the printing press begins in the fifteenth century, when Johannes Gutenberg "
        "combined movable metal type, oil-based ink and a wooden screw press. ") * 8
ids = tok.encode(text)[:200]
prompt = mx.array(ids)

def run(n_decode):
    cache = make_prompt_cache(model)
    c0 = time.process_time()
    t0 = time.perf_counter()
    logits = model(prompt[None], cache=cache)
    y = mx.argmax(logits[:, -1, :], axis=-1)
    mx.eval(y)
    t1 = time.perf_counter()
    c1 = time.process_time()
    out = [y.item()]
    for _ in range(n_decode):
        logits = model(y[:, None], cache=cache)
        y = mx.argmax(logits[:, -1, :], axis=-1)
        out.append(y.item())
    t2 = time.perf_counter()
    c2 = time.process_time()
    global cpu_p, cpu_d
    cpu_p, cpu_d = c1 - c0, c2 - c1
    return t1 - t0, t2 - t1, out

run(4)  # warm-up
reps = int(os.environ.get("BENCH_REPS", "2"))
best_p, best_d = 1e9, 1e9
for _ in range(reps):
    p, d, toks = run(64)
    best_p, best_d = min(best_p, p), min(best_d, d)

maps = open("/proc/self/maps").read()
names = {l.split()[-1].rsplit("/", 1)[-1] for l in maps.splitlines() if "/" in l}
blas = sorted(n for n in names if any(k in n for k in ("blas", "mkl_", "lapack")))
print(json.dumps({"model": os.path.basename(model_dir.rstrip("/")), "n_prompt": len(ids),
                  "prefill_tps": round(len(ids) / best_p, 1), "decode_tps": round(64 / best_d, 2),
                  "prefill_cpu_s": round(cpu_p, 2), "decode_cpu_s": round(cpu_d, 2), "tokens": toks, "libs": blas}))
