"""`exo doctor`'s pure core: each row of the seed's troubleshooting table (and the bus, the leader, clock skew)
as a function of gathered facts, answering what is wrong and what to do. Gathering is in doctor_gather.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import msgspec

Status = Literal["pass", "fail", "n/a"]
PEERS_STALE_S = 10.0  # discovery rewrites peers.json at least every 2 s
LOW_MEMORY_FRACTION = 0.05
MIN_DISK_BYTES = 1 << 30


class Row(msgspec.Struct, frozen=True):
    check: str
    status: Status
    detail: str
    advice: str = ""


class Facts(msgspec.Struct, frozen=True):
    """What doctor_gather found; None where a source could not be read (its error is beside it)."""

    gateway_error: str | None = None
    health: dict | None = None
    instances: list[dict] = []  # GET /instances: each with its runners
    waiting: list[dict] = []
    node_memory: list[dict] = []  # GET /instances/preview: placement's memory per node (total, held, free)
    peers_age_s: float | None = None  # age of <state-dir>/peers.json; None: no file
    peers: list[dict] = []  # node_id, hostname, backends, route_port
    rejections: list[str] = []  # discovery's recent "datagram ignored" reasons
    bus_error: str | None = None
    jetstream_error: str | None = None
    routes: list[str] = []  # peers' route addresses in this node's nats.conf
    offline_replicas: list[str] = []  # servers holding a replica of the event log that do not answer
    local_node: str = ""
    local_backends: list[str] = []
    ibv_devices: list[str] | None = None  # None: no ibv_devices tool here
    thunderbolt: list[str] = []
    machine_total: int = 0
    machine_available: int = 0
    runner_ring_wait: list[str] = []  # EXO_RING_WAIT of each live runner ("" unset)
    runner_blas: list[str] = []  # BLAS each live runner has loaded
    blas_choice: str = ""  # --blas of this node ("reference" is chosen, not a fault)
    disk_free: dict[str, int] = {}  # path -> free bytes (the model store, the Hugging Face cache)


def check_bus(f: Facts) -> Row:
    if f.bus_error:
        secret = "authorization" in f.bus_error.lower() or "refused our credentials" in f.bus_error.lower()
        advice = ("this machine's cluster secret differs from the bus's: start with the cluster's --cluster-secret"
                  if secret else "start the node (`exo`), or check --nats-port / --nats-url")  # fmt: skip
        return Row("bus", "fail", f.bus_error, advice)
    if f.jetstream_error:
        return Row("bus", "fail", f"connected, but JetStream: {f.jetstream_error}",
                   "the embedded nats-server runs with -js; see <state-dir>/logs/nats-server.log")  # fmt: skip
    expected = sorted(p.get("hostname") or p["node_id"] for p in f.peers if p.get("route_port"))
    if len(expected) > len(f.routes):
        return Row("bus", "fail", f"routes to {len(f.routes)} of the {len(expected)} peers that take them",
                   "the bus adds routes as peers appear; if it stays so, restart this node")  # fmt: skip
    if f.offline_replicas:
        return Row("bus", "fail", f"event log replicas offline on {', '.join(f.offline_replicas)}",
                   "open the route port (TCP, --route-port, default 6222) between the machines")  # fmt: skip
    return Row("bus", "pass", f"connected; JetStream and the event stream answer; {len(f.routes)} route(s)")


def check_leader(f: Facts) -> Row:
    if f.health is None:
        return Row("leader", "fail", f"the gateway does not answer: {f.gateway_error}",
                   "start the node (`exo`), or pass --url of a running gateway")  # fmt: skip
    if not f.health.get("master"):
        return Row("leader", "fail", "no master has been elected",
                   "check the master service: <state-dir>/logs/master.log; `exo` restarts it when it dies")  # fmt: skip
    return Row("leader", "pass", f"{f.health['master']} leads (term {f.health.get('leader_term')})")


def check_peers(f: Facts) -> Row:
    secret = [r for r in f.rejections if "bad mac" in r]
    if f.peers_age_s is None or f.peers_age_s > PEERS_STALE_S:
        age = "no peers.json" if f.peers_age_s is None else f"peers.json is {f.peers_age_s:.0f} s old"
        return Row("peers discovered", "fail", f"discovery is not running ({age})",
                   "restart the node; see <state-dir>/logs/discovery.log")  # fmt: skip
    if secret:
        return Row("peers discovered", "fail", f"beacons rejected: {secret[-1]}",
                   "the cluster secret differs: start every node with the same --cluster-secret")  # fmt: skip
    if not f.peers:
        return Row("peers discovered", "pass", f"discovery runs (peers.json {f.peers_age_s:.0f} s old); no peer heard",
                   "expecting peers? open UDP port 52416 (--discovery-port) in the firewall, put the machines on one network, or "
                   "name them with --peers where multicast does not reach")  # fmt: skip
    names = ", ".join(sorted(p.get("hostname") or p["node_id"] for p in f.peers))
    return Row("peers discovered", "pass", f"{len(f.peers)} peer(s): {names}")


def check_clock(f: Facts) -> Row:
    skew = [r for r in f.rejections if "clock skew" in r]
    if skew:
        return Row("clock skew", "fail", skew[-1], "run NTP on every machine (timedatectl set-ntp true / "
                   "sntp -sS time.apple.com): beacons more than 30 s off are refused")  # fmt: skip
    return Row("clock skew", "pass", "no beacon refused for skew (limit 30 s)" + ("" if f.peers else "; no peers"))


def check_rdma(f: Facts) -> Row:
    has_jaccl = "jaccl" in f.local_backends
    if f.ibv_devices is None and not f.thunderbolt and not has_jaccl:
        wanted = [i for i in f.instances + f.waiting if i.get("backend") == "jaccl" or "RDMA" in i.get("reason", "")]
        if wanted:
            return Row("RDMA", "fail", "jaccl was asked for, and this machine has no RDMA device",
                       "use --backend ring here, or run on Macs joined by Thunderbolt 5 with RDMA enabled")  # fmt: skip
        return Row("RDMA", "n/a", "no RDMA device, no Thunderbolt interface, no jaccl in mlx: ring (TCP) is used")
    if f.thunderbolt and not f.ibv_devices:
        return Row("RDMA", "fail", f"Thunderbolt interfaces {', '.join(f.thunderbolt)} but `ibv_devices` lists none",
                   "enable RDMA (macOS recovery: `rdma_ctl enable`), check the Thunderbolt 5 cables")  # fmt: skip
    if f.ibv_devices and not has_jaccl:
        return Row("RDMA", "fail", f"RDMA devices {', '.join(f.ibv_devices)} but this mlx has no jaccl backend",
                   "install an mlx with jaccl (pip install -U mlx on macOS 26.2 or later)")  # fmt: skip
    return Row("RDMA", "pass", f"RDMA devices {', '.join(f.ibv_devices or [])}; mlx has jaccl")


def check_memory(f: Facts) -> Row:
    over = [m for m in f.node_memory if m["held"] > m["total"]]
    if over:
        node = over[0]
        return Row("memory", "fail", f"{node['node_id']} holds {_gib(node['held'])} of a {_gib(node['total'])} budget",
                   "place on more devices (min_nodes), raise --memory, or delete an instance")  # fmt: skip
    oom = [d for d in _runner_failures(f) if "memory" in d.lower() or "killed" in d.lower()]
    if oom:
        return Row("memory", "fail", f"a runner failed: {oom[0]}",
                   "use more devices (min_nodes), a lower --max-batch, or a smaller context")  # fmt: skip
    if f.machine_total and f.machine_available < LOW_MEMORY_FRACTION * f.machine_total:
        return Row("memory", "fail", f"{_gib(f.machine_available)} of {_gib(f.machine_total)} free on this machine",
                   "other processes hold the memory: free some, or set a smaller --memory budget")  # fmt: skip
    held = ", ".join(f"{m['node_id']} {_gib(m['held'])}/{_gib(m['total'])}" for m in f.node_memory)
    return Row("memory", "pass", f"instances within budget ({held or 'nothing placed'})")


def check_speed(f: Facts) -> Row:
    backends_of = {p["node_id"]: p.get("backends", []) for p in f.peers} | {f.local_node: f.local_backends}
    for inst in f.instances:
        nodes = {s["node_id"] for s in inst.get("shards", [])}
        if inst.get("backend") == "ring" and len(nodes) > 1 and all("jaccl" in backends_of.get(n, []) for n in nodes):
            return Row("inference speed", "fail", f"{inst['instance_id']} runs on ring where jaccl could",
                       "place it again with backend jaccl (exo --backend jaccl, or POST /instances)")  # fmt: skip
    if "spin" in f.runner_ring_wait:
        return Row("inference speed", "fail", "runners busy-poll their ring sockets (EXO_RING_WAIT=spin)",
                   "unset EXO_RING_WAIT unless every rank has a core to itself")  # fmt: skip
    if "reference" in f.runner_blas and f.blas_choice != "reference":
        return Row("inference speed", "fail", "a runner uses MLX's bundled reference BLAS (slow)",
                   "reinstall with ./setup.sh (MKL) or install OpenBLAS (apt install libopenblas0)")  # fmt: skip
    blas = ", ".join(sorted(set(f.runner_blas))) or "no runner here"
    return Row("inference speed", "pass", f"no ring where jaccl could run; ranks wait in the kernel; BLAS: {blas}")


def check_model_loading(f: Facts) -> Row:
    low = {path: free for path, free in f.disk_free.items() if free < MIN_DISK_BYTES}
    if low:
        path, free = next(iter(low.items()))
        return Row("model loading", "fail", f"{_gib(free)} free in {path}",
                   "free space there (old models: ~/.cache/huggingface/hub), or move --state-dir")  # fmt: skip
    if f.health is not None and f.gateway_error:  # /health is open; /instances may need the key
        return Row("model loading", "fail", f"cannot list the instances: {f.gateway_error}",
                   "pass --api-key (or EXO_API_KEY) when the gateway requires one")  # fmt: skip
    failures = _runner_failures(f)
    if failures:
        return Row("model loading", "fail", f"a runner failed: {failures[0]}",
                   "see the runner's log in <state-dir>/logs; the worker restarts it with backoff")  # fmt: skip
    waiting = [w for w in f.waiting]
    if waiting:
        return Row("model loading", "fail", f"{waiting[0]['model']} waits for nodes: {waiting[0]['reason']}",
                   "start more nodes or free memory; it is placed again once it fits")  # fmt: skip
    not_ready = [i["instance_id"] for i in f.instances if not i.get("ready")]
    if not_ready:
        return Row("model loading", "fail", f"instance(s) not ready: {', '.join(not_ready)}",
                   "wait for the download/import (GET /instances shows progress), then run exo doctor again")  # fmt: skip
    space = ", ".join(f"{_gib(v)} free in {k}" for k, v in f.disk_free.items())
    return Row("model loading", "pass", f"{len(f.instances)} instance(s) ready; {space}")


def _runner_failures(f: Facts) -> list[str]:
    """Each failed runner's reason: the first line of its detail (the rest is its log's tail, in GET /instances)."""
    return [_short((r.get("detail") or "failed").splitlines()[0]) for i in f.instances for r in i.get("runners", [])
            if r and r.get("phase") == "failed"]  # fmt: skip


def _short(line: str, limit: int = 120) -> str:
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


CHECKS: tuple[Callable[[Facts], Row], ...] = (
    check_bus, check_leader, check_peers, check_clock, check_rdma, check_memory, check_speed, check_model_loading,
)  # fmt: skip


def diagnose(facts: Facts) -> list[Row]:
    return [check(facts) for check in CHECKS]


def all_pass(rows: list[Row]) -> bool:
    return all(r.status != "fail" for r in rows)
