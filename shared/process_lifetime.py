"""Running a service process: signals, logging, and its micro-service registration.

Two guards make sure a service process ends, whatever its event loop does. Both are daemon threads, so no
task can cancel them and no blocked event loop can starve them:
- the node watch: when the node's supervisor is gone (killed with -9, say: it could not stop us), the service
  is asked to stop, and exits hard EXIT_GRACE_S later if it is still there;
- the exit deadline: once a service's main has ended, the process exits hard if it is still there EXIT_GRACE_S
  later. asyncio.run ends by cancelling the tasks left and waiting for them; a task that ignores its cancel
  keeps the process alive for ever. nats-py's reconnect loop can (on Python 3.11, asyncio.wait_for returns the
  result of a connect that failed at the moment it was cancelled, and the loop tries again), so a service
  whose bus was gone could hang in that wait: CI saw a worker do so after kill -9 of its node.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable

import structlog
from nats.aio.client import Client as NATS
from nats.micro import add_service
from nats.micro.service import Service

from shared.processes import supervisor_anchor

VERSION = "0.1.0"

log = structlog.get_logger()


async def register(nc: NATS, name: str, node_id: str, description: str) -> Service:
    return await add_service(
        nc, name=name, version=VERSION, description=description, metadata={"node_id": node_id}
    )


SUPERVISOR_CHECK_S = 1.0
EXIT_GRACE_S = 10.0  # how long a service may take to end by itself, once told to, before it exits hard


def exit_if_still_running(after_s: float, why: str, code: int) -> None:
    """Exit the process with `code` if it is still running `after_s` from now (a daemon thread's timer)."""

    def hard_exit() -> None:
        log.error(f"{why}; exiting hard", after_s=after_s)
        os._exit(code)

    timer = threading.Timer(after_s, hard_exit)
    timer.daemon = True
    timer.start()


def watch_the_node(on_gone: Callable[[], None], supervisor_pid: int | None, check_s: float = SUPERVISOR_CHECK_S,
                   grace_s: float = EXIT_GRACE_S) -> threading.Thread | None:  # fmt: skip
    """Call `on_gone` (from a thread) when the node's supervisor is gone, and exit hard `grace_s` later if the
    process is still there: a node's services never outlive it. Services that the node did not start
    (launchd's) have no supervisor to watch: then nothing is watched and this returns None."""
    supervisor = supervisor_anchor(supervisor_pid)
    if supervisor is None:
        return None

    def watch() -> None:
        while supervisor.alive():
            time.sleep(check_s)
        log.warning("the node's supervisor is gone; stopping", supervisor=supervisor.pid)
        exit_if_still_running(grace_s, "still running after the node's supervisor went", 1)
        on_gone()

    thread = threading.Thread(target=watch, name="node-watch", daemon=True)
    thread.start()
    return thread


def run_until_signalled(main: Callable[[asyncio.Event], Awaitable[None]], supervisor_pid: int | None = None,
                        grace_s: float = EXIT_GRACE_S) -> None:  # fmt: skip
    """Run `main(stop)` until SIGTERM/SIGINT sets `stop`, or the node's supervisor (`supervisor_pid`, from the
    service's spec; None: not watched) is gone;
    once main has ended, the process ends within `grace_s` (see the module's doc)."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        watch_the_node(lambda: _call_soon(loop, stop.set), supervisor_pid, grace_s=grace_s)
        try:
            await main(stop)
        except BaseException:
            exit_if_still_running(grace_s, "the service failed and its event loop did not end", 1)
            raise
        exit_if_still_running(grace_s, "the service stopped but its event loop did not end", 0)

    asyncio.run(runner())


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is closed: the process is ending anyway
        loop.call_soon_threadsafe(callback)
