"""How long a runner lives: it outlives a killed worker (the restarted worker adopts it), never its node.

- The node: the runner watches the node's supervisor (its spec's supervisor_pid, which the worker passes on;
  for a worker started alone, e.g. by launchd, the worker's own parent). When it is gone, the node is gone: exit.
- The worker: the runner's registry record (its spec's record_path) names the worker that owns it; a restarted
  worker that adopts the runner rewrites it. A runner that no live worker owned for ADOPTION_TIMEOUT_S exits,
  so nothing leaks when the worker does not come back.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import structlog

from shared.runner_record import read_record
from shared.processes import Anchor, supervisor_anchor
from shared.process_lifetime import exit_if_still_running

log = structlog.get_logger()

ADOPTION_TIMEOUT_S = 60.0
CHECK_PERIOD_S = 1.0
EXIT_GRACE_S = 10.0  # a rank blocked in a collective may never see `stop`: then it exits hard


def lifetime_verdict(
    node_alive: bool, worker_alive: bool, orphaned_since: float | None, now: float,
    timeout: float = ADOPTION_TIMEOUT_S,
) -> tuple[str | None, float | None]:  # fmt: skip
    """(reason to exit or None, orphaned_since from now on). Pure."""
    if not node_alive:
        return "the node's supervisor is gone", orphaned_since
    if worker_alive:
        return None, None
    since = now if orphaned_since is None else orphaned_since
    if now - since >= timeout:
        return f"no worker adopted this runner within {timeout:.0f} s", since
    return None, since


async def watch_lifetime(
    stop: asyncio.Event, supervisor_pid: int | None, worker_pid: int | None, record_path: Path | None,
    timeout: float = ADOPTION_TIMEOUT_S,
) -> None:  # fmt: skip
    """Set `stop` when the node is gone, or when no worker has owned this runner for `timeout` seconds.
    `worker_pid`: the worker that started the runner (it may be gone before the runner looks; None: our parent)."""
    # the worker that started us, until the record names one
    parent = Anchor.of(worker_pid or os.getppid())
    node = supervisor_anchor(supervisor_pid) or parent
    orphaned_since: float | None = None
    loop = asyncio.get_running_loop()
    # The worker a record names, by its (wall-clock) create time when first seen, then by its start since boot,
    # which a later step of the clock does not move (shared/processes.py).
    named: dict[tuple[int, float], Anchor] = {}
    while not stop.is_set():
        worker = parent
        record = read_record(record_path) if record_path is not None else None
        if record is not None and record.pid == os.getpid():
            key = (record.worker_pid, record.worker_create_time)
            worker = named.get(key) or Anchor.known(*key)
            if worker.ticks is not None:  # found alive: held by its start since boot from now on
                named[key] = worker
        was_orphaned = orphaned_since is not None
        reason, orphaned_since = lifetime_verdict(node.alive(), worker.alive(), orphaned_since, loop.time(), timeout)
        if reason is not None:
            log.warning("runner stops", reason=reason)
            # a timer thread: neither a rank blocked in a collective nor asyncio.run's cancel of this task stops it
            exit_if_still_running(EXIT_GRACE_S, f"runner did not stop in time ({reason})", 1)
            stop.set()
            return
        if orphaned_since is not None and not was_orphaned:
            log.warning("worker is gone; runner waits to be adopted", timeout_s=timeout)
        elif was_orphaned and orphaned_since is None:
            log.info("runner adopted", worker=worker.pid)
        await asyncio.sleep(CHECK_PERIOD_S)
