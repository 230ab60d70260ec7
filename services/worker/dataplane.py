"""Data-plane configuration of one instance: what each runner needs to join its `mx.distributed` group.

Pure functions (except `choose_free_ports` and `write_files`): from the instance's shards and what the
nodes say about themselves, build the files and environment that MLX's backends read. The formats are
those of the installed MLX (mlx/_distributed_utils/launch.py and jaccl/jaccl.h):

ring (TCP): `MLX_HOSTFILE` = path of a JSON file holding one list of "ip:port" per rank, in rank order
    (rank r listens on its own entries and connects to its neighbours'); `MLX_RANK` = this rank.
    `mx.distributed.init(backend="ring")` reads both. Example for two ranks on loopback:
    [["127.0.0.1:52101"], ["127.0.0.1:52102"]]
jaccl (RDMA over Thunderbolt 5): `MLX_IBV_DEVICES` = path of a JSON N x N matrix, matrix[i][j] = the RDMA
    device on node i that reaches node j (a name, or a list of names for several links), null on the
    diagonal; `MLX_RANK`; `MLX_JACCL_COORDINATOR` = "ip:port" of rank 0 (the seed's `MLX_IBV_COORDINATOR`
    is a misspelling: MLX reads MLX_JACCL_COORDINATOR or JACCL_COORDINATOR); `MLX_JACCL_RING=1` to
    prefer a ring over the full mesh (then only neighbours need a device).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path

import msgspec

from shared.events import Instance
from shared.facts import NodeFacts
from shared.ids import NodeId

HOSTFILE_NAME = "hostfile.json"
DEVICES_NAME = "ibv_devices.json"
# Ports for ring listeners and the jaccl coordinator: above the usual services and BELOW the ephemeral
# ranges (Linux 32768-60999, macOS 49152-65535), where the OS hands out ports to outgoing connections and
# to servers that bind port 0: a port there can be taken by any socket of the machine at any time, and an
# instance whose derived port is taken fails to start on every retry (seen in CI with 40000-48000).
PORT_RANGE = (20000, 32000)

RdmaDevice = str | Sequence[str]


class DataPlaneConfig(msgspec.Struct, frozen=True):
    """What one runner needs: files to write (path -> text) and environment variables to set."""

    backend: str
    rank: int
    world_size: int
    files: dict[str, str]
    env: dict[str, str]


class DataPlaneError(ValueError):
    pass


# ------------------------------------------------------------------------------------------- addresses


def node_address(facts: NodeFacts, allow_loopback: bool = True) -> str:
    """The IPv4 address other nodes reach this node on: the first non-loopback, non-link-local IPv4 of
    its interfaces (in the order discovery listed them), else loopback if allowed."""
    loopback = None
    for interface in facts.interfaces:
        for text in interface.addresses:
            try:
                address = ipaddress.ip_address(text.split("/")[0])
            except ValueError:
                continue
            if address.version != 4:
                continue
            if address.is_loopback:
                loopback = loopback or str(address)
            elif not address.is_link_local:
                return str(address)
    if allow_loopback:
        return loopback or "127.0.0.1"
    raise DataPlaneError(f"node {facts.node_id} reports no routable IPv4 address")


def one_network_stack(facts: Sequence[NodeFacts]) -> bool:
    """Whether all these nodes share one network stack, so each reaches the others on loopback. Decided by the
    host ids discovery publishes (machine, boot and network namespace: see services/discovery/local_facts.py),
    not by hostnames: machines cloned from one image share a hostname, and a ring on loopback across them never
    connects. Facts without a host id (a node too old to publish one) fall back to the hostname, as before."""
    if all(f.host_id for f in facts):
        return len({f.host_id for f in facts}) == 1
    return len({f.hostname for f in facts}) == 1


def instance_addresses(instance: Instance, nodes: Mapping[NodeId, NodeFacts]) -> dict[str, str]:
    """node_id -> address for every node of the instance. All on loopback when every node of the instance
    shares one network stack (several nodes on one machine), so the ring never leaves it."""
    missing = [s.node_id for s in instance.shards if s.node_id not in nodes]
    if missing:
        raise DataPlaneError(f"no facts for node(s) {missing} of instance {instance.instance_id}")
    if one_network_stack([nodes[s.node_id] for s in instance.shards]):
        return {s.node_id: "127.0.0.1" for s in instance.shards}
    return {s.node_id: node_address(nodes[s.node_id], allow_loopback=False) for s in instance.shards}


# ------------------------------------------------------------------------------------------------ ports


def instance_base_port(instance_id: str, world_size: int, port_range: tuple[int, int] = PORT_RANGE) -> int:
    """A port base every worker derives alike from the instance id (no coordination needed): ranks use
    base + rank. Different instances very likely get different bases."""
    lo, hi = port_range
    span = hi - lo - world_size
    if span <= 0:
        raise DataPlaneError(f"port range {port_range} too small for {world_size} ranks")
    digest = int.from_bytes(hashlib.sha256(instance_id.encode()).digest()[:8], "big")
    return lo + digest % span


def choose_free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """n distinct ports that are free on `host` right now (the OS picks them; all held open until all are
    chosen so none repeats). For rings on loopback; a small race remains until the ranks bind them."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


# ------------------------------------------------------------------------------------------------- ring


def _ranked(instance: Instance) -> list[str]:
    ranks = sorted(instance.shards, key=lambda s: s.rank)
    if [s.rank for s in ranks] != list(range(len(ranks))):
        raise DataPlaneError(f"instance {instance.instance_id} ranks are {[s.rank for s in ranks]}, not 0..N-1")
    return [s.node_id for s in ranks]


