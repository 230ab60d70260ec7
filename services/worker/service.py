"""The worker's I/O shell: follows the cluster state, plans, and runs the runner subprocesses of this node."""

from __future__ import annotations

import asyncio
import os
import platform
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.micro.request import Request
from nats.micro.service import Service

from shared import subjects
from shared.bus import StateFollower, connect, disconnect
from shared.bus_roles import WORKER
from shared.specs import RunnerSpec, WorkerSpec
from shared.events import AnyEvent, Instance, ShardAssignment
from shared.state import ClusterState, runner_key
from shared.models import ModelCard, PackagedGguf, get_card
from shared.processes import create_time, process_alive
from shared.process_lifetime import register

from services.worker.runners import registry
from services.worker.runner.blas import runner_blas_env
from services.worker.models.cache import ModelCache, download_line
from shared.downloads import DownloadProgress
from services.worker.dataplane import dataplane_config, write_files
from services.worker.models.store import ModelStore, default_weight_format
from services.worker.plan import (
    LocalRunner,
    RestartRunner,
    StartRunner,
    StopRunner,
    adopted_runner,
    plan,
    record_exit,
    triage_recorded,
)
from shared.runner_record import RunnerRecord
from services.worker.runner.reporting import report_runner, report_worker_started
from services.worker.runners.process import AdoptedRunner, RunnerProcess, runner_command

log = structlog.get_logger()

RECONCILE_PERIOD_S = 1.0


