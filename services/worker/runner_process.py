"""Starting, watching and stopping one runner subprocess."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections import deque
from pathlib import Path

from shared.events import Instance, ShardAssignment
from shared.models import ModelCard

STOP_GRACE_S = 5.0


def runner_command(
    instance: Instance, shard: ShardAssignment, card: ModelCard, model_path: Path, node_id: str, nats_url: str
) -> list[str]:
    return [
        sys.executable, "-m", "services.worker.runner",
        "--instance-id", instance.instance_id,
        "--model-id", instance.model_id,
        "--model-path", str(model_path),
        "--node-id", node_id,
        "--rank", str(shard.rank),
        "--world-size", str(instance.world_size),
        "--start-layer", str(shard.start_layer),
        "--end-layer", str(shard.end_layer),
        "--n-layers", str(card.n_layers),
        "--context-length", str(card.context_length),
        "--strategy", instance.strategy,
        "--backend", instance.backend,
        "--nats-url", nats_url,
    ]  # fmt: skip


class RunnerProcess:
    def __init__(self, command: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.command = command
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        self.proc: asyncio.subprocess.Process | None = None
        self.stopping = False

    async def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log_file:
            self.proc = await asyncio.create_subprocess_exec(
                *self.command, stdout=log_file, stderr=log_file, env=self.env, start_new_session=True
            )

    async def wait(self) -> int:
        assert self.proc is not None
        return await self.proc.wait()

    async def stop(self) -> None:
        self.stopping = True
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), STOP_GRACE_S)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()

    def log_tail(self, lines: int = 8) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(deque(f, maxlen=lines)).strip()
        except OSError:
            return ""
