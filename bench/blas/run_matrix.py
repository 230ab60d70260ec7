"""Interleaved matrix of BLAS options, each in a fresh process (bench_one.py).
Usage: python3 run_matrix.py ROUNDS OUT.jsonl [FILTER|FILTER...]"""
import json, os, resource, subprocess, sys, time
HERE = os.path.dirname(os.path.abspath(__file__))
V1, V2 = "/tmp/blasvenv/bin/python", "/tmp/blasvenv2/bin/python"  # V2: bundled libblas symlinked to Debian OpenBLAS
DEB = "/usr/lib/x86_64-linux-gnu/libopenblas.so.0"
SHIM = "/tmp/shim/libmlxblas_shim.so"  # -> scipy-openblas32 (PyPI)
MKL = "/tmp/blasvenv/lib/libmkl_rt.so.3"
F32, Q4 = "/tmp/smol-f32", "/tmp/smol-q4"
T1, T2 = {"OPENBLAS_NUM_THREADS": "1"}, {"OPENBLAS_NUM_THREADS": "2"}
CONFIGS = [  # name, python, model, extra args, env
    ("f32 bundled-refblas (baseline)", V1, F32, [], {}),
    ("f32 deb-openblas dlopen T=1", V1, F32, ["--preload", DEB], T1),
    ("f32 deb-openblas dlopen T=2", V1, F32, ["--preload", DEB], T2),
    ("f32 deb-openblas LD_PRELOAD T=1", V1, F32, [], {**T1, "LD_PRELOAD": DEB}),
    ("f32 deb-openblas symlink T=1", V2, F32, [], T1),
    ("f32 deb-openblas dlopen T=1 CORETYPE=Haswell", V1, F32, ["--preload", DEB], {**T1, "OPENBLAS_CORETYPE": "Haswell"}),
    ("f32 pypi-scipy-openblas32 shim T=1", V1, F32, ["--preload", SHIM], T1),
    ("f32 pypi-scipy-openblas32 shim T=2", V1, F32, ["--preload", SHIM], T2),
    ("f32 pypi-mkl sequential", V1, F32, ["--preload", MKL], {"MKL_THREADING_LAYER": "SEQUENTIAL"}),
    ("q4 bundled-refblas (baseline)", V1, Q4, [], {}),
    ("q4 deb-openblas dlopen T=1", V1, Q4, ["--preload", DEB], T1),
    ("q4 deb-openblas dlopen T=2", V1, Q4, ["--preload", DEB], T2),
]
rounds, out = int(sys.argv[1]), sys.argv[2]
if len(sys.argv) > 3:  # optional: only configs whose name contains one of these |-separated substrings
    CONFIGS = [c for c in CONFIGS if any(k in c[0] for k in sys.argv[3].split("|"))]
base_env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENBLAS", "MKL", "LD_PRELOAD"))}
for r in range(rounds):
    for name, py, model, extra, env in CONFIGS:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.time()
        p = subprocess.run([py, os.path.join(HERE, "bench_one.py"), model, *extra],
                           env={**base_env, "BENCH_REPS": "1", **env}, capture_output=True, text=True, cwd="/tmp")
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        try:
            d = json.loads(p.stdout.strip().splitlines()[-1])
        except Exception:
            d = {"error": p.stderr[-500:]}
        d.update(config=name, round=r, wall=round(time.time() - t0, 1), load1=os.getloadavg()[0],
                 cpu_user=round(after.ru_utime - before.ru_utime, 1), cpu_sys=round(after.ru_stime - before.ru_stime, 1))
        with open(out, "a") as f:
            f.write(json.dumps(d) + "\n")
        print(name, {k: d.get(k) for k in ("prefill_tps", "decode_tps", "wall", "load1", "cpu_user", "cpu_sys")}, flush=True)
