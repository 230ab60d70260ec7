"""Runs the node's processes and restarts any that dies, with backoff; stops them in order."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec
import structlog

from shared.config import without_exo_variables

log = structlog.get_logger()

BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 30.0
# A child that ran this long was not crash-looping: it starts again from the shortest backoff. The backoff is for
# a service that dies during its start (a few seconds here); with 30 s, kills of a gateway that had served for
# 15 s doubled the wait each time (0.5 s ... 8 s by the fifth), so a later crash came back slower than the first.
HEALTHY_AFTER_S = 10.0
STOP_GRACE_S = 8.0
BUS_CHILD = "nats-server"


class ChildSpec(msgspec.Struct, frozen=True):
    name: str
    argv: list[str]
    env: dict[str, str] = {}


def next_backoff(previous: float, ran_for: float) -> float:
    """The wait before restarting a child that ran `ran_for` s and whose last wait was `previous` (0: none)."""
    if ran_for >= HEALTHY_AFTER_S:
        return BACKOFF_START_S
    return min(BACKOFF_MAX_S, previous * 2) if previous else BACKOFF_START_S


class Child:
    def __init__(self, spec: ChildSpec) -> None:
        self.spec = spec
        self.proc: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self.backoff = 0.0

    async def start(self) -> None:
        env = {**without_exo_variables(os.environ), **self.spec.env}  # a service's settings are its spec
        # A session of its own: Ctrl-C reaches the supervisor only, which then stops children in order.
        self.proc = await asyncio.create_subprocess_exec(*self.spec.argv, env=env, start_new_session=True)

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), STOP_GRACE_S)
        except TimeoutError:
            log.warning("child ignored SIGTERM; killing", child=self.spec.name)
            self.proc.kill()
            await self.proc.wait()


class Supervisor:
    def __init__(self, pid_file: Path | None = None) -> None:
        self.children: list[Child] = []
        self.pid_file = pid_file
        self.stopping = False
        self._watchers: list[asyncio.Task] = []
        self._restarting: asyncio.Event | None = None  # set when restart_all has started every child again

    async def start(self, spec: ChildSpec) -> Child:
        child = Child(spec)
        self.children.append(child)
        await child.start()
        self._write_pids()
        self._watchers.append(asyncio.create_task(self._watch(child)))
        return child

    async def _watch(self, child: Child) -> None:
        while True:
            started = time.monotonic()
            proc = child.proc
            assert proc is not None
            code = await proc.wait()
            if self.stopping:
                return
            if self._restarting is not None:  # restart_all stopped it and starts it again: watch the new one
                await self._restarting.wait()
                continue
            if child.proc is not proc:  # restart_all has already started it again
                continue
            child.backoff = next_backoff(child.backoff, time.monotonic() - started)
            log.warning("service exited; restarting", service=child.spec.name, code=code, in_s=child.backoff)
            await asyncio.sleep(child.backoff)
            if self.stopping:
                return
            await child.start()
            child.restarts += 1
            self._write_pids()

    def pid_of(self, name: str) -> int | None:
        for child in self.children:
            if child.spec.name == name and child.proc is not None and child.proc.returncode is None:
                return child.proc.pid
        return None

    async def restart_all(self, bus_ready: Callable[[], Awaitable[object]] | None = None) -> None:
        """Stop every child in order, then start them again: the bus first (with its new configuration), and
        the services once `bus_ready` returns. The watchers do not restart what this stopped: a service
        restarted while the old bus still ran (another service was slow to stop) connected to it, and mixed
        the old bus's log into the state it then followed from the new one."""
        done = asyncio.Event()
        self._restarting = done
        try:
            await self._stop_in_order()
            for child in sorted(self.children, key=lambda c: c.spec.name != BUS_CHILD):  # the bus, then the rest
                if self.stopping:
                    return
                await child.start()
                if child.spec.name == BUS_CHILD and bus_ready is not None:
                    await bus_ready()
            self._write_pids()
        finally:
            self._restarting = None
            done.set()

    async def _stop_in_order(self) -> None:
        """The services together, then the bus they all use."""
        services = [c for c in self.children if c.spec.name != BUS_CHILD]
        await asyncio.gather(*(c.stop() for c in services))
        await asyncio.gather(*(c.stop() for c in self.children if c.spec.name == BUS_CHILD))

    def _write_pids(self) -> None:
        if self.pid_file is None:
            return
        pids = {c.spec.name: c.proc.pid for c in self.children if c.proc is not None}
        pids["supervisor"] = os.getpid()
        tmp = self.pid_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(pids))
        tmp.replace(self.pid_file)

    async def stop(self) -> None:
        """Stop the services together, then the bus they all use."""
        self.stopping = True
        for task in self._watchers:
            task.cancel()
        await self._stop_in_order()
        if self.pid_file is not None:
            self.pid_file.unlink(missing_ok=True)
