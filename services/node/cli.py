"""`exo`: one command starts a whole node (embedded nats-server, discovery, master, worker, gateway).

`exo service NAME` runs one service alone (what launchd runs); `exo bench --config FILE.yaml` measures a running
node (bench_cli.py); `exo doctor` checks it against the troubleshooting table (doctor_cli.py).
"""

from __future__ import annotations

import sys

from services.node.scrub import scrub_secret_flags

scrub_secret_flags(sys.argv)  # first: secrets on our command line are hidden before the slow imports below

import argparse  # noqa: E402
import asyncio  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import time
from pathlib import Path

import structlog

from services.discovery.settings import parse_peers, port_number
from services.gateway.api_key import API_KEY_ENV, API_KEY_FILE_ENV, BadApiKey, exposure_warning, resolve_api_key
from services.node.bootstrap import place_at_start
from services.node.embedded_bus import (
    EmbeddedBus,
    base_config,
    peer_routes,
    wait_for_peers,
)
from services.node.launchd import write_plists
from services.node.previous_run import stop_left_bus
from services.node.nats_server import NatsServerUnavailable, port_is_free, wait_for_port, write_config
from services.node.secret_source import given_secret, join
from services.node.supervisor import ChildSpec, Supervisor
from shared.bus import connect, without_our_credentials
from shared.cluster_secret import SECRET_ENV, BadSecret, redact, remember, secret_path
from shared.cluster_secret import load_or_create as load_or_create_secret
from shared.config import (
    DEFAULT_API_PORT,
    DEFAULT_DISCOVERY_PORT,
    DEFAULT_NATS_PORT,
    DEFAULT_ROUTE_PORT,
    default_state_dir,
    parse_bytes,
)
from shared.identity import load_or_create_node_id
from shared.logging import setup_logging
from shared.models import DEFAULT_MODEL, MODEL_CARDS
from shared.peers import read_table
from shared.process_lifetime import VERSION

from services.gateway.hub_card import looks_like_hub_id
from services.gateway.model_lookup import is_folder_name

log = structlog.get_logger()

