"""What a node says about itself (published by discovery)."""

from __future__ import annotations

import msgspec

from shared.ids import NodeId


class NetworkInterface(msgspec.Struct, frozen=True):
    name: str
    addresses: tuple[str, ...]


class Link(msgspec.Struct, frozen=True):
    """Measured round trip to a peer (discovery's signed probes), rounded to 0.1 ms."""

    peer_id: str
    latency_ms: float


class NodeFacts(msgspec.Struct, frozen=True):
    node_id: NodeId
    hostname: str
    memory_total: int
    memory_available: int
    memory_budget: int | None  # declared by the user (--memory); placement prefers it to the measured value
    cpu_count: int
    chip: str
    backends: tuple[str, ...]  # MLX distributed backends usable here: "ring", "jaccl", ...
    interfaces: tuple[NetworkInterface, ...]
    roles: tuple[str, ...]  # services this node runs that matter to placement, e.g. "worker"
    rdma: bool = False
    links: tuple[Link, ...] = ()  # to the peers discovery hears, with their measured latency
    # One id per machine and network stack (services/discovery/local_facts.py: host_id): nodes with equal ids reach
    # each other on loopback. "" from a node too old to publish it.
    host_id: str = ""

    def placeable_memory(self) -> int:
        return self.memory_budget if self.memory_budget is not None else self.memory_available
