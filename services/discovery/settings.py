"""Discovery's own settings (beyond the common ones): flags with defaults from the environment, so the
supervisor, launchd and the tests configure it the same way."""

from __future__ import annotations

import argparse
import socket

import msgspec
import structlog

from shared.cluster_secret import SECRET_ENV, remembered
from shared.config import DEFAULT_DISCOVERY_PORT
from shared.specs import DiscoverySpec

log = structlog.get_logger()

DISCOVERY_PORT = DEFAULT_DISCOVERY_PORT  # UDP, beacons and probes
DISCOVERY_BIND = "0.0.0.0"
MULTICAST_GROUP = "239.255.41.52"  # organisation-local scope: stays inside the site


class DiscoverySettings(msgspec.Struct, frozen=True):
    hostname: str  # what facts and beacons call this machine
    cluster_secret: str | None  # None: no beacons (nobody could trust them)
    port: int = DISCOVERY_PORT
    bind: str = DISCOVERY_BIND
    static_peers: tuple[tuple[str, int], ...] = ()  # (host, port); hosts are resolved at every send
    route_port: int = 0  # this node's NATS cluster port, advertised in beacons; 0 = takes no routes
    multicast_group: str = MULTICAST_GROUP


def parse_peers(text: str, default_port: int) -> tuple[tuple[str, int], ...]:
    """'a.local:52416,10.0.0.7' -> (('a.local', 52416), ('10.0.0.7', default_port)). IPv4 or names only."""
    peers = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        host, _, port = item.partition(":")
        if not host or (port and not port.isdigit()) or (port and not 0 < int(port) < 65536):
            raise ValueError(f"not a peer (host or host:port): {item!r}")
        peers.append((host, int(port) if port else default_port))
    return tuple(peers)


def port_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port: {text}") from None
    if not 0 <= value < 65536:
        raise argparse.ArgumentTypeError(f"not a port: {text}")
    return value


def add_discovery_args(parser: argparse.ArgumentParser) -> None:
    """Defaults from the environment (shared.config.parse_with_environment) go through `type` too, so a bad
    EXO_* value is a usage error."""
    parser.add_argument("--cluster-secret", default=None,
                        help=f"hex secret that signs beacons (env {SECRET_ENV}); without it, no beacons")  # fmt: skip
    parser.add_argument("--discovery-port", type=port_number, default=DISCOVERY_PORT,
                        help=f"UDP port for beacons (env EXO_DISCOVERY_PORT, default {DISCOVERY_PORT})")  # fmt: skip
    parser.add_argument("--discovery-bind", default=DISCOVERY_BIND,
                        help="address the beacon socket binds (env EXO_DISCOVERY_BIND, default 0.0.0.0)")  # fmt: skip
    parser.add_argument("--peers", default="",
                        help="static peers for networks without broadcast: host:port,host (env EXO_PEERS)")  # fmt: skip
    parser.add_argument("--route-port", type=port_number, default=0,
                        help="this node's NATS cluster route port to advertise (env EXO_ROUTE_PORT; 0 = none)")  # fmt: skip
    parser.add_argument("--hostname", default=None,
                        help="name this machine goes by in facts and beacons (env EXO_HOSTNAME)")  # fmt: skip


def spec_values(ns: argparse.Namespace) -> dict:
    """A DiscoverySpec's beacon fields from the flags. Raises ValueError for a malformed peer list."""
    if ns.cluster_secret:
        log.warning("--cluster-secret is readable by every user of this machine; prefer the node's stored secret")
    return {
        "port": ns.discovery_port,
        "bind": ns.discovery_bind,
        "peers": parse_peers(ns.peers, ns.discovery_port),
        "route_port": ns.route_port,
        "hostname": ns.hostname or None,
    }


def settings_from_spec(spec: DiscoverySpec) -> DiscoverySettings:
    """The secret is the one shared.config remembered (given to a service started alone, else the node's
    stored one); a bad one only disables beacons, so the node keeps its local facts."""
    secret = remembered()
    if secret is None:
        log.warning("no usable cluster secret: no beacons")
    return DiscoverySettings(
        hostname=spec.hostname or socket.gethostname(),
        cluster_secret=secret,
        port=spec.port,
        bind=spec.bind,
        static_peers=spec.peers,
        route_port=spec.route_port,
    )
