"""Discovery (local half): publishes this node's facts periodically and answers for them on request."""

from __future__ import annotations

import asyncio

import msgspec
import structlog
from nats.micro.request import Request

from shared import subjects
from shared.bus import connect
from shared.config import CommonConfig
from shared.service import register

from services.discovery.local_facts import read_facts

log = structlog.get_logger()

PUBLISH_PERIOD_S = 2.0


class Discovery:
    def __init__(self, config: CommonConfig, node_id: str, roles: tuple[str, ...], memory_budget: int | None):
        self.config = config
        self.node_id = node_id
        self.roles = roles
        self.memory_budget = memory_budget

    def facts_bytes(self) -> bytes:
        return msgspec.json.encode(read_facts(self.node_id, self.roles, self.memory_budget))

    async def run(self, stop: asyncio.Event) -> None:
        nc = await connect(self.config.nats_url, f"exo-discovery:{self.node_id}")
        service = await register(nc, subjects.SERVICE_DISCOVERY, self.node_id, "node identity and facts")

        async def facts_endpoint(req: Request) -> None:
            await req.respond(self.facts_bytes())

        await service.add_endpoint(
            name="facts", subject=subjects.node_service(self.node_id, "facts"), handler=facts_endpoint
        )
        log.info("discovery ready", node=self.node_id, roles=self.roles, memory_budget=self.memory_budget)
        while not stop.is_set():
            await nc.publish(subjects.facts(self.node_id), self.facts_bytes())
            try:
                await asyncio.wait_for(stop.wait(), PUBLISH_PERIOD_S)
            except TimeoutError:
                pass
        await service.stop()
        await nc.drain()
