"""A runner: one shard of one instance, started by the worker. Loads the model, serves generations."""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

import msgspec
import structlog

from shared.bus import connect
from shared.logging import setup_logging
from shared.service import run_until_signalled

from services.worker.reporting import report_runner
from services.worker.runner.engine import MAX_BATCH, Engine
from services.worker.runner.server import WAITING_PER_SLOT, RunnerArgs, RunnerServer

log = structlog.get_logger()


def parse_args(argv: list[str] | None = None) -> RunnerArgs:
    parser = argparse.ArgumentParser(prog="python -m services.worker.runner", description=__doc__)
    for name in ("instance-id", "model-id", "model-path", "node-id", "nats-url"):
        parser.add_argument(f"--{name}", required=True)
    for name in ("rank", "world-size", "start-layer", "end-layer", "n-layers", "context-length"):
        parser.add_argument(f"--{name}", type=int, required=True)
    return msgspec.convert(vars(parser.parse_args(argv)), RunnerArgs)


async def watch_parent(stop: asyncio.Event) -> None:
    """A runner outlives no worker: when the worker is gone, stop (a restarted worker starts a new one)."""
    parent = os.getppid()
    while not stop.is_set():
        if os.getppid() != parent:
            log.warning("worker is gone; runner stops")
            stop.set()
        await asyncio.sleep(1.0)


async def run(args: RunnerArgs, stop: asyncio.Event) -> None:
    nc = await connect(args.nats_url, f"exo-runner:{args.instance_id}:{args.rank}")
    asyncio.create_task(watch_parent(stop))
    await report_runner(nc, args.instance_id, args.node_id, args.rank, "loading", args.model_path)
    try:
        engine = Engine(Path(args.model_path), max_batch=int(os.environ.get("EXO_MAX_BATCH", MAX_BATCH)))
    except Exception as exc:  # noqa: BLE001 - reported to the master, then the runner exits
        log.exception("model failed to load")
        await report_runner(nc, args.instance_id, args.node_id, args.rank, "failed", f"model failed to load: {exc}")
        await nc.drain()
        raise SystemExit(3) from exc
    max_waiting = int(os.environ.get("EXO_MAX_WAITING", WAITING_PER_SLOT))
    await RunnerServer(args, nc, engine, max_waiting).serve(stop)
    await nc.drain()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setup_logging(f"runner-{args.instance_id}-{args.rank}", None, os.environ.get("EXO_LOG_LEVEL", "info"))
    run_until_signalled(lambda stop: run(args, stop))


if __name__ == "__main__":
    main()
