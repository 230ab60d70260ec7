"""Discovery: this node's facts on the bus, and its peers on the network.

Beacons start first and do not need the bus: the node decides how to start its bus (alone, or clustered with
routes to the peers) from the peers.json that beacons fill. Facts and the `peers` endpoint follow once the
bus answers; until then the beacons go on and the bus connection is retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time

import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.micro.request import Request

from shared import subjects
from shared.bus import connect, disconnect
from shared.bus_roles import DISCOVERY
from shared.cluster_secret import beacon_key
from shared.config import CommonConfig
from shared.ids import NodeId
from shared.peers import PeerTable, peers_path, write_table
from shared.process_lifetime import register

from services.discovery.beacon_io import BeaconIO
from services.discovery.local_facts import mlx_backends, read_facts
from services.discovery.settings import DiscoverySettings

log = structlog.get_logger()

PUBLISH_PERIOD_S = 2.0
BEACON_RETRY_S = 5.0
BUS_RETRY_S = 5.0  # after connect() gave up (it retries by itself for 30 s, or refuses at once on bad credentials)  # the beacon port may be taken for a while (a previous discovery still exiting)


class Discovery:
    def __init__(
        self,
        config: CommonConfig,
        node_id: NodeId,
        roles: tuple[str, ...],
        memory_budget: int | None,
        settings: DiscoverySettings | None = None,
    ):
        self.config = config
        self.node_id = node_id
        self.roles = roles
        self.memory_budget = memory_budget
        self.settings = settings or DiscoverySettings(hostname=socket.gethostname(), cluster_secret=None)
        self.beacons: BeaconIO | None = None

    def facts_bytes(self) -> bytes:
        links = self.beacons.book.links() if self.beacons is not None else ()
        facts = read_facts(self.node_id, self.roles, self.memory_budget, self.settings.hostname, links)
        return msgspec.json.encode(facts)

    def peer_table(self) -> PeerTable:
        if self.beacons is None:
            return PeerTable(self.node_id, time.time())
        return self.beacons.book.table(time.time())

    async def run(self, stop: asyncio.Event) -> None:
        beacons = asyncio.create_task(self._run_beacons(stop))
        try:
            nc = await self._connect(stop)
            if nc is not None:
                await self._serve(nc, stop)
        finally:
            if not stop.is_set():  # leaving on an error: the beacons must not outlive the service
                beacons.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beacons

    # -- beacons ------------------------------------------------------------------------------------

    async def _run_beacons(self, stop: asyncio.Event) -> None:
        secret = self.settings.cluster_secret
        if secret is None:
            log.warning("no cluster secret (EXO_CLUSTER_SECRET): no beacons, this node finds no peers")
            peers_path(self.config.state_dir).unlink(missing_ok=True)  # a table from an earlier run would lie
            return
        backends = await asyncio.to_thread(mlx_backends)  # imports mlx once: not on the event loop
        self.beacons = BeaconIO(
            self.settings, beacon_key(secret), self.node_id, backends,
            on_table=lambda table: write_table(self.config.state_dir, table),
        )  # fmt: skip
        while not stop.is_set():
            try:
                await self.beacons.run(stop)
            except OSError as exc:
                log.error("cannot open the beacon socket; retrying", bind=self.settings.bind,
                          port=self.settings.port, error=str(exc))  # fmt: skip
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), BEACON_RETRY_S)

    # -- the bus ------------------------------------------------------------------------------------

    async def _connect(self, stop: asyncio.Event) -> NATS | None:
        """The bus connection, retried for as long as it takes (None when stopped first)."""
        while not stop.is_set():
            attempt = asyncio.create_task(connect(self.config.nats_url, f"exo-discovery:{self.node_id}", role=DISCOVERY))
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait({attempt, stopped}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if not attempt.done():
                attempt.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                    await attempt
                return None
            try:
                return attempt.result()
            except ConnectionError as exc:  # unreachable for a while, or refused (wrong secret): try again later
                log.warning("bus not reachable yet; beacons go on", error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), BUS_RETRY_S)
        return None

    async def _serve(self, nc: NATS, stop: asyncio.Event) -> None:
        service = await register(nc, subjects.SERVICE_DISCOVERY, self.node_id, "node identity, facts and peers")

        async def facts_endpoint(req: Request) -> None:
            await req.respond(self.facts_bytes())

        async def peers_endpoint(req: Request) -> None:
            await req.respond(msgspec.json.encode(self.peer_table()))

        await service.add_endpoint(
            name="facts", subject=subjects.node_service(self.node_id, "facts"), handler=facts_endpoint
        )
        await service.add_endpoint(
            name="peers", subject=subjects.node_service(self.node_id, "peers"), handler=peers_endpoint
        )
        log.info("discovery ready", node=self.node_id, roles=self.roles, memory_budget=self.memory_budget)
        while not stop.is_set():
            await nc.publish(subjects.facts(self.node_id), self.facts_bytes())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), PUBLISH_PERIOD_S)
        await service.stop()
        await disconnect(nc)
