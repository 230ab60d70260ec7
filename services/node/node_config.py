"""`exo`'s flags as one typed `NodeConfig`, and the spec each service of the node gets from it (pure)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Literal

import msgspec

from services.discovery.settings import parse_peers, port_number
from shared.config import (
    DEFAULT_API_PORT,
    DEFAULT_DISCOVERY_PORT,
    DEFAULT_NATS_PORT,
    DEFAULT_ROUTE_PORT,
    CommonConfig,
    add_runner_args,
    parse_bytes,
    runner_values,
)
from shared.models import DEFAULT_MODEL, MODEL_CARDS

from services.gateway.hub_card import looks_like_hub_id
from services.gateway.model_lookup import is_folder_name
from shared.process_lifetime import VERSION
from shared.specs import DiscoverySpec, GatewaySpec, MasterSpec, RunnerSettings, WorkerSpec, convert_spec

SERVICES = ("discovery", "master", "worker", "gateway")  # discovery first: see run_node
# Flags that no EXO_* variable sets for `exo` (they did not before: the node set them for its services), and
# the secret, which exo hands to given_secret itself
NOT_FROM_ENVIRONMENT = frozenset({"nats_url", "state_dir", "port", "host", "log_level", "discovery_port",
                                  "route_port", "cluster_secret"})  # fmt: skip


class NodeConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What `exo` was asked for. The secret and the API key are not here: they are handed on apart."""

    model: str | None  # None: place none at start
    backend: Literal["auto", "jaccl", "ring"]
    port: int
    host: str
    nats_url: str | None  # None: start our own bus on nats_port
    nats_port: int
    node_name: str | None
    memory: int | None
    weight_format: Literal["q4", "f32"] | None
    blas: Literal["auto", "reference"]
    runner: RunnerSettings
    peers: tuple[tuple[str, int], ...]
    discovery_port: int
    route_port: int
    cluster_bind: str
    services: tuple[str, ...]  # the services this node runs, in SERVICES' order
    log_level: str
    console_logs: bool = True
    hostname: str | None = None  # EXO_HOSTNAME: what discovery calls this machine (None: its hostname)
    max_body_bytes: int | None = None  # EXO_MAX_BODY_BYTES: the gateway's largest body (None: its default)


def node_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="exo", description="Run an exo-distributed node.")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model to place at start: a built-in name (default {DEFAULT_MODEL}; "
                   + ", ".join(MODEL_CARDS) + "), a Hugging Face repo id ORG/NAME or a model folder path")  # fmt: skip
    p.add_argument("--no-model", action="store_true", help="place no model at start")
    p.add_argument("--backend", choices=["auto", "jaccl", "ring"], default="auto",
                   help="backend of the instance placed at start: jaccl (RDMA), ring (TCP) or auto (jaccl where"
                   " every node has RDMA)")  # fmt: skip
    p.add_argument("--port", type=port_number, default=DEFAULT_API_PORT, help="OpenAI API port (default 8080)")
    p.add_argument("--host", default="127.0.0.1", help="API bind address (default loopback)")
    p.add_argument("--api-key", default=None,
                   help="require this key on every API route but /health (env EXO_API_KEY; a file is safer)")
    p.add_argument("--api-key-file", default=None, help="the API key from this file (env EXO_API_KEY_FILE)")
    p.add_argument("--nats-url", default=None, help="use this NATS server instead of starting one")
    p.add_argument("--nats-port", type=port_number, default=DEFAULT_NATS_PORT, help="port of the embedded nats-server")
    p.add_argument("--state-dir", type=Path, default=None, help="node state (default ~/.exo, or ~/.exo/nodes/NAME)")
    p.add_argument("--node-name", default=None, help="several nodes on one machine: each name gets its own state dir")
    p.add_argument("--memory", default=None, help="memory budget placement may use here, e.g. 1GB")
    p.add_argument("--weight-format", choices=["q4", "f32"], default=None, help="force a weight layout")
    p.add_argument("--blas", choices=["auto", "reference"], default=None,
                   help="reference: MLX's bundled BLAS, slower but seeded tokens do not depend on the batch")  # fmt: skip
    p.add_argument("--max-batch", type=int, default=None, help="requests a runner decodes together (default 8)")
    p.add_argument("--max-waiting", type=int, default=None, help="requests allowed to wait per batch slot (default 4)")
    add_runner_args(p)  # the other runner settings (EXO_RING_WAIT, EXO_CPU_FUSION, ...)
    p.add_argument("--cluster-secret-file", default=None, metavar="PATH",
                   help="file holding the cluster's secret (mode 600); default: env EXO_CLUSTER_SECRET, else the one "
                        "`exo join` or an earlier start stored, else a new one, shown once")
    p.add_argument("--cluster-secret", default=None, metavar="HEX",
                   help="the cluster's secret on the command line: other users can read it (warned); prefer the above")
    p.add_argument("--peers", default="",
                   help="host[:port],... to beacon to where multicast and broadcast do not reach (env EXO_PEERS)")
    p.add_argument("--discovery-port", type=port_number, default=DEFAULT_DISCOVERY_PORT,
                   help=f"UDP port of discovery beacons (default {DEFAULT_DISCOVERY_PORT})")
    p.add_argument("--route-port", type=port_number, default=DEFAULT_ROUTE_PORT,
                   help=f"NATS cluster port peers' buses connect to (default {DEFAULT_ROUTE_PORT}; 0: never cluster)")
    p.add_argument("--cluster-bind", default="0.0.0.0",
                   help="address for beacons and bus routes (default all interfaces: both need the secret)")
    p.add_argument("--list-peers", action="store_true", help="print the peers this node's discovery sees, and exit")
    for service in SERVICES:
        p.add_argument(f"--no-{service}", action="store_true", help=f"do not run the {service} service here")
    p.add_argument("--log-level", default="info")
    p.add_argument("--version", action="version", version=f"exo-distributed {VERSION}")
    return p


