"""Real rank processes on MLX's ring backend over loopback (no model): a rank that waits for its peer
sleeps instead of spinning (services/worker/runner/ring/ring_wait.py), and the control channel carries a
prompt too long for its block (services/worker/runner/serve/control.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.worker.dataplane import choose_free_ports, ring_config, write_files
from shared.events import Instance, ShardAssignment

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tests" / "integration" / "ring_ranks.py"
IDLE_S = 3.0

pytestmark = pytest.mark.slow


def run_pair(tmp: Path, mode: str, prompt_tokens: int = 4000, world: int = 2) -> list[dict]:
    shards = tuple(ShardAssignment(f"node-{r}", r, 0, 1) for r in range(world))
    instance = Instance("ring-test", "none", "pipeline", "ring", shards)
    ports = choose_free_ports(world)
    procs = []
    for rank in range(world):
        config = ring_config(instance, rank, {s.node_id: "127.0.0.1" for s in shards}, ports, tmp / mode)
        write_files(config)
        env = {**os.environ, **config.env, "PYTHONPATH": str(REPO)}
        command = [sys.executable, str(SCRIPT), "--idle-s", str(IDLE_S), "--prompt-tokens", str(prompt_tokens),
                   "--world", str(world), "--ring-wait", mode]  # fmt: skip
        procs.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for rank, p in enumerate(procs):
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, f"rank {rank} ({mode}) exited {p.returncode}:\n{err[-3000:]}"
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def test_a_waiting_rank_sleeps_in_the_kernel(tmp_path):
    """The follower waits IDLE_S seconds for rank 0's control. MLX's own busy-poll burns that whole time on
    a core (measured here too, so the test shows it can tell the two apart); ours sleeps."""
    blocked = run_pair(tmp_path, "block")[1]
    spun = run_pair(tmp_path, "spin")[1]
    print(f"follower CPU while waiting {IDLE_S:.0f} s: block {blocked['take_cpu_s']:.2f} s, spin {spun['take_cpu_s']:.2f} s")
    assert blocked["take_wall_s"] >= IDLE_S * 0.8 and spun["take_wall_s"] >= IDLE_S * 0.8
    assert blocked["take_cpu_s"] < 0.15 * IDLE_S
    assert spun["take_cpu_s"] > 0.5 * IDLE_S


@pytest.mark.parametrize("world", [2, 3])
def test_a_long_prompt_reaches_every_rank_and_the_next_control_follows(tmp_path, world):
    """The control passes down the chain of ranks, with an overflow for the long prompt, between the
    activations each step hands on: every rank gets both controls and every activation intact."""
    for result in run_pair(tmp_path, "block", prompt_tokens=6000, world=world):
        assert result["prompt_ok"], result
        assert result["second"] == [["long"], []]
        r = result["rank"]
        assert result["handed"] == ([] if r == 0 else [[100.0 + r - 1], [200.0 + r - 1], [300.0 + r - 1]])
