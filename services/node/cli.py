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

from services.discovery.settings import port_number
from services.gateway.api_key import API_KEY_ENV, BadApiKey, exposure_warning, resolve_api_key
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
from services.node.node_config import NOT_FROM_ENVIRONMENT, SERVICES, NodeConfig, ServiceSpec, node_config, node_parser
from services.node.node_config import service_specs
from shared.cluster_secret import BadSecret, redact, remember, secret_path
from shared.cluster_secret import load_or_create as load_or_create_secret
from shared.config import DEFAULT_API_PORT, DEFAULT_NATS_PORT, default_state_dir, environment, parse_with_environment
from shared.identity import load_or_create_node_id
from shared.logging import setup_logging
from shared.peers import read_table
from shared.specs import encode_spec

log = structlog.get_logger()

FORMATION_WINDOW_S = 1.5  # beacons go out every second: nodes started together hear each other in this window


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
    ns, found = parse_with_environment(node_parser(), argv, NOT_FROM_ENVIRONMENT)
    try:
        config = node_config(ns, found)
    except ValueError as exc:
        node_parser().error(str(exc))
    api_key = check_api_key(ns, argv)
    state_dir = (ns.state_dir or _named_state_dir(ns.node_name)).expanduser()
    try:
        secret = given_secret(ns, found.get("cluster_secret"))
    except BadSecret as exc:
        print(f"exo: cluster secret: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    setup_logging("node", state_dir / "logs", config.log_level)
    try:
        asyncio.run(run_node(config, state_dir, secret, api_key))
    except NatsServerUnavailable as exc:
        print(f"exo: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def check_api_key(args: argparse.Namespace, argv: list[str]) -> str | None:
    """The API key; only the gateway gets it, in its environment (run_node). The variables were taken out of
    ours when read (shared.config.environment), so no other service or runner inherits them."""
    try:
        api_key = resolve_api_key(args.api_key, args.api_key_file)
    except BadApiKey as exc:
        node_parser().error(str(exc))
    if any(a == "--api-key" or a.startswith("--api-key=") for a in argv):
        print("exo: warning: a key on the command line is visible to every user of this machine (ps);"
              f" use --api-key-file or {API_KEY_ENV}", file=sys.stderr)  # fmt: skip
    if not args.no_gateway and (warning := exposure_warning(args.host, api_key is not None)):
        print(f"exo: warning: {warning}", file=sys.stderr)
    return api_key


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
    secret, created = load_or_create_secret(state_dir, environment().get("cluster_secret"))
    node_id = load_or_create_node_id(state_dir)
    conf = write_config(state_dir, base_config(state_dir, node_id, secret, "127.0.0.1", ns.nats_port, "127.0.0.1", 0))
    print(f"wrote {conf}" + (f"  (new cluster secret in {secret_path(state_dir)})" if created else ""))
    for path in write_plists(ns.out, ns.venv, state_dir, ns.port, ns.nats_port):
        print(f"wrote {path}  (load with: launchctl bootstrap gui/$(id -u) {path})")


def child_spec(name: str, spec: ServiceSpec, api_key: str | None) -> ChildSpec:
    """A service's process: its spec on its command line; the API key, for the gateway alone, in its environment."""
    env = {"PYTHONUNBUFFERED": "1"} | ({API_KEY_ENV: api_key} if name == "gateway" and api_key else {})
    return ChildSpec(name, [sys.executable, "-m", f"services.{name}", "--spec", encode_spec(spec)], env)


async def run_node(config: NodeConfig, state_dir: Path, given: str | None, api_key: str | None = None) -> None:
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
    own_bus = config.nats_url is None
    # The services connect as their own roles: a URL with one of our roles' passwords is not handed down
    nats_url = without_our_credentials(config.nats_url or f"nats://127.0.0.1:{config.nats_port}")
    specs = service_specs(config, state_dir, nats_url, config.route_port if own_bus else 0, os.getpid())
    discovery = "discovery" in specs
    tasks: list[asyncio.Task] = []
    try:
        if own_bus:
            stop_left_bus(state_dir)  # before its port is checked: a killed run of this node may have left it
            check_bus_ports(config)
        if discovery:  # first: its beacons find peers while the bus is not up yet
            await supervisor.start(child_spec("discovery", specs["discovery"], api_key))
        bus = None
        if own_bus:
            bus = EmbeddedBus(supervisor, state_dir, base_config(
                state_dir, node_id, secret, "127.0.0.1", config.nats_port, config.cluster_bind, config.route_port))  # fmt: skip
            routes: tuple[str, ...] = ()
            if discovery and config.route_port:
                routes = await wait_for_peers(state_dir, started, FORMATION_WINDOW_S)
            await bus.start(routes)
            if not await asyncio.to_thread(wait_for_port, "127.0.0.1", config.nats_port, 15.0):
                raise NatsServerUnavailable(f"the embedded nats-server did not open port {config.nats_port}; see above")
        else:
            await check_bus_credentials(nats_url)
        for name, spec in specs.items():
            if name != "discovery":
                await supervisor.start(child_spec(name, spec, api_key))
        api = f"http://{config.host}:{config.port}/v1" if "gateway" in specs else None
        log.info("node started", node=node_id, nats=redact(nats_url), api=api)
        place = None if config.model is None else asyncio.create_task(
            place_at_start(nats_url, config.model, stop, config.backend))  # fmt: skip
        if bus is not None and discovery:
            tasks.append(asyncio.create_task(follow_peers(bus, supervisor, state_dir, started, config, nats_url, stop, place)))
        await stop.wait()
    finally:
        log.info("stopping node")
        for task in tasks:
            task.cancel()
        await supervisor.stop()


async def follow_peers(
    bus: EmbeddedBus, supervisor: Supervisor, state_dir: Path, since: float, config: NodeConfig,
    nats_url: str, stop: asyncio.Event, place: asyncio.Task | None,
) -> None:  # fmt: skip
    """Routes for new peers; the one restart when a node that started alone meets its first peer."""
    while not stop.is_set():
        await asyncio.sleep(1.0)
        if bus.apply_routes(peer_routes(read_table(state_dir), since)) == "formed":
            if place is not None:
                place.cancel()
            await supervisor.restart_all(
                bus_ready=lambda: asyncio.to_thread(wait_for_port, "127.0.0.1", config.nats_port, 15.0))
            if config.model is not None:  # the cluster's log does not know this node's model yet
                place = asyncio.create_task(place_at_start(nats_url, config.model, stop, config.backend))


def check_bus_ports(config: NodeConfig) -> None:
    if not port_is_free("127.0.0.1", config.nats_port):
        raise NatsServerUnavailable(
            f"port {config.nats_port} is taken (another exo node or nats-server?); use --nats-port N, or --nats-url to join it"
        )
    if config.route_port and not port_is_free(config.cluster_bind, config.route_port):
        raise NatsServerUnavailable(
            f"route port {config.route_port} is taken; use --route-port N (or 0 for a node that never clusters)"
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
