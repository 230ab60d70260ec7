"""`exo`: one command starts a whole node (embedded nats-server, discovery, master, worker, gateway).

`exo service NAME` runs one service alone (what launchd runs); `exo bench` runs the benchmarks.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

import structlog

from shared.config import DEFAULT_API_PORT, DEFAULT_NATS_PORT, default_state_dir, parse_bytes
from shared.identity import load_or_create_node_id
from shared.logging import setup_logging
from shared.models import DEFAULT_MODEL, MODEL_CARDS
from shared.service import VERSION

from services.node.bootstrap import place_at_start
from services.node.launchd import write_plists
from services.node.nats_server import NatsServerUnavailable, nats_server_argv, port_is_free, wait_for_port
from services.node.supervisor import BUS_CHILD, ChildSpec, Supervisor

log = structlog.get_logger()

SERVICES = ("discovery", "master", "worker", "gateway")


def node_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="exo", description="Run an exo-distributed node.")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model to place at start (default {DEFAULT_MODEL}; known: "
                   + ", ".join(MODEL_CARDS) + ")")  # fmt: skip
    p.add_argument("--no-model", action="store_true", help="place no model at start")
    p.add_argument("--port", type=int, default=DEFAULT_API_PORT, help="OpenAI API port (default 8080)")
    p.add_argument("--host", default="127.0.0.1", help="API bind address (default loopback)")
    p.add_argument("--nats-url", default=None, help="use this NATS server instead of starting one")
    p.add_argument("--nats-port", type=int, default=DEFAULT_NATS_PORT, help="port of the embedded nats-server")
    p.add_argument("--state-dir", type=Path, default=None, help="node state (default ~/.exo, or ~/.exo/nodes/NAME)")
    p.add_argument("--node-name", default=None, help="several nodes on one machine: each name gets its own state dir")
    p.add_argument("--memory", default=None, help="memory budget placement may use here, e.g. 1GB")
    p.add_argument("--weight-format", choices=["q4", "f32"], default=None, help="force a weight layout")
    p.add_argument("--blas", choices=["auto", "reference"], default=None,
                   help="reference: MLX's bundled BLAS, slower but seeded tokens do not depend on the batch")  # fmt: skip
    p.add_argument("--max-batch", type=int, default=None, help="requests a runner decodes together (default 8)")
    p.add_argument("--max-waiting", type=int, default=None, help="requests allowed to wait per batch slot (default 4)")
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
    if argv[:1] == ["launchd"]:
        write_launchd(argv[1:])
        return
    args = node_parser().parse_args(argv)
    if args.memory:
        try:
            parse_bytes(args.memory)
        except ValueError as exc:
            node_parser().error(str(exc))
    if not args.no_model and args.model not in MODEL_CARDS:
        node_parser().error(f"unknown model {args.model!r}; known: {', '.join(MODEL_CARDS)}")
    if args.node_name is not None and not args.node_name.replace("-", "").replace("_", "").isalnum():
        node_parser().error(f"--node-name must be letters, digits, - or _: {args.node_name!r}")
    for flag in ("max_batch", "max_waiting"):
        if getattr(args, flag) is not None and getattr(args, flag) < (1 if flag == "max_batch" else 0):
            node_parser().error(f"--{flag.replace('_', '-')} is too small: {getattr(args, flag)}")
    state_dir = (args.state_dir or _named_state_dir(args.node_name)).expanduser()
    setup_logging("node", state_dir / "logs", args.log_level)
    try:
        asyncio.run(run_node(args, state_dir))
    except NatsServerUnavailable as exc:
        print(f"exo: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


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
    parser.add_argument("--port", type=int, default=DEFAULT_API_PORT)
    parser.add_argument("--nats-port", type=int, default=DEFAULT_NATS_PORT)
    ns = parser.parse_args(argv)
    for path in write_plists(ns.out, ns.venv, ns.state_dir.expanduser(), ns.port, ns.nats_port):
        print(f"wrote {path}  (load with: launchctl bootstrap gui/$(id -u) {path})")


def service_env(args: argparse.Namespace, state_dir: Path, nats_url: str) -> dict[str, str]:
    roles = [] if args.no_worker else ["worker"]
    env = {
        "EXO_NATS_URL": nats_url,
        "EXO_STATE_DIR": str(state_dir),
        "EXO_LOG_LEVEL": args.log_level,
        "EXO_HOST": args.host,
        "EXO_PORT": str(args.port),
        "EXO_ROLES": ",".join(roles + ([] if args.no_gateway else ["gateway"])),
        "PYTHONUNBUFFERED": "1",
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


async def run_node(args: argparse.Namespace, state_dir: Path) -> None:
    node_id = load_or_create_node_id(state_dir)
    supervisor = Supervisor(pid_file=state_dir / "pids.json")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        nats_url = args.nats_url or await start_embedded_nats(supervisor, state_dir, args.nats_port, node_id)
        env = service_env(args, state_dir, nats_url)
        for service in SERVICES:
            if not getattr(args, f"no_{service}"):
                await supervisor.start(ChildSpec(service, [sys.executable, "-m", f"services.{service}"], env))
        log.info("node started", node=node_id, nats=nats_url, api=None if args.no_gateway else f"http://{args.host}:{args.port}/v1")
        if not args.no_model:
            asyncio.create_task(place_at_start(nats_url, args.model, stop))
        await stop.wait()
    finally:
        log.info("stopping node")
        await supervisor.stop()


async def start_embedded_nats(supervisor: Supervisor, state_dir: Path, port: int, node_id: str) -> str:
    host = "127.0.0.1"
    if not port_is_free(host, port):
        raise NatsServerUnavailable(
            f"port {port} is taken (another exo node or nats-server?); use --nats-port N, or --nats-url to join it"
        )
    argv = nats_server_argv(state_dir, host, port, f"exo-{node_id}")
    (state_dir / "nats").mkdir(parents=True, exist_ok=True)
    await supervisor.start(ChildSpec(BUS_CHILD, argv, {}))
    if not await asyncio.to_thread(wait_for_port, host, port, 15.0):
        raise NatsServerUnavailable(f"the embedded nats-server did not open {host}:{port}; see its output above")
    return f"nats://{host}:{port}"


if __name__ == "__main__":
    main()
