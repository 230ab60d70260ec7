"""The runner's I/O: admits generate requests from NATS into the engine's batch and streams token chunks back."""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from concurrent.futures import ThreadPoolExecutor

import msgspec
import structlog
from nats.aio.client import Client as NATS

from shared import subjects
from shared.generation import (
    CancelGeneration,
    GenerateAccepted,
    GenerateRejected,
    GenerateRequest,
    SamplingParams,
    TokenChunk,
)

from services.worker.runner.blas import current_blas
from services.worker.runner.model.quantized_cpu import weights_detail
from services.worker.runner.reporting import report_runner
from services.worker.runner.serve.control import Control, ControlChannel, Submit
from services.worker.runner.serve.engine import Engine, Step

log = structlog.get_logger()

WAITING_PER_SLOT = 4  # requests allowed to wait per batch slot before the runner answers "busy" (429)
# A stream that has had no chunk for this long gets an empty one, so the gateway can tell slow from dead.
KEEPALIVE_S = 3.0


class RunnerArgs(msgspec.Struct, frozen=True):
    instance_id: str
    model_id: str
    model_path: str
    node_id: str
    rank: int
    world_size: int
    start_layer: int
    end_layer: int
    n_layers: int
    context_length: int
    nats_url: str
    strategy: str = "pipeline"
    backend: str = "ring"


class Stream:
    """What the runner remembers of a request while it generates."""

    def __init__(self, request: GenerateRequest, prompt: list[int], sampling: SamplingParams) -> None:
        self.request = request
        self.prompt = prompt
        self.sampling = sampling
        self.cached_tokens = 0
        self.index = 0
        self.last_sent = time.monotonic()
        self.completion_tokens = 0


