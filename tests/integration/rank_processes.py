"""Start the ranks of one instance as processes on loopback (a ring hostfile each), wait for all, read their
JSON results: the harness of the sharding and family tests (and bench/families.py)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from services.worker.dataplane import choose_free_ports, ring_config, write_files
from shared.events import Instance, ShardAssignment

REPO = Path(__file__).resolve().parents[2]


def run_rank_processes(
    args: list[str], instance: Instance | None, tmp: Path, timeout_s: float, label: str
) -> list[dict]:
    """One process per shard of `instance` (one alone when None), each given its ring config; the last line each
    prints is its JSON result. Returns them in rank order; a rank that failed fails the test with its stderr."""
    envs: list[dict[str, str]] = [{}]
    if instance is not None and instance.world_size > 1:
        ports = choose_free_ports(instance.world_size)
        addresses = {s.node_id: "127.0.0.1" for s in instance.shards}
        envs = []
        for r in range(instance.world_size):
            config = ring_config(instance, r, addresses, ports, tmp)
            write_files(config)
            envs.append(config.env)
    procs = []
    for r, extra_env in enumerate(envs):
        out, err = open(tmp / f"rank{r}.out", "w"), open(tmp / f"rank{r}.err", "w")
        env = {**os.environ, **extra_env, "PYTHONPATH": str(REPO)}
        procs.append(subprocess.Popen(args, stdout=out, stderr=err, env=env, cwd=REPO))
    deadline = time.monotonic() + timeout_s
    try:
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    results = []
    for r, p in enumerate(procs):
        stderr = (tmp / f"rank{r}.err").read_text()[-3000:]
        assert p.returncode == 0, f"rank {r} of {label} exited {p.returncode}:\n{stderr}"
        results.append(json.loads((tmp / f"rank{r}.out").read_text().strip().splitlines()[-1]))
    return results