def node_config(ns: argparse.Namespace, found: dict[str, str]) -> NodeConfig:
    """Raises ValueError naming the flag."""
    if not ns.no_model and not (ns.model in MODEL_CARDS or looks_like_hub_id(ns.model) or is_folder_name(ns.model)):
        raise ValueError(f"unknown model {ns.model!r}: not a built-in name ({', '.join(MODEL_CARDS)}), a Hugging Face "
                         "repo id ORG/NAME or a folder path (/..., ./...)")
    if ns.node_name is not None and not ns.node_name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"--node-name must be letters, digits, - or _: {ns.node_name!r}")
    try:
        peers = parse_peers(ns.peers, ns.discovery_port)
    except ValueError as exc:
        raise ValueError(f"--peers: {exc}") from None
    for flag in ("max_batch", "max_waiting"):
        if getattr(ns, flag) is not None and int(getattr(ns, flag)) < (1 if flag == "max_batch" else 0):
            raise ValueError(f"--{flag.replace('_', '-')} is too small: {getattr(ns, flag)}")
    try:
        runner = convert_spec(runner_values(ns), RunnerSettings)
    except msgspec.ValidationError as exc:
        raise ValueError(f"runner setting: {exc}") from None
    return NodeConfig(
        model=None if ns.no_model else ns.model, backend=ns.backend, port=ns.port, host=ns.host,
        nats_url=ns.nats_url, nats_port=ns.nats_port, node_name=ns.node_name,
        memory=parse_bytes(ns.memory) if ns.memory else None, weight_format=ns.weight_format,
        blas=ns.blas or "auto", runner=runner, peers=peers, discovery_port=ns.discovery_port,
        route_port=ns.route_port, cluster_bind=ns.cluster_bind,
        services=tuple(s for s in SERVICES if not getattr(ns, f"no_{s}")), log_level=ns.log_level,
        console_logs=found.get("console_logs", "1") != "0", hostname=found.get("hostname") or None,
        max_body_bytes=parse_bytes(found["max_body_bytes"]) if found.get("max_body_bytes") else None,
    )  # fmt: skip


ServiceSpec = DiscoverySpec | MasterSpec | WorkerSpec | GatewaySpec


def service_specs(
    config: NodeConfig, state_dir: Path, nats_url: str, route_port: int, supervisor_pid: int,
) -> dict[str, ServiceSpec]:  # fmt: skip
    """The spec of each service this node runs. `supervisor_pid`: the process whose exit ends the node (the
    one that calls this, run_node): runners outlive a killed worker but watch it."""
    common = CommonConfig(nats_url, state_dir, config.log_level, config.console_logs, supervisor_pid)
    roles = tuple(r for r in ("worker", "gateway") if r in config.services)
    specs: dict[str, ServiceSpec] = {
        "discovery": DiscoverySpec(common, roles, config.memory, config.discovery_port, config.cluster_bind,
                                   config.peers, route_port, config.hostname),  # fmt: skip
        "master": MasterSpec(common),
        "worker": WorkerSpec(common, config.weight_format, config.blas, config.runner),
        "gateway": GatewaySpec(common, config.host, config.port, config.max_body_bytes or _default_body_limit(), None),
    }
    return {name: spec for name, spec in specs.items() if name in config.services}


def _default_body_limit() -> int:
    from services.gateway.middleware import DEFAULT_MAX_BODY_BYTES

    return DEFAULT_MAX_BODY_BYTES