def ring_hosts(instance: Instance, addresses: Mapping[str, str], ports: int | Sequence[int]) -> list[list[str]]:
    """The ring hostfile's content: one ["ip:port"] list per rank in rank order. `ports` is a base (rank r
    listens on base + r) or one port per rank."""
    node_ids = _ranked(instance)
    per_rank = [ports + r for r in range(len(node_ids))] if isinstance(ports, int) else list(ports)
    if len(per_rank) != len(node_ids):
        raise DataPlaneError(f"{len(per_rank)} ports for {len(node_ids)} ranks")
    hosts = []
    for node_id, port in zip(node_ids, per_rank):
        if node_id not in addresses:
            raise DataPlaneError(f"no address for node {node_id}")
        hosts.append([f"{addresses[node_id]}:{port}"])
    endpoints = [h[0] for h in hosts]
    if len(set(endpoints)) != len(endpoints):
        raise DataPlaneError(f"two ranks would listen on the same address: {endpoints}")
    return hosts


def ring_hostfile_json(hosts: list[list[str]]) -> str:
    return json.dumps(hosts)


def ring_env(rank: int, hostfile_path: str | Path) -> dict[str, str]:
    return {"MLX_RANK": str(rank), "MLX_HOSTFILE": str(hostfile_path)}


def ring_config(
    instance: Instance, rank: int, addresses: Mapping[str, str], ports: int | Sequence[int], config_dir: str | Path
) -> DataPlaneConfig:
    hosts = ring_hosts(instance, addresses, ports)
    path = str(Path(config_dir) / HOSTFILE_NAME)
    return DataPlaneConfig("ring", rank, len(hosts), {path: ring_hostfile_json(hosts)}, ring_env(rank, path))


# ------------------------------------------------------------------------------------------------ jaccl


def jaccl_device_matrix(
    instance: Instance, rdma_devices: Mapping[tuple[str, str], RdmaDevice], ring: bool = False
) -> list[list[str | list[str] | None]]:
    """matrix[i][j] = RDMA device on rank i's node that connects to rank j's node; None on the diagonal.

    `rdma_devices[(a, b)]` is the device name (or names) on node a whose cable goes to node b. A full mesh
    needs every pair; with `ring=True` only neighbours (i-1, i+1 mod N) do, others stay None.
    """
    node_ids = _ranked(instance)
    n = len(node_ids)
    matrix: list[list[str | list[str] | None]] = []
    missing = []
    for i, a in enumerate(node_ids):
        row: list[str | list[str] | None] = []
        for j, b in enumerate(node_ids):
            needed = i != j and (not ring or j in ((i - 1) % n, (i + 1) % n))
            device = rdma_devices.get((a, b)) if i != j else None
            if needed and not device:
                missing.append(f"{a}->{b}")
            row.append(device if isinstance(device, str) or device is None else list(device))
        matrix.append(row)
    if missing:
        raise DataPlaneError(f"no RDMA device known for link(s) {', '.join(missing)}")
    return matrix


def jaccl_env(rank: int, devices_path: str | Path, coordinator: str, ring: bool = False) -> dict[str, str]:
    env = {"MLX_RANK": str(rank), "MLX_IBV_DEVICES": str(devices_path), "MLX_JACCL_COORDINATOR": coordinator}
    if ring:
        env["MLX_JACCL_RING"] = "1"
    return env


def jaccl_coordinator(instance: Instance, addresses: Mapping[str, str], port: int) -> str:
    """host:port of rank 0, where every rank meets to exchange RDMA connection details."""
    return f"{addresses[_ranked(instance)[0]]}:{port}"


def jaccl_config(
    instance: Instance,
    rank: int,
    addresses: Mapping[str, str],
    rdma_devices: Mapping[tuple[str, str], RdmaDevice],
    coordinator_port: int,
    config_dir: str | Path,
    ring: bool = False,
) -> DataPlaneConfig:
    matrix = jaccl_device_matrix(instance, rdma_devices, ring)
    path = str(Path(config_dir) / DEVICES_NAME)
    env = jaccl_env(rank, path, jaccl_coordinator(instance, addresses, coordinator_port), ring)
    return DataPlaneConfig("jaccl", rank, len(matrix), {path: json.dumps(matrix)}, env)


# ------------------------------------------------------------------------------------------------ both


def dataplane_config(
    instance: Instance,
    rank: int,
    nodes: Mapping[NodeId, NodeFacts],
    config_dir: str | Path,
    *,
    ports: int | Sequence[int] | None = None,
    rdma_devices: Mapping[tuple[str, str], RdmaDevice] | None = None,
) -> DataPlaneConfig:
    """The configuration for `rank` of `instance`, for its backend. Ports default to the instance's
    deterministic base (`instance_base_port`), so every worker computes the same files alone. A one-rank
    instance needs no data plane: empty files and env."""
    if instance.world_size == 1:
        return DataPlaneConfig(instance.backend, rank, 1, {}, {})
    addresses = instance_addresses(instance, nodes)
    if ports is None:
        ports = instance_base_port(instance.instance_id, instance.world_size)
    if instance.backend == "ring":
        return ring_config(instance, rank, addresses, ports, config_dir)
    if instance.backend == "jaccl":
        port = ports if isinstance(ports, int) else ports[0]
        return jaccl_config(instance, rank, addresses, rdma_devices or {}, port, config_dir)
    raise DataPlaneError(f"unknown backend {instance.backend!r}")


def write_files(config: DataPlaneConfig) -> None:
    """Write the configuration's files (creating their folders)."""
    for path, text in config.files.items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
