"""Running a service process: signals, logging, and its micro-service registration."""

from __future__ import annotations

import asyncio
import os
import signal
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
EXIT_GRACE_S = 10.0  # a service that does not stop by itself this long after its node went exits hard


async def end_with_the_node(stop: Callable[[], None], check_s: float = SUPERVISOR_CHECK_S) -> None:
    """Call `stop` when the node's supervisor is gone (killed with -9, say: it could not stop us), so that a
    node's services never outlive it; exit hard if the service is still there EXIT_GRACE_S later. Services
    that the node did not start (launchd's) have no supervisor to watch: this returns at once."""
    supervisor = supervisor_anchor()
    if supervisor is None:
        return
    while supervisor.alive():
        await asyncio.sleep(check_s)
    log.warning("the node's supervisor is gone; stopping", supervisor=supervisor.pid)
    stop()
    await asyncio.sleep(EXIT_GRACE_S)
    log.error("still running after the node's supervisor went; exiting hard")
    os._exit(1)


def run_until_signalled(main: Callable[[asyncio.Event], Awaitable[None]], watch_the_node: bool = True) -> None:
    """Run `main(stop)` until SIGTERM/SIGINT sets `stop`, or (`watch_the_node`) the node's supervisor is gone."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        watch = loop.create_task(end_with_the_node(stop.set)) if watch_the_node else None
        try:
            await main(stop)
        finally:
            if watch is not None:
                watch.cancel()

    asyncio.run(runner())