class Worker:
    def __init__(self, spec: WorkerSpec, node_id: str) -> None:
        self.spec = spec
        self.config = spec.common
        self.blas = spec.blas
        self.node_id = node_id
        self.weight_format = spec.weight_format
        self.local: dict[str, LocalRunner] = {}
        self.processes: dict[str, RunnerProcess | AdoptedRunner] = {}
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()  # kept: the loop holds only weak references to running tasks
        # The process whose exit ends the node, for the runners to watch: the supervisor; for a worker started
        # alone (launchd, a shell), its own parent (launchd itself never exits: then only the adoption timeout
        # ends runners that no worker comes back for).
        self.node_pid = spec.common.supervisor_pid or os.getppid()
        self.pid = os.getpid()
        self.create_time = create_time(self.pid) or 0.0

    async def run(self, stop: asyncio.Event) -> None:
        self.store = ModelStore(self.config.state_dir / "models")
        self.nc: NATS = await connect(self.config.nats_url, f"exo-worker:{self.node_id}", role=WORKER)
        self.follower = StateFollower(self.nc.jetstream(), on_event=self._on_event)
        await self.follower.start()
        await self.follower.catch_up(timeout=60)  # plan on the whole log, not on a prefix of it
        service = await _register_status(self)
        self.cache = ModelCache(self.nc, self.node_id)
        await self.cache.register(service)
        adopted = await self._adopt_recorded()
        # Forget what the old runners said, except the adopted ones': they still serve, the instance stays ready.
        await report_worker_started(self.nc, self.node_id, tuple(runner_key(r.instance_id, r.rank) for r in adopted))
        for record in adopted:
            self._spawn(self._watch_adopted(record))
        log.info("worker ready", node=self.node_id, adopted=len(adopted))
        while not stop.is_set():
            await self._reconcile()
            await self.cache.publish_now_and_then()
            self._wake.clear()
            waiters = [asyncio.create_task(self._wake.wait()), asyncio.create_task(stop.wait())]
            await asyncio.wait(waiters, timeout=RECONCILE_PERIOD_S, return_when=asyncio.FIRST_COMPLETED)
            for w in waiters:
                w.cancel()
        await asyncio.gather(*(p.stop() for p in self.processes.values()))
        for task in list(self._tasks):  # the runners are stopped: what still watches them has nothing to do
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for iid, process in self.processes.items():
            runner = self.local.get(iid)
            if runner is not None and process.pid is not None:
                registry.remove_record(self.config.state_dir, iid, runner.rank, process.pid)
        await service.stop()
        await disconnect(self.nc)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _on_event(self, _state: ClusterState, _event: AnyEvent) -> None:
        self._wake.set()

    async def _adopt_recorded(self) -> list[RunnerRecord]:
        """Runners that outlived the previous worker: adopt those still wanted, stop the others, drop stale records."""
        state_dir = self.config.state_dir
        records: list[RunnerRecord] = []
        for path, record in registry.read_all(state_dir):
            if record is None:
                path.unlink(missing_ok=True)
            else:
                records.append(record)
        alive = {r.pid for r in records if process_alive(r.pid, r.create_time)}
        decision = triage_recorded(self.follower.state, records, alive, self.node_id)
        for record in decision.forget:
            registry.remove_record(state_dir, record.instance_id, record.rank, record.pid)
        for record, reason in decision.stop:
            log.info("stopping a recorded runner", instance=record.instance_id, rank=record.rank, pid=record.pid,
                     reason=reason)  # fmt: skip
            await AdoptedRunner(record.pid, record.create_time, self._log_path(record.instance_id, record.rank)).stop()
            registry.remove_record(state_dir, record.instance_id, record.rank, record.pid)
        now, wall_now = time.monotonic(), time.time()
        for record in decision.adopt:
            iid = record.instance_id
            self.processes[iid] = AdoptedRunner(record.pid, record.create_time, self._log_path(iid, record.rank))
            self.local[iid] = adopted_runner(record, now, wall_now, self.follower.state.last_seq)
            registry.write_record(state_dir, msgspec.structs.replace(
                record, worker_pid=self.pid, worker_create_time=self.create_time))  # fmt: skip
            log.info("runner adopted", instance=iid, rank=record.rank, pid=record.pid)
        return decision.adopt

    async def _watch_adopted(self, record: RunnerRecord) -> None:
        process = self.processes.get(record.instance_id)
        if not isinstance(process, AdoptedRunner):
            return
        await process.wait()
        registry.remove_record(self.config.state_dir, record.instance_id, record.rank, record.pid)
        await self._runner_ended(
            record.instance_id, record.rank, f"adopted runner exited: {process.log_tail(4)}", expected=process.stopping
        )

    def _log_path(self, instance_id: str, rank: int) -> Path:
        return self.config.log_dir / f"runner-{instance_id}-{rank}.log"

    async def _reconcile(self) -> None:
        for action in plan(self.follower.state, self.local, self.node_id, time.monotonic()):
            match action:
                case StartRunner():
                    self._start(action)
                case StopRunner():
                    await self._stop(action)
                case RestartRunner():
                    self._restart(action)

    def _start(self, action: StartRunner) -> None:
        instance_id = action.instance.instance_id
        previous = self.local.get(instance_id)
        attempts = (previous.attempts if previous else 0) + 1
        self.local[instance_id] = LocalRunner(
            instance_id, action.shard.rank, running=True, attempts=attempts, started_at=time.monotonic(),
            seen_seq=self.follower.state.last_seq,
        )
        self._spawn(self._run_runner(action))

    def _restart(self, action: RestartRunner) -> None:
        runner, process = self.local.get(action.instance_id), self.processes.get(action.instance_id)
        if runner is None or process is None:
            return
        runner.seen_seq = action.failure_seq
        log.warning("stopping runner: its group lost a rank", instance=action.instance_id, reason=action.reason)
        self._spawn(process.stop())  # an expected exit: the plan starts it again after its backoff

    async def _stop(self, action: StopRunner) -> None:
        log.info("stopping runner", instance=action.instance_id, reason=action.reason)
        process = self.processes.pop(action.instance_id, None)
        self.local.pop(action.instance_id, None)
        if process is not None:
            await process.stop()

    async def _run_runner(self, action: StartRunner) -> None:
        instance, shard = action.instance, action.shard
        iid = instance.instance_id
        try:
            card = get_card(instance.model_id, self.follower.state.models)
            model_path = await self._ensure_model(card, instance, shard)
            command = runner_command(self._runner_spec(action, card, model_path))
            env = runner_blas_env(
                Path(sys.prefix), platform.system(), os.environ.get("LD_PRELOAD", ""), choice=self.blas
            )
            env |= self._dataplane_env(instance, shard.rank)
            process = RunnerProcess(command, self._log_path(iid, shard.rank), env)
            self.processes[iid] = process
            await process.start()
            pid = process.pid
            assert pid is not None, "a started runner has a pid"
            registry.write_record(self.config.state_dir, RunnerRecord(
                iid, shard.rank, instance.model_id, pid, create_time(pid) or 0.0, time.time(),
                self.pid, self.create_time))  # fmt: skip
            log.info("runner started", instance=iid, rank=shard.rank, pid=pid)
            code = await process.wait()
            registry.remove_record(self.config.state_dir, iid, shard.rank, pid)
        except Exception as exc:  # noqa: BLE001 - any failure is reported; the plan decides about retrying
            log.exception("runner could not start", instance=iid)
            await self._runner_ended(iid, shard.rank, f"could not start: {exc}", expected=False)
            return
        await self._runner_ended(
            iid, shard.rank, f"runner exited with code {code}: {process.log_tail(4)}", expected=process.stopping
        )

    def _runner_spec(self, action: StartRunner, card: ModelCard, model_path: Path) -> RunnerSpec:
        instance, shard = action.instance, action.shard
        return RunnerSpec(
            instance_id=instance.instance_id, model_path=str(model_path), node_id=self.node_id, rank=shard.rank,
            world_size=instance.world_size, start_layer=shard.start_layer, end_layer=shard.end_layer,
            context_length=card.context_length, nats_url=self.config.nats_url,
            state_dir=str(self.config.state_dir), worker_pid=self.pid, strategy=instance.strategy,
            backend=instance.backend, log_level=self.config.log_level, blas=self.blas,
            supervisor_pid=self.node_pid,
            record_path=str(registry.record_path(self.config.state_dir, instance.instance_id, shard.rank)),
            settings=self.spec.runner,
        )  # fmt: skip

    def _dataplane_env(self, instance: Instance, rank: int) -> dict[str, str]:
        """Write this rank's data-plane files (ring hostfile, jaccl device matrix); return its environment."""
        config_dir = self.config.state_dir / "dataplane" / instance.instance_id / str(rank)
        config = dataplane_config(instance, rank, self.follower.state.nodes, config_dir)
        write_files(config)
        return config.env

    async def _runner_ended(self, instance_id: str, rank: int, detail: str, expected: bool) -> None:
        runner = self.local.get(instance_id)
        if runner is not None:
            record_exit(runner, time.monotonic())
        if expected or instance_id not in self.follower.state.instances:
            return
        log.error("runner failed", instance=instance_id, detail=detail)
        await report_runner(self.nc, instance_id, self.node_id, rank, "failed", detail[-2000:])
        self._wake.set()

    async def _ensure_model(self, card: ModelCard, instance: Instance, shard: ShardAssignment) -> Path:
        instance_id, rank = instance.instance_id, shard.rank
        if not isinstance(card.source, PackagedGguf):
            await report_runner(self.nc, instance_id, self.node_id, rank, "importing", "fetching files", 0.0)
            pipeline = instance.strategy == "pipeline" and instance.world_size > 1
            loop = asyncio.get_running_loop()

            def downloading(p: DownloadProgress) -> None:
                detail = f"downloading {download_line(p)}"
                coro = report_runner(self.nc, instance_id, self.node_id, rank, "importing", detail, p.bytes_done / max(p.bytes_total, 1))
                asyncio.run_coroutine_threadsafe(coro, loop)

            layers = (shard.start_layer, shard.end_layer) if pipeline else None
            return await self.cache.ensure(card, layers, downloading)
        weight_format = self.weight_format or default_weight_format(card, self.spec.runner.cpu_kernel)
        if self.store.is_ready(card, weight_format):
            return self.store.local_path(card, weight_format)
        loop = asyncio.get_running_loop()

        def progress(stage: str, fraction: float) -> None:
            coro = report_runner(self.nc, instance_id, self.node_id, rank, "importing", stage, round(fraction, 2))
            asyncio.run_coroutine_threadsafe(coro, loop)

        await report_runner(self.nc, instance_id, self.node_id, rank, "importing", "starting", 0.0)
        return await asyncio.to_thread(self.store.ensure, card, weight_format, progress)

    def status(self) -> dict:
        return {
            "node_id": self.node_id,
            "runners": [msgspec.to_builtins(r) for r in self.local.values()],
        }


async def _register_status(worker: Worker) -> Service:
    service = await register(worker.nc, subjects.SERVICE_WORKER, worker.node_id, "runs this node's runners")

    async def status(req: Request) -> None:
        await req.respond(msgspec.json.encode(worker.status()))

    await service.add_endpoint(
        name="status", subject=subjects.node_service(worker.node_id, "worker.status"), handler=status
    )
    return service
