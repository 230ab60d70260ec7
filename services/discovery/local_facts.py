"""Reads this machine's facts: memory, cores, chip, MLX backends, interfaces."""

from __future__ import annotations

import platform
import socket
from functools import lru_cache

import psutil

from shared.facts import Link, NetworkInterface, NodeFacts
from shared.ids import NodeId

BACKENDS = ("ring", "jaccl", "mpi", "nccl")


@lru_cache(maxsize=1)
def mlx_backends() -> tuple[str, ...]:
    try:
        import mlx.core as mx
    except ImportError:
        return ()
    return tuple(b for b in BACKENDS if mx.distributed.is_available(b))


@lru_cache(maxsize=1)
def chip_name() -> str:
    if platform.system() == "Darwin":
        try:
            import subprocess

            out = subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, timeout=2
            )
            if out.stdout.strip():
                return out.stdout.strip()
        except OSError:
            pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def interfaces() -> tuple[NetworkInterface, ...]:
    found = []
    for name, addrs in sorted(psutil.net_if_addrs().items()):
        ips = tuple(a.address.split("%")[0] for a in addrs if a.family in (socket.AF_INET, socket.AF_INET6))
        if ips:
            found.append(NetworkInterface(name=name, addresses=ips))
    return tuple(found)


def read_facts(
    node_id: NodeId,
    roles: tuple[str, ...],
    memory_budget: int | None,
    hostname: str | None = None,
    links: tuple[Link, ...] = (),
) -> NodeFacts:
    """`hostname` overrides the OS one (several network namespaces share one UTS hostname in tests)."""
    memory = psutil.virtual_memory()
    backends = mlx_backends()
    return NodeFacts(
        node_id=node_id,
        hostname=hostname or socket.gethostname(),
        memory_total=memory.total,
        memory_available=memory.available,
        memory_budget=memory_budget,
        cpu_count=psutil.cpu_count() or 1,
        chip=chip_name(),
        backends=backends,
        interfaces=interfaces(),
        roles=roles,
        rdma="jaccl" in backends,
        links=links,
    )
