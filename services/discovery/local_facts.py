"""Reads this machine's facts: memory, cores, chip, MLX backends, interfaces."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import platform
import re
import socket
import subprocess
from functools import lru_cache
from pathlib import Path

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


# --- host id: which nodes share one network stack (and so reach each other on loopback) ---------------------
#
# The data plane puts every rank of an instance on 127.0.0.1 when all its nodes are on one machine. The hostname
# cannot tell that: machines cloned from one image keep the same one (their ring then connected to loopback and
# never came up). What loopback reaches is one kernel's network namespace, so the id combines:
#   - the machine: /etc/machine-id (Linux), IOPlatformUUID (macOS);
#   - the boot: /proc/sys/kernel/random/boot_id, random at every boot, so clones that also copied their
#     machine-id still differ;
#   - the network namespace: the inode of /proc/self/ns/net (namespaces on one box share machine-id and boot id;
#     the initial namespace has the same inode on every Linux machine, hence the two above).
# Where none can be read, the node's own non-loopback addresses stand in (two stacks never hold the same set).


def compose_host_id(machine_id: str, boot_id: str, netns: str, addresses: tuple[str, ...] = ()) -> str:
    parts = [p.strip() for p in (machine_id, boot_id, netns)]
    if not any(parts):
        parts = sorted(_routable(addresses))
    if not any(parts):
        return ""
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _routable(addresses: tuple[str, ...]) -> list[str]:
    found = []
    for text in addresses:
        try:
            address = ipaddress.ip_address(text.split("/")[0].split("%")[0])
        except ValueError:
            continue
        if not (address.is_loopback or address.is_link_local):
            found.append(str(address))
    return found


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


@lru_cache(maxsize=1)
def _machine_id() -> str:
    if platform.system() == "Darwin":
        try:
            out = subprocess.run(["ioreg", "-rd1", "-c", "IOPlatformExpertDevice"], capture_output=True, text=True,
                                 timeout=5).stdout  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            return ""
        match = re.search(r'"IOPlatformUUID"\s*=\s*"([^"]+)"', out)
        return match.group(1) if match else ""
    return _read("/etc/machine-id") or _read("/var/lib/dbus/machine-id")


def _netns() -> str:
    try:
        return f"net:{os.stat('/proc/self/ns/net').st_ino}"
    except OSError:
        return ""


def host_id(found_interfaces: tuple[NetworkInterface, ...]) -> str:
    addresses = tuple(a for i in found_interfaces for a in i.addresses)
    return compose_host_id(_machine_id(), _read("/proc/sys/kernel/random/boot_id"), _netns(), addresses)


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
    found_interfaces = interfaces()
    return NodeFacts(
        node_id=node_id,
        hostname=hostname or socket.gethostname(),
        memory_total=memory.total,
        memory_available=memory.available,
        memory_budget=memory_budget,
        cpu_count=psutil.cpu_count() or 1,
        chip=chip_name(),
        backends=backends,
        interfaces=found_interfaces,
        roles=roles,
        rdma="jaccl" in backends,
        links=links,
        host_id=host_id(found_interfaces),
    )
