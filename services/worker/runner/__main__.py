"""A runner: one shard of one instance, started by the worker. Loads its part of the model, joins the
instance's MLX distributed group when the instance spans several ranks, and serves generations (rank 0)
or follows rank 0's steps (the other ranks)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgspec
import structlog

from shared.bus import connect, disconnect
from shared.bus_roles import WORKER
from shared.config import remember_secret
from shared.logging import setup_logging
from shared.process_lifetime import run_until_signalled
from shared.specs import RunnerSpec, decode_spec

from services.worker.runner.blas import current_blas
from services.worker.runner.reporting import report_runner
from services.worker.runner.serve.control import ControlChannel
from services.worker.runner.serve.engine import MAX_BATCH, Engine
from services.worker.runner.serve.model_draft import ModelDraft
from services.worker.runner.lifetime import watch_lifetime
from services.worker.runner.ring.ring_wait import ring_connect_reason
from services.worker.runner.serve.server import WAITING_PER_SLOT, RunnerServer, model_detail

log = structlog.get_logger()


def parse_spec(argv: list[str] | None = None) -> RunnerSpec:
    """The worker's RunnerSpec, as `--spec JSON`."""
    parser = argparse.ArgumentParser(prog="python -m services.worker.runner", description=__doc__)
    parser.add_argument("--spec", required=True, metavar="JSON", help="a shared.specs.RunnerSpec")
    try:
        return decode_spec(parser.parse_args(argv).spec, RunnerSpec)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        parser.error(f"--spec: {exc}")


def load_engine(args: RunnerSpec):  # noqa: ANN201 - (Engine, group or None)
    from services.worker.runner.group import init_group
    from services.worker.runner.model import quantized_cpu
    from services.worker.runner.model.sharding import load_shard

    settings = args.settings
    quantized_cpu.configure(settings.kernel_isa, settings.kernel_threads)
    group = init_group(args.world_size, args.backend, settings.ring_wait)
    strategy = "single" if group is None else args.strategy
    model, tokenizer = load_shard(args.model_path, strategy, group, args.start_layer, args.end_layer,
                                  cpu_fusion=settings.cpu_fusion, cpu_kernel=settings.cpu_kernel)  # fmt: skip
    max_batch = settings.max_batch or MAX_BATCH
    return Engine(model, tokenizer, max_batch=max_batch, world_size=args.world_size), group


def _ring_reason(exc: Exception, args: RunnerSpec) -> str | None:
    """The ring's connect failure, said with the addresses (MLX says only "Couldn't connect (error: 111)")."""
    path = os.environ.get("MLX_HOSTFILE")
    if args.backend != "ring" or not path:
        return None
    try:
        hostfile = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return ring_connect_reason(str(exc), args.rank, hostfile)


def follow(engine: Engine, group) -> None:  # noqa: ANN001
    """Ranks above 0: run exactly the cycles rank 0 runs, until it says stop."""
    from services.worker.runner.group import sync_ranks

    channel = ControlChannel(group)
    channel.post(None)
    while True:
        control = channel.take()
        if control.shutdown:
            sync_ranks(group)  # rank 0 does the same: no rank leaves while a peer still needs it
            return
        channel.post(None)
        engine.run_cycle(control)


async def run(args: RunnerSpec, stop: asyncio.Event) -> None:
    remember_secret(Path(args.state_dir), None)  # the node's stored secret: the bus credentials derive from it
    nc = await connect(args.nats_url, f"exo-runner:{args.instance_id}:{args.rank}", role=WORKER)
    record = Path(args.record_path) if args.record_path else None
    lifetime = asyncio.create_task(watch_lifetime(stop, args.supervisor_pid, args.worker_pid, record))
    report = lambda phase, detail: report_runner(nc, args.instance_id, args.node_id, args.rank, phase, detail)  # noqa: E731
    await report("loading", f"{args.model_path} layers {args.start_layer}-{args.end_layer} ({args.strategy})")
    mlx_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlx")  # every MLX call runs on it
    loop = asyncio.get_running_loop()
    try:
        engine, group = await loop.run_in_executor(mlx_thread, load_engine, args)
    except Exception as exc:  # noqa: BLE001 - reported to the master, then the runner exits
        ring = _ring_reason(exc, args)
        log.exception("could not join the ring" if ring else "model failed to load")
        await report("failed", ring or f"model failed to load: {exc}")
        await disconnect(nc)
        raise SystemExit(4 if ring else 3) from exc
    if args.rank == 0:
        waiting = args.settings.max_waiting
        max_waiting = WAITING_PER_SLOT if waiting is None else waiting
        server = RunnerServer(args, nc, engine, max_waiting, group, mlx_thread)
        await server.serve(stop)
        failed = server.failed
    else:
        await report("ready", f"pid {os.getpid()}, blas {current_blas()}, {model_detail(engine.model)}, follows rank 0")
        # a draft model's drafts come from rank 0, which asks the draft instance (rank_drafts.py)
        engine.model_drafts = lambda request_id, _speculation, prompt: ModelDraft(request_id, prompt, None, None, group)
        try:
            await loop.run_in_executor(mlx_thread, follow, engine, group)
            failed = False
        except Exception:  # noqa: BLE001 - a lost peer: exit, the worker reports it and restarts us
            log.exception("lost the instance's group")
            failed = True
    await disconnect(nc)
    lifetime.cancel()
    if failed:
        raise SystemExit(1)


def main(argv: list[str] | None = None) -> None:
    args = parse_spec(argv)
    setup_logging(f"runner-{args.instance_id}-{args.rank}", None, args.log_level)
    run_until_signalled(lambda stop: run(args, stop))  # no supervisor_pid: lifetime.py watches the node


if __name__ == "__main__":
    main()
