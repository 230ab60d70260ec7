"""`exo bench` and `exo doctor` against a real node (the session's), as a user runs them: the `exo` command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO_ROOT, Node

pytestmark = pytest.mark.slow

TINY = """
models: [smollm2-135m]
placements:
  - {nodes: 1}
  - {backend: jaccl, nodes: 2}   # refused here (no RDMA): the row says why
  - {strategy: tensor, nodes: 1} # no such instance yet: placed, measured, deleted
prompt_tokens: [8]
max_tokens: [4]
concurrency: [1, 2]
repeats: 1
warmup: 0
"""


def exo(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.node.cli", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def test_bench_measures_each_case_and_explains_a_refused_placement(node: Node, tmp_path: Path) -> None:
    node.wait_ready()
    before = httpx.get(f"{node.base_url}/instances").json()["instances"]
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    key = "smollm2-135m/auto/auto/1n/p8/g4/c1"
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps({"rows": [{"case": key, "decode_tps": 1e9, "ttft_ms": 1e-9}]}))
    run = exo("bench", "--config", str(config), "--url", node.base_url, "--state-dir", str(node.state_dir),
              "--json", "--baseline", str(baseline))  # fmt: skip
    assert run.returncode == 1, run.stderr  # the refused case is an error row
    result = json.loads(run.stdout)
    rows = {r["case"]: r for r in result["rows"]}
    placed = "smollm2-135m/tensor/auto/1n/p8/g4/c1"
    assert list(rows) == [key, "smollm2-135m/auto/auto/1n/p8/g4/c2", "smollm2-135m/auto/jaccl/2n/p8/g4/c1",
                          "smollm2-135m/auto/jaccl/2n/p8/g4/c2", placed, "smollm2-135m/tensor/auto/1n/p8/g4/c2"]  # fmt: skip
    node_id = (node.state_dir / "node_id").read_text().strip()
    for measured in (rows[key], rows["smollm2-135m/auto/auto/1n/p8/g4/c2"]):
        assert measured["errors"] == 0 and measured["requests"] == measured["concurrency"]
        assert measured["ttft_ms"] > 0 and measured["prefill_tps"] > 0 and measured["aggregate_tps"] > 0
        assert measured["prompt_tokens"] > 0 and measured["completion_tokens"] > 0
        assert measured["itl_p50_ms"] is None or measured["itl_p99_ms"] >= measured["itl_p50_ms"]
        assert measured["peak_memory"][node_id] > 0
        assert measured["instance"] == before[0]["instance_id"]  # the ready instance that matches is used
    assert rows[placed]["errors"] == 0 and rows[placed]["ttft_ms"] > 0
    assert rows[placed]["instance"] not in {i["instance_id"] for i in before}  # placed for the bench
    refused = rows["smollm2-135m/auto/jaccl/2n/p8/g4/c1"]
    assert "jaccl needs RDMA" in refused["error"] and "409" in refused["error"]
    assert result["ratios"][key]["decode_tps"] < 1e-3 and result["ratios"][key]["ttft_ms"] > 1e3
    after = httpx.get(f"{node.base_url}/instances").json()["instances"]
    assert [i["instance_id"] for i in after] == [i["instance_id"] for i in before]  # nothing left placed


def test_bench_refuses_a_bad_config_with_its_reason(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("models: [smollm2-135m]\nconcurrency: [0]\n")
    run = exo("bench", "--config", str(config), timeout=60)
    assert run.returncode == 2 and "concurrency" in run.stderr and "Traceback" not in run.stderr
    config.write_text("models: [smollm2-135m]\n")
    run = exo("bench", "--config", str(config), "--url", "http://127.0.0.1:9", timeout=60)  # nothing listens on 9
    assert run.returncode == 2 and "cannot reach the gateway at http://127.0.0.1:9" in run.stderr


def doctor(node: Node) -> tuple[int, dict]:
    run = exo("doctor", "--json", "--url", node.base_url, "--nats-url", node.nats_url,
              "--state-dir", str(node.state_dir), timeout=120)  # fmt: skip
    return run.returncode, json.loads(run.stdout)


def test_doctor_passes_on_a_healthy_node_and_names_a_killed_runner(node: Node) -> None:
    node.wait_ready()
    code, report = doctor(node)
    rows = {r["check"]: r for r in report["checks"]}
    assert code == 0 and report["ok"], report
    assert set(rows) == {"bus", "leader", "peers discovered", "clock skew", "RDMA", "memory", "inference speed",
                         "model loading"}  # fmt: skip
    assert rows["RDMA"]["status"] == "n/a" and rows["leader"]["status"] == "pass"

    (runner,) = node.runner_pids()
    os.kill(runner, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the worker restarts it with backoff: catch the window it is down
        code, report = doctor(node)
        if code != 0:
            break
    rows = {r["check"]: r for r in report["checks"]}
    assert code == 1 and not report["ok"], report
    assert rows["model loading"]["status"] == "fail"
    assert rows["model loading"]["advice"] in ("see the runner's log in <state-dir>/logs; the worker restarts it with backoff",
                                              "wait for the download/import (GET /instances shows progress), then run exo doctor again")  # fmt: skip
    node.wait_ready()  # the node heals; later tests find it ready
    code, report = doctor(node)
    assert code == 0, report
