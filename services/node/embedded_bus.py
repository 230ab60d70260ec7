"""The node's own nats-server over time: standalone while the node is alone, one server of the cluster's
NATS cluster once it knows peers, with routes added as peers appear.

Why a standalone server at all: JetStream refuses to start clustered without a route to another server,
and a clustered server alone never elects a JetStream leader. So a node that starts alone serves alone,
and the first time it learns of a peer it restarts its bus clustered (`formation`). That restart is the one
disruptive moment: the standalone log stays behind, every service restarts and rebuilds from the cluster's
log, and the node places its `--model` again. Later peers only add routes, by a configuration reload.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import msgspec
import structlog

from services.node import die_with_parent
from services.node.nats_server import BusUser, ServerConfig, nats_server_argv, write_config
from services.node.supervisor import BUS_CHILD, ChildSpec, Supervisor
from shared.bus_roles import PERMISSIONS
from shared.cluster_secret import (
    derive,
    nats_credentials,
    nats_route_credentials,
)
from shared.peers import PeerTable, read_table

log = structlog.get_logger()


def base_config(
    state_dir: Path, node_id: str, secret: str, host: str, port: int, cluster_host: str, cluster_port: int
) -> ServerConfig:
    users = tuple(BusUser(*nats_credentials(secret, role), rights) for role, rights in PERMISSIONS.items())
    route_user, route_password = nats_route_credentials(secret)
    return ServerConfig(
        server_name=f"exo-{node_id}",
        host=host,
        port=port,
        store_root=state_dir / "nats",
        users=users,
        cluster_name="exo-" + derive(secret, "exo nats cluster name v1").hex()[:12],
        cluster_host=cluster_host,
        cluster_port=cluster_port,
        route_user=route_user,
        route_password=route_password,
    )


def peer_routes(table: PeerTable | None, since: float) -> tuple[str, ...]:
    """Route addresses of the peers heard since `since` (a table left by the last run is not news)."""
    if table is None:
        return ()
    return tuple(sorted({f"{p.address}:{p.route_port}" for p in table.peers if p.route_port and p.last_seen >= since}))


class EmbeddedBus:
    def __init__(self, supervisor: Supervisor, state_dir: Path, config: ServerConfig) -> None:
        self.supervisor = supervisor
        self.state_dir = state_dir
        self.config = config

    @property
    def clustered(self) -> bool:
        return self.config.clustered

    async def start(self, routes: tuple[str, ...]) -> None:
        self.config = msgspec.structs.replace(self.config, routes=routes)
        conf = write_config(self.state_dir, self.config)
        log.info("starting the bus", clustered=self.clustered, routes=list(routes))
        await self.supervisor.start(ChildSpec(BUS_CHILD, die_with_parent.argv(nats_server_argv(conf)), {}))

    def wants(self, routes: tuple[str, ...]) -> tuple[str, ...]:
        """The routes this bus should have: the ones it has and any new ones (never dropped: nats-server
        retries a route to a peer that left, and the peer is back as soon as it returns)."""
        return tuple(sorted(set(self.config.routes) | set(routes)))

    def apply_routes(self, routes: tuple[str, ...]) -> str:
        """'' (nothing to do), 'reloaded' (new routes, same clustered server) or 'formed' (was standalone:
        the caller restarts the bus and every service)."""
        wanted = self.wants(routes)
        if wanted == self.config.routes or self.config.cluster_port <= 0:
            return ""
        was_clustered = self.clustered
        self.config = msgspec.structs.replace(self.config, routes=wanted)
        write_config(self.state_dir, self.config)
        if was_clustered:
            pid = self.supervisor.pid_of(BUS_CHILD)
            if pid is not None:
                os.kill(pid, signal.SIGHUP)  # nats-server reloads its configuration: new routes, no restart
            log.info("bus routes added", routes=list(wanted))
            return "reloaded"
        log.warning("peers found: restarting this node's bus as a member of the cluster", routes=list(wanted))
        return "formed"


async def wait_for_peers(state_dir: Path, since: float, window_s: float) -> tuple[str, ...]:
    """Routes to peers heard within the formation window (discovery beacons from its first second), so
    nodes started together form a cluster at once instead of each starting alone."""
    deadline = time.monotonic() + window_s
    routes: tuple[str, ...] = ()
    while time.monotonic() < deadline:
        routes = peer_routes(read_table(state_dir), since)
        await asyncio.sleep(0.1)
    return routes
