"""Starting, watching and stopping one runner subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections import deque
from pathlib import Path

import psutil

from shared.config import without_exo_variables
from shared.specs import RunnerSpec, encode_spec

STOP_GRACE_S = 5.0
ADOPTED_POLL_S = 0.5


def runner_command(spec: RunnerSpec) -> list[str]:
    return [sys.executable, "-m", "services.worker.runner", "--spec", encode_spec(spec)]


def log_tail(path: Path, lines: int) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(deque(f, maxlen=lines)).strip()
    except OSError:
        return ""


class RunnerProcess:
    def __init__(self, command: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.command = command
        self.log_path = log_path
        # no EXO_* variable reaches a runner: its settings are its spec
        self.env = {**without_exo_variables(os.environ), **(env or {})}
        self.proc: asyncio.subprocess.Process | None = None
        self.stopping = False

    async def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log_file:
            self.proc = await asyncio.create_subprocess_exec(
                *self.command, stdout=log_file, stderr=log_file, env=self.env, start_new_session=True
            )

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    async def wait(self) -> int | None:
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
        return log_tail(self.log_path, lines)


class AdoptedRunner:
    """A runner that outlived the worker that started it: not our child, so watched by polling and stopped by
    pid. The create time guards against a pid that the OS gave to another process meanwhile."""

    def __init__(self, pid: int, create_time: float, log_path: Path) -> None:
        self.log_path = log_path
        self.stopping = False
        try:
            self.proc: psutil.Process | None = psutil.Process(pid)
            if abs(self.proc.create_time() - create_time) >= 0.01:
                self.proc = None
        except psutil.Error:
            self.proc = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        try:
            return self.proc is not None and self.proc.is_running() and self.proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    async def wait(self) -> int | None:
        """Until the process is gone. Its exit code is its real parent's to collect: None."""
        while self.alive():
            await asyncio.sleep(ADOPTED_POLL_S)
        return None

    async def stop(self) -> None:
        self.stopping = True
        if not self._signal(signal.SIGTERM):
            return
        try:
            await asyncio.wait_for(self.wait(), STOP_GRACE_S)
        except TimeoutError:
            self._signal(signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wait(), STOP_GRACE_S)

    def _signal(self, sig: int) -> bool:
        if not self.alive() or self.proc is None:  # (alive() implies a proc; the check says so to mypy)
            return False
        try:
            self.proc.send_signal(sig)  # psutil refuses a pid reused since (NoSuchProcess)
            return True
        except psutil.Error:
            return False

    def log_tail(self, lines: int = 8) -> str:
        return log_tail(self.log_path, lines)
