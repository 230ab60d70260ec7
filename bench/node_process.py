"""Start and stop a real `exo` node for benchmarks (the same command a user runs)."""

from __future__ import annotations

import atexit
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from shared.cluster_secret import write_private


def scratch_dir(prefix: str) -> Path:
    """A temporary state dir for one benchmark run, removed when the benchmark exits (node state holds model
    copies: GBs per run); EXO_BENCH_KEEP=1 keeps it and prints where."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if os.environ.get("EXO_BENCH_KEEP") == "1":
        atexit.register(print, f"benchmark state kept in {path}", file=sys.stderr)
    else:
        atexit.register(shutil.rmtree, path, True)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# One secret for every node of a benchmark run, so `--nats-url` joins work; each beacons on its own port.
BENCH_SECRET = secrets.token_hex(32)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    def __init__(
        self, state_dir: Path, *extra: str, env: dict[str, str] | None = None, secret: str = BENCH_SECRET
    ) -> None:
        self.state_dir = state_dir
        self.env = env or {}
        self.secret = secret
        self.port = free_port()
        self.nats_port = free_port()
        self.extra = extra
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> float:
        """Start; returns the monotonic time of the spawn."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.state_dir / "node-output.log", "ab")
        secret_file = self.state_dir / "given.secret"  # a file, not argv: other users can read a command line
        write_private(secret_file, self.secret)
        started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.node.cli", "--state-dir", str(self.state_dir),
             "--port", str(self.port), "--nats-port", str(self.nats_port), "--cluster-secret-file", str(secret_file),
             "--discovery-port", str(free_udp_port()), "--route-port", "0", *self.extra],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "EXO_CONSOLE_LOGS": "1", **self.env},
        )  # fmt: skip
        return started

    def health(self) -> dict | None:
        try:
            with urllib.request.urlopen(self.base_url + "/health", timeout=2) as r:
                return json.load(r)
        except OSError:
            return None

    def instances(self) -> dict | None:
        """GET /instances: each rank's status detail (the ready one names weights, kernel and a GPU device)."""
        try:
            with urllib.request.urlopen(self.base_url + "/instances", timeout=5) as r:
                return json.load(r)
        except OSError:
            return None

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            h = self.health()
            if h and h["ready_instances"]:
                return
            if self.proc and self.proc.poll() is not None:
                raise RuntimeError(f"node exited with {self.proc.returncode}")
            time.sleep(0.1)
        raise TimeoutError("node not ready")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)


def run_raw(
    model_path: Path, tokens: int, prompt_words: int = 0, bundled_blas: bool = False, text: str | None = None
) -> dict:
    """bench.raw_mlx in a subprocess with the environment the worker gives a runner (or MLX's bundled BLAS)."""
    import platform

    from services.worker.runner.blas import runner_blas_env

    env = {**os.environ}
    if not bundled_blas:
        env.update(runner_blas_env(Path(sys.prefix), platform.system(), env.get("LD_PRELOAD", "")))
    out = subprocess.run(
        [sys.executable, "-m", "bench.raw_mlx", str(model_path), "--tokens", str(tokens),
         "--prompt-words", str(prompt_words), *(["--text", text] if text is not None else [])],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])