class RunnerServer:
    """NATS callbacks run on the event loop; every MLX call runs on one dedicated thread, between which the
    loop admits newcomers and cancels, so a long prefill never stops the runner from answering."""

    def __init__(
        self,
        args: RunnerArgs,
        nc: NATS,
        engine: Engine,
        max_waiting: int = WAITING_PER_SLOT,
        group=None,  # noqa: ANN001
        mlx_thread: ThreadPoolExecutor | None = None,
    ) -> None:
        self.args = args
        self.group = group  # the instance's mx.distributed group when it spans several ranks
        self.nc = nc
        self.engine = engine
        self.streams: dict[str, Stream] = {}
        self.to_submit: list[Stream] = []
        self.to_cancel: list[str] = []
        self.max_admitted = engine.max_batch * (1 + max_waiting)
        self._work = asyncio.Event()
        self.failed = False
        self._mlx_thread = mlx_thread or ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlx")
        # Several ranks: each cycle's control goes to the other ranks one cycle ahead (see control.py).
        self.channel = ControlChannel(group) if group is not None else None

    async def serve(self, stop: asyncio.Event) -> None:
        iid = self.args.instance_id
        loop = asyncio.get_running_loop()
        if self.channel is not None:
            await loop.run_in_executor(self._mlx_thread, self.channel.post, Control())
        await self.nc.subscribe(subjects.runner_generate(iid), queue="rank0", cb=self._on_generate)
        await self.nc.subscribe(subjects.runner_cancel(iid), cb=self._on_cancel)
        await self.nc.flush()
        weights = weights_detail(self.engine.model)  # e.g. "weights q4+exo-kernel (avx512vnni)"
        detail = f"pid {os.getpid()}, blas {current_blas()}, {weights}, batch {self.engine.max_batch}"
        await report_runner(self.nc, iid, self.args.node_id, self.args.rank, "ready", detail)
        log.info("runner serving", instance=iid, max_batch=self.engine.max_batch, max_admitted=self.max_admitted)
        self.stop = stop
        tasks = [asyncio.create_task(self._generation_loop()), asyncio.create_task(self._keepalive_loop())]
        await stop.wait()
        for task in tasks:
            task.cancel()
        if self.channel is not None and not self.failed:  # release the other ranks, which wait for our next control
            await loop.run_in_executor(self._mlx_thread, self._shut_down_ranks)

    async def _on_generate(self, msg) -> None:  # noqa: ANN001
        reply = self._admit(msg.data)
        await msg.respond(msgspec.json.encode(reply))

    def _admit(self, data: bytes) -> GenerateAccepted | GenerateRejected:
        try:
            request = msgspec.json.decode(data, type=GenerateRequest)
        except msgspec.DecodeError as exc:
            return GenerateRejected("", "invalid_request", f"unreadable request: {exc}")
        if len(self.streams) >= self.max_admitted:
            return GenerateRejected(
                request.request_id, "busy", f"{len(self.streams)} requests are queued or running", retry_after=1.0
            )
        try:
            prompt = self.engine.prompt_tokens(request)
        except Exception as exc:  # noqa: BLE001 - e.g. a chat template that rejects the roles given
            return GenerateRejected(request.request_id, "invalid_request", f"cannot build the prompt: {exc}")
        room = self.args.context_length - len(prompt)
        wanted = request.sampling.max_tokens
        if room < 1 or (wanted is not None and wanted > room):
            return GenerateRejected(
                request.request_id,
                "context_length_exceeded",
                f"this model's context is {self.args.context_length} tokens; the prompt has {len(prompt)} "
                f"and max_tokens asks for {wanted if wanted is not None else 'at least 1'} more",
            )
        sampling = msgspec.structs.replace(request.sampling, max_tokens=wanted or room)
        if sampling.seed is None and sampling.temperature > 0:
            # Fixed here, so every rank of the instance samples alike (and the log can tell which seed ran).
            sampling = msgspec.structs.replace(sampling, seed=secrets.randbits(63))
        stream = Stream(request, prompt, sampling)
        self.streams[request.request_id] = stream
        self.to_submit.append(stream)
        self._work.set()
        return GenerateAccepted(request.request_id, len(prompt), queue_position=len(self.streams) - 1)

    async def _on_cancel(self, msg) -> None:  # noqa: ANN001
        try:
            request_id = msgspec.json.decode(msg.data, type=CancelGeneration).request_id
        except msgspec.DecodeError:
            log.warning("unreadable cancel ignored")
            return
        if request_id in self.streams:
            self.to_cancel.append(request_id)
            self._work.set()

    async def _generation_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            posted = self.channel is not None and self.channel.posted_work
            if not (self.engine.busy or self.to_submit or self.to_cancel or posted):
                self._work.clear()
                await self._work.wait()
            submits, self.to_submit = self.to_submit, []
            cancels, self.to_cancel = self.to_cancel, []
            try:
                steps = await loop.run_in_executor(self._mlx_thread, self._cycle, submits, cancels)
            except Exception as exc:  # noqa: BLE001 - every client in the batch gets the reason
                log.exception("generation step failed")
                await self._fail_all(f"generation failed: {exc}")
                if self.group is not None:  # a lost peer: this group is broken; exit so the worker restarts us
                    self.failed = True
                    self.stop.set()
                    return
                continue
            for step in steps:
                await self._publish(step)

    def _cycle(self, submits: list[Stream], cancels: list[str]) -> list[Step]:
        """On the MLX thread: admit newcomers, drop cancelled requests, run one step. With several ranks the
        newcomers and cancels are posted to every rank now and applied next cycle; this cycle applies those
        posted last cycle."""
        control = Control([Submit(s.request.request_id, s.prompt, s.sampling) for s in submits], cancels)
        if self.channel is not None:
            control, posted = self.channel.take(), control
            self.channel.post(posted)
        steps, cached = self.engine.run_cycle(control)
        for request_id, tokens in cached.items():
            if (stream := self.streams.get(request_id)) is not None:
                stream.cached_tokens = tokens
        return steps

    def _shut_down_ranks(self) -> None:
        """On the MLX thread: take the control in flight and run its cycle (the other ranks run it too),
        post the stop, and wait until every rank has it and has finished its work."""
        from services.worker.runner.model.sharding import sync_ranks

        assert self.channel is not None
        control = self.channel.take()
        self.channel.post(Control(shutdown=True))
        self.engine.run_cycle(control)
        self.channel.take()
        sync_ranks(self.group)

    async def _publish(self, step: Step, error: str | None = None) -> None:
        stream = self.streams.get(step.request_id)
        if stream is None:
            return
        chunk = TokenChunk(
            step.request_id, stream.index, step.text, step.completion_tokens, len(stream.prompt),
            step.finish_reason, error, stream.cached_tokens,  # type: ignore[arg-type]
        )  # fmt: skip
        stream.index += 1
        stream.last_sent = time.monotonic()
        stream.completion_tokens = step.completion_tokens
        await self.nc.publish(subjects.tokens(step.request_id), msgspec.json.encode(chunk))
        if step.finish_reason is not None:
            del self.streams[step.request_id]
            log.info(
                "generated", request=step.request_id, prompt_tokens=len(stream.prompt),
                cached_tokens=stream.cached_tokens, tokens=step.completion_tokens, finish=step.finish_reason,
            )  # fmt: skip

    async def _keepalive_loop(self) -> None:
        while True:
            await asyncio.sleep(KEEPALIVE_S / 3)
            now = time.monotonic()
            for stream in list(self.streams.values()):
                if now - stream.last_sent >= KEEPALIVE_S:
                    await self._publish(Step(stream.request.request_id, "", stream.completion_tokens, None))

    async def _fail_all(self, reason: str) -> None:
        loop = asyncio.get_running_loop()
        for request_id in list(self.streams):
            await loop.run_in_executor(self._mlx_thread, self.engine.cancel, request_id)
            await self._publish(Step(request_id, "", 0, "error"), error=reason)
