"""The peer table discovery keeps: written by discovery to `<state-dir>/peers.json` after every change,
read by the node (NATS routes) and by `exo peers`. One entry per node id, never two."""

from __future__ import annotations

from pathlib import Path

import msgspec

PEERS_FILE = "peers.json"


class Peer(msgspec.Struct, frozen=True):
    node_id: str
    hostname: str
    address: str  # IPv4 the beacon came from
    discovery_port: int  # UDP
    route_port: int  # NATS cluster (route) port; 0 when the peer's bus takes no routes
    memory_total: int
    memory_available: int
    backends: tuple[str, ...]
    last_seen: float  # unix time of the last valid beacon
    latency_ms: float | None = None  # round trip of a signed probe, when measured


class PeerTable(msgspec.Struct, frozen=True):
    node_id: str  # whose table this is
    written_at: float
    peers: tuple[Peer, ...] = ()


def peers_path(state_dir: Path) -> Path:
    return state_dir / PEERS_FILE


def write_table(state_dir: Path, table: PeerTable) -> None:
    path = peers_path(state_dir)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(msgspec.json.encode(table))
    tmp.replace(path)


def read_table(state_dir: Path) -> PeerTable | None:
    try:
        return msgspec.json.decode(peers_path(state_dir).read_bytes(), type=PeerTable)
    except (FileNotFoundError, msgspec.DecodeError):
        return None
