"""Plain-data builders shared by the unit tests."""

from __future__ import annotations

from shared.facts import NetworkInterface, NodeFacts

GiB = 1024**3


def facts(node_id: str, memory_available: int = 8 * GiB, memory_total: int = 16 * GiB, **kw) -> NodeFacts:
    fields = dict(
        node_id=node_id,
        hostname=f"host-{node_id}",
        memory_total=memory_total,
        memory_available=memory_available,
        memory_budget=None,
        cpu_count=8,
        chip="x86_64",
        backends=("ring",),
        interfaces=(NetworkInterface("eth0", ("10.0.0.1",)),),
        roles=("worker",),
    )
    fields.update(kw)
    return NodeFacts(**fields)
