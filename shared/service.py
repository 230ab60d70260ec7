"""Running a service process: signals, logging, and its micro-service registration."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable

import structlog
from nats.aio.client import Client as NATS
from nats.micro import add_service
from nats.micro.service import Service

VERSION = "0.1.0"

log = structlog.get_logger()


async def register(nc: NATS, name: str, node_id: str, description: str) -> Service:
    return await add_service(
        nc, name=name, version=VERSION, description=description, metadata={"node_id": node_id}
    )


def run_until_signalled(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run `main(stop)` until SIGTERM/SIGINT sets `stop`."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    asyncio.run(runner())