SERVICES = ("discovery", "master", "worker", "gateway")  # discovery first: see run_node
FORMATION_WINDOW_S = 1.5  # beacons go out every second: nodes started together hear each other in this window


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
    p.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                   help=f"require this key on every API route but /health (env {API_KEY_ENV}; a file is safer)")
    p.add_argument("--api-key-file", default=os.environ.get(API_KEY_FILE_ENV),
                   help=f"the API key from this file (env {API_KEY_FILE_ENV})")  # fmt: skip
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
    p.add_argument("--cluster-secret-file", default=None, metavar="PATH",
                   help="file holding the cluster's secret (mode 600); default: env EXO_CLUSTER_SECRET, else the one "
                        "`exo join` or an earlier start stored, else a new one, shown once")
    p.add_argument("--cluster-secret", default=None, metavar="HEX",
                   help="the cluster's secret on the command line: other users can read it (warned); prefer the above")
    p.add_argument("--peers", default=os.environ.get("EXO_PEERS", ""),
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


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["service"]:
        run_service(argv[1:])
        return
    if argv[:1] == ["peers"] or "--list-peers" in argv:
        from services.node.peers_cli import main as peers_main

        raise SystemExit(peers_main([a for a in argv if a not in ("peers", "--list-peers")]))
    if argv[:1] == ["models"]:
        from services.node.models_cli import main as models_main

        raise SystemExit(models_main(argv[1:]))
    if argv[:1] in (["log"], ["sql"]):
        from services.node.log_cli import main as log_main

        raise SystemExit(log_main(argv))
    if argv[:1] in (["bench"], ["doctor"]):  # their own modules: services/node/bench_cli.py, doctor_cli.py
        import importlib

        raise SystemExit(importlib.import_module(f"services.node.{argv[0]}_cli").main(argv[1:]))
    if argv[:1] == ["launchd"]:
        write_launchd(argv[1:])
        return
    if argv[:1] == ["join"]:
        raise SystemExit(join(argv[1:], _named_state_dir))
    args = node_parser().parse_args(argv)
    if args.memory:
        try:
            parse_bytes(args.memory)
        except ValueError as exc:
            node_parser().error(str(exc))
    if not args.no_model and not (
        args.model in MODEL_CARDS or looks_like_hub_id(args.model) or is_folder_name(args.model)
    ):
        node_parser().error(f"unknown model {args.model!r}: not a built-in name ({', '.join(MODEL_CARDS)}), a "
                            "Hugging Face repo id ORG/NAME or a folder path (/..., ./...)")  # fmt: skip
    if args.node_name is not None and not args.node_name.replace("-", "").replace("_", "").isalnum():
        node_parser().error(f"--node-name must be letters, digits, - or _: {args.node_name!r}")
    try:
        parse_peers(args.peers, args.discovery_port)
    except ValueError as exc:
        node_parser().error(f"--peers: {exc}")
    for flag in ("max_batch", "max_waiting"):
        if getattr(args, flag) is not None and getattr(args, flag) < (1 if flag == "max_batch" else 0):
            node_parser().error(f"--{flag.replace('_', '-')} is too small: {getattr(args, flag)}")
    check_api_key(args, argv)
    state_dir = (args.state_dir or _named_state_dir(args.node_name)).expanduser()
    try:
        secret = given_secret(args)
    except BadSecret as exc:
        print(f"exo: cluster secret: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    setup_logging("node", state_dir / "logs", args.log_level)
    try:
        asyncio.run(run_node(args, state_dir, secret))
    except NatsServerUnavailable as exc:
        print(f"exo: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def check_api_key(args: argparse.Namespace, argv: list[str]) -> None:
    """Resolve the key into args.api_key; only the gateway gets it, in its environment (run_node)."""
    try:
        args.api_key = resolve_api_key(args.api_key, args.api_key_file)
    except BadApiKey as exc:
        node_parser().error(str(exc))
    for name in (API_KEY_ENV, API_KEY_FILE_ENV):
        os.environ.pop(name, None)  # not inherited by every service and runner
    if any(a == "--api-key" or a.startswith("--api-key=") for a in argv):
        print("exo: warning: a key on the command line is visible to every user of this machine (ps);"
              f" use --api-key-file or {API_KEY_ENV}", file=sys.stderr)  # fmt: skip
    if not args.no_gateway and (warning := exposure_warning(args.host, args.api_key is not None)):
        print(f"exo: warning: {warning}", file=sys.stderr)


def _named_state_dir(name: str | None) -> Path:
    return default_state_dir() / "nodes" / name if name else default_state_dir()


def run_service(argv: list[str]) -> None:
    if not argv or argv[0] not in SERVICES:
        print(f"usage: exo service {{{','.join(SERVICES)}}} [options]", file=sys.stderr)
        raise SystemExit(2)
    import importlib

    importlib.import_module(f"services.{argv[0]}.__main__").main(argv[1:])


def write_launchd(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="exo launchd", description="write launchd plists for this node's services")
    parser.add_argument("--out", type=Path, default=Path.home() / "Library" / "LaunchAgents")
    parser.add_argument("--venv", type=Path, default=Path(sys.prefix))
    parser.add_argument("--state-dir", type=Path, default=default_state_dir())
    parser.add_argument("--port", type=port_number, default=DEFAULT_API_PORT)
    parser.add_argument("--nats-port", type=port_number, default=DEFAULT_NATS_PORT)
    ns = parser.parse_args(argv)
    state_dir = ns.state_dir.expanduser()
    secret, created = load_or_create_secret(state_dir, os.environ.get(SECRET_ENV))
    node_id = load_or_create_node_id(state_dir)
    conf = write_config(state_dir, base_config(state_dir, node_id, secret, "127.0.0.1", ns.nats_port, "127.0.0.1", 0))
    print(f"wrote {conf}" + (f"  (new cluster secret in {secret_path(state_dir)})" if created else ""))
    for path in write_plists(ns.out, ns.venv, state_dir, ns.port, ns.nats_port):
        print(f"wrote {path}  (load with: launchctl bootstrap gui/$(id -u) {path})")


def service_env(args: argparse.Namespace, state_dir: Path, nats_url: str, route_port: int) -> dict[str, str]:
    roles = [] if args.no_worker else ["worker"]
    env = {
        "EXO_NATS_URL": nats_url,
        "EXO_DISCOVERY_PORT": str(args.discovery_port),
        "EXO_DISCOVERY_BIND": args.cluster_bind,
        "EXO_PEERS": args.peers,
        "EXO_ROUTE_PORT": str(route_port),
        "EXO_STATE_DIR": str(state_dir),
        "EXO_LOG_LEVEL": args.log_level,
        "EXO_HOST": args.host,
        "EXO_PORT": str(args.port),
        "EXO_ROLES": ",".join(roles + ([] if args.no_gateway else ["gateway"])),
        "PYTHONUNBUFFERED": "1",
        # Called in the supervisor (run_node): runners outlive a killed worker but watch this pid, so they
        # never outlive the node (services/worker/runner/lifetime.py).
        "EXO_SUPERVISOR_PID": str(os.getpid()),
    }
    if args.memory:
        env["EXO_MEMORY"] = args.memory
    if args.weight_format:
        env["EXO_WEIGHT_FORMAT"] = args.weight_format
    if args.blas:
        env["EXO_BLAS"] = args.blas
    if args.max_batch is not None:
        env["EXO_MAX_BATCH"] = str(args.max_batch)
    if args.max_waiting is not None:
        env["EXO_MAX_WAITING"] = str(args.max_waiting)
    return env


async def run_node(args: argparse.Namespace, state_dir: Path, given: str | None) -> None:
    node_id = load_or_create_node_id(state_dir)
    secret, created = load_or_create_secret(state_dir, given)  # the services read it from there
    if created:
        print(f"exo: new cluster secret (kept in {secret_path(state_dir)}); on each other machine run\n"
              f"  exo join      (and paste: {secret})\nthen exo", flush=True)  # fmt: skip
    remember(secret)  # this process's own bus connections; never os.environ, which the children inherit
    supervisor = Supervisor(pid_file=state_dir / "pids.json")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    started = time.time()
    own_bus = args.nats_url is None
    # The services connect as their own roles: a URL with one of our roles' passwords is not handed down
    nats_url = without_our_credentials(args.nats_url or f"nats://127.0.0.1:{args.nats_port}")
    env = service_env(args, state_dir, nats_url, args.route_port if own_bus else 0)
    tasks: list[asyncio.Task] = []
    try:
        if own_bus:
            stop_left_bus(state_dir)  # before its port is checked: a killed run of this node may have left it
            check_bus_ports(args)
        if not args.no_discovery:  # first: its beacons find peers while the bus is not up yet
            await supervisor.start(ChildSpec("discovery", [sys.executable, "-m", "services.discovery"], env))
        bus = None
        if own_bus:
            bus = EmbeddedBus(supervisor, state_dir, base_config(
                state_dir, node_id, secret, "127.0.0.1", args.nats_port, args.cluster_bind, args.route_port))  # fmt: skip
            routes: tuple[str, ...] = ()
            if not args.no_discovery and args.route_port:
                routes = await wait_for_peers(state_dir, started, FORMATION_WINDOW_S)
            await bus.start(routes)
            if not await asyncio.to_thread(wait_for_port, "127.0.0.1", args.nats_port, 15.0):
                raise NatsServerUnavailable(f"the embedded nats-server did not open port {args.nats_port}; see above")
        else:
            await check_bus_credentials(nats_url)
        for service in SERVICES[1:]:
            if not getattr(args, f"no_{service}"):
                own = {API_KEY_ENV: args.api_key} if service == "gateway" and args.api_key else {}
                await supervisor.start(ChildSpec(service, [sys.executable, "-m", f"services.{service}"], env | own))
        log.info("node started", node=node_id, nats=redact(nats_url), api=None if args.no_gateway else f"http://{args.host}:{args.port}/v1")
        place = None if args.no_model else asyncio.create_task(place_at_start(nats_url, args.model, stop, args.backend))
        if bus is not None and not args.no_discovery:
            tasks.append(asyncio.create_task(follow_peers(bus, supervisor, state_dir, started, args, nats_url, stop, place)))
        await stop.wait()
    finally:
        log.info("stopping node")
        for task in tasks:
            task.cancel()
        await supervisor.stop()


async def follow_peers(
    bus: EmbeddedBus, supervisor: Supervisor, state_dir: Path, since: float, args: argparse.Namespace,
    nats_url: str, stop: asyncio.Event, place: asyncio.Task | None,
) -> None:  # fmt: skip
    """Routes for new peers; the one restart when a node that started alone meets its first peer."""
    while not stop.is_set():
        await asyncio.sleep(1.0)
        if bus.apply_routes(peer_routes(read_table(state_dir), since)) == "formed":
            if place is not None:
                place.cancel()
            await supervisor.restart_all(
                bus_ready=lambda: asyncio.to_thread(wait_for_port, "127.0.0.1", args.nats_port, 15.0))
            if not args.no_model:  # the cluster's log does not know this node's model yet
                place = asyncio.create_task(place_at_start(nats_url, args.model, stop, args.backend))


def check_bus_ports(args: argparse.Namespace) -> None:
    if not port_is_free("127.0.0.1", args.nats_port):
        raise NatsServerUnavailable(
            f"port {args.nats_port} is taken (another exo node or nats-server?); use --nats-port N, or --nats-url to join it"
        )
    if args.route_port and not port_is_free(args.cluster_bind, args.route_port):
        raise NatsServerUnavailable(
            f"route port {args.route_port} is taken; use --route-port N (or 0 for a node that never clusters)"
        )


async def check_bus_credentials(nats_url: str) -> None:
    """Fail at once, with the reason, when the bus we were pointed at refuses us."""
    try:
        nc = await connect(nats_url, "exo-node-check", first_connect_timeout=15.0)
    except ConnectionError as exc:
        raise NatsServerUnavailable(str(exc)) from None
    await nc.close()


if __name__ == "__main__":
    main()
