"""Data-plane configuration: services/worker/dataplane.py (ring hostfile, jaccl device matrix, env)."""

from __future__ import annotations

import json
import socket

import msgspec
import pytest

from services.worker.dataplane import (
    DEVICES_NAME,
    HOSTFILE_NAME,
    PORT_RANGE,
    DataPlaneError,
    choose_free_ports,
    dataplane_config,
    instance_addresses,
    one_network_stack,
    instance_base_port,
    jaccl_config,
    jaccl_device_matrix,
    node_address,
    ring_config,
    ring_hosts,
    write_files,
)
from shared.events import Instance, ShardAssignment
from shared.facts import NetworkInterface, NodeFacts


def facts(node_id: str, hostname: str, *addresses: str, rdma: bool = False) -> NodeFacts:
    return NodeFacts(
        node_id=node_id,
        hostname=hostname,
        memory_total=1 << 34,
        memory_available=1 << 33,
        memory_budget=None,
        cpu_count=8,
        chip="x",
        backends=("ring", "jaccl") if rdma else ("ring",),
        interfaces=(NetworkInterface("lo", ("127.0.0.1",)), NetworkInterface("en0", addresses)),
        roles=("worker",),
        rdma=rdma,
    )


def instance(*node_ids: str, backend: str = "ring", instance_id: str = "inst-1") -> Instance:
    n = len(node_ids)
    shards = tuple(ShardAssignment(nid, r, r * 30 // n, (r + 1) * 30 // n) for r, nid in enumerate(node_ids))
    return Instance(instance_id, "smollm2-135m", "pipeline", backend, shards)


NODES = {
    "a": facts("a", "mac-a", "fe80::1", "169.254.3.3", "192.168.1.10/24", rdma=True),
    "b": facts("b", "mac-b", "192.168.1.11", rdma=True),
    "c": facts("c", "mac-c", "192.168.1.12", rdma=True),
}


# --- addresses and ports ---------------------------------------------------------------------------


def test_node_address_skips_loopback_link_local_and_ipv6():
    assert node_address(NODES["a"]) == "192.168.1.10"
    only_lo = facts("x", "h")
    assert node_address(only_lo) == "127.0.0.1"
    with pytest.raises(DataPlaneError):
        node_address(only_lo, allow_loopback=False)


def test_instance_addresses_loopback_when_all_on_one_host():
    one_host = {k: facts(k, "same-host", f"10.0.0.{i}") for i, k in enumerate("ab")}
    assert instance_addresses(instance("a", "b"), one_host) == {"a": "127.0.0.1", "b": "127.0.0.1"}
    assert instance_addresses(instance("a", "b"), NODES) == {"a": "192.168.1.10", "b": "192.168.1.11"}
    with pytest.raises(DataPlaneError, match="no facts"):
        instance_addresses(instance("a", "zz"), NODES)


def with_host_id(f: NodeFacts, host_id: str) -> NodeFacts:
    return msgspec.structs.replace(f, host_id=host_id)


def test_nodes_that_share_a_hostname_on_separate_machines_get_their_own_addresses():
    """Issue 17: three machines cloned from one image (one hostname) got loopback for every rank, and their ring
    never connected. The host id (machine, boot, network namespace) decides, not the hostname."""
    clones = {k: with_host_id(facts(k, "cloned", f"10.0.0.{i}"), f"host-{k}") for i, k in enumerate("abc", 1)}
    assert instance_addresses(instance("a", "b", "c"), clones) == {"a": "10.0.0.1", "b": "10.0.0.2", "c": "10.0.0.3"}
    assert not one_network_stack(list(clones.values()))


def test_nodes_with_one_host_id_share_loopback_whatever_their_hostnames():
    one_box = {k: with_host_id(facts(k, f"name-{k}", "10.0.0.9"), "same-stack") for k in "ab"}
    assert instance_addresses(instance("a", "b"), one_box) == {"a": "127.0.0.1", "b": "127.0.0.1"}
    # one node without a host id (an older node): the hostname decides, as before
    mixed = {"a": one_box["a"], "b": facts("b", "name-b", "10.0.0.9")}
    assert not one_network_stack(list(mixed.values()))
    assert one_network_stack([facts("a", "h", "10.0.0.1"), facts("b", "h", "10.0.0.2")])


def test_instance_base_port_is_deterministic_and_in_range():
    p = instance_base_port("inst-1", 3)
    assert p == instance_base_port("inst-1", 3)
    assert PORT_RANGE[0] <= p and p + 3 <= PORT_RANGE[1]
    assert len({instance_base_port(f"inst-{i}", 3) for i in range(50)}) > 40


def test_instance_ports_stay_below_the_ephemeral_ranges():
    """Linux hands out 32768-60999 (and macOS 49152-65535) to outgoing connections and to port-0 binds:
    a derived ring port there can be held by any socket of the machine."""
    assert 1024 < PORT_RANGE[0] < PORT_RANGE[1] <= 32768


def test_choose_free_ports_are_distinct_and_bindable():
    ports = choose_free_ports(4)
    assert len(set(ports)) == 4
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", port))


# --- ring ------------------------------------------------------------------------------------------


def test_ring_hostfile_is_one_list_of_ip_port_per_rank():
    inst = instance("b", "a", "c")  # ranks follow the shards, not the node ids
    hosts = ring_hosts(inst, {"a": "10.0.0.1", "b": "10.0.0.2", "c": "10.0.0.3"}, 50000)
    assert hosts == [["10.0.0.2:50000"], ["10.0.0.1:50001"], ["10.0.0.3:50002"]]
    hosts = ring_hosts(inst, {"a": "127.0.0.1", "b": "127.0.0.1", "c": "127.0.0.1"}, [7001, 7005, 7003])
    assert hosts == [["127.0.0.1:7001"], ["127.0.0.1:7005"], ["127.0.0.1:7003"]]


def test_ring_hosts_refuses_clashes_and_gaps():
    with pytest.raises(DataPlaneError, match="same address"):
        ring_hosts(instance("a", "b"), {"a": "127.0.0.1", "b": "127.0.0.1"}, [7000, 7000])
    with pytest.raises(DataPlaneError, match="ports for"):
        ring_hosts(instance("a", "b"), {"a": "x", "b": "y"}, [7000])
    with pytest.raises(DataPlaneError, match="no address"):
        ring_hosts(instance("a", "b"), {"a": "x"}, 7000)
    gap = Instance("i", "m", "pipeline", "ring", (ShardAssignment("a", 0, 0, 15), ShardAssignment("b", 2, 15, 30)))
    with pytest.raises(DataPlaneError, match="ranks"):
        ring_hosts(gap, {"a": "x", "b": "y"}, 7000)


def test_ring_config_env_and_file(tmp_path):
    inst = instance("a", "b")
    config = ring_config(inst, 1, {"a": "10.0.0.1", "b": "10.0.0.2"}, 45000, tmp_path)
    path = str(tmp_path / HOSTFILE_NAME)
    assert config.env == {"MLX_RANK": "1", "MLX_HOSTFILE": path}
    assert json.loads(config.files[path]) == [["10.0.0.1:45000"], ["10.0.0.2:45001"]]
    assert config.backend == "ring" and config.world_size == 2
    write_files(config)
    assert json.loads((tmp_path / HOSTFILE_NAME).read_text()) == [["10.0.0.1:45000"], ["10.0.0.2:45001"]]


def test_dataplane_config_for_ring_uses_instance_ports_and_same_file_on_every_rank(tmp_path):
    inst = instance("a", "b", "c")
    configs = [dataplane_config(inst, r, NODES, tmp_path) for r in range(3)]
    assert len({tuple(c.files.values()) for c in configs}) == 1
    hosts = json.loads(next(iter(configs[0].files.values())))
    base = instance_base_port("inst-1", 3)
    assert hosts == [[f"192.168.1.1{r}:{base + r}"] for r in range(3)]
    assert [c.env["MLX_RANK"] for c in configs] == ["0", "1", "2"]


def test_one_rank_needs_no_data_plane(tmp_path):
    config = dataplane_config(instance("a"), 0, NODES, tmp_path)
    assert config.files == {} and config.env == {}


# --- jaccl -----------------------------------------------------------------------------------------

# Three Macs in a Thunderbolt 5 triangle: each has two ports.
RDMA = {
    ("a", "b"): "rdma_en2",
    ("a", "c"): "rdma_en3",
    ("b", "a"): "rdma_en2",
    ("b", "c"): "rdma_en3",
    ("c", "a"): "rdma_en2",
    ("c", "b"): "rdma_en3",
}


def test_jaccl_device_matrix_null_diagonal_in_rank_order():
    matrix = jaccl_device_matrix(instance("a", "b", "c", backend="jaccl"), RDMA)
    assert matrix == [
        [None, "rdma_en2", "rdma_en3"],
        ["rdma_en2", None, "rdma_en3"],
        ["rdma_en2", "rdma_en3", None],
    ]
    reordered = jaccl_device_matrix(instance("c", "a", "b", backend="jaccl"), RDMA)
    assert reordered[0] == [None, "rdma_en2", "rdma_en3"]  # c->a, c->b
    assert all(reordered[i][i] is None for i in range(3))


def test_jaccl_device_matrix_allows_several_devices_per_link():
    devices = dict(RDMA)
    devices[("a", "b")] = ("rdma_en2", "rdma_en4")
    matrix = jaccl_device_matrix(instance("a", "b", "c", backend="jaccl"), devices)
    assert matrix[0][1] == ["rdma_en2", "rdma_en4"]


def test_jaccl_device_matrix_needs_every_link_of_a_mesh_but_only_neighbours_of_a_ring():
    four = instance("a", "b", "c", "d", backend="jaccl")
    ring_links = {}
    ids = "abcd"
    for i, x in enumerate(ids):
        for y in (ids[(i - 1) % 4], ids[(i + 1) % 4]):
            ring_links[(x, y)] = f"rdma_{x}{y}"
    with pytest.raises(DataPlaneError, match="a->c"):
        jaccl_device_matrix(four, ring_links)
    matrix = jaccl_device_matrix(four, ring_links, ring=True)
    assert matrix[0] == [None, "rdma_ab", None, "rdma_ad"]


def test_jaccl_config_env_names_are_mlx_ones(tmp_path):
    inst = instance("a", "b", "c", backend="jaccl")
    addresses = {"a": "192.168.1.10", "b": "192.168.1.11", "c": "192.168.1.12"}
    config = jaccl_config(inst, 2, addresses, RDMA, 47000, tmp_path)
    path = str(tmp_path / DEVICES_NAME)
    assert config.env == {
        "MLX_RANK": "2",
        "MLX_IBV_DEVICES": path,
        "MLX_JACCL_COORDINATOR": "192.168.1.10:47000",  # rank 0's address, on every rank
    }
    assert "MLX_IBV_COORDINATOR" not in config.env  # the seed's misspelling
    assert json.loads(config.files[path])[2] == ["rdma_en2", "rdma_en3", None]
    ring = jaccl_config(inst, 0, addresses, RDMA, 47000, tmp_path, ring=True)
    assert ring.env["MLX_JACCL_RING"] == "1"


def test_dataplane_config_for_jaccl(tmp_path):
    inst = instance("a", "b", "c", backend="jaccl")
    config = dataplane_config(inst, 0, NODES, tmp_path, ports=47100, rdma_devices=RDMA)
    assert config.backend == "jaccl"
    assert config.env["MLX_JACCL_COORDINATOR"] == "192.168.1.10:47100"
    with pytest.raises(DataPlaneError, match="no RDMA device"):
        dataplane_config(inst, 0, NODES, tmp_path, ports=47100)
