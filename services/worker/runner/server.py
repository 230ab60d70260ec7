"""The runner's I/O: takes generate requests from NATS, queues them, streams token chunks back."""

from __future__ import annotations

import asyncio
import os
import time

import msgspec
import structlog
from nats.aio.client import Client as NATS

from shared import subjects
from shared.generation import (
    CancelGeneration,
    GenerateAccepted,
    GenerateRejected,
    GenerateRequest,
    TokenChunk,
)

from services.worker.reporting import report_runner
from services.worker.runner.engine import Engine

log = structlog.get_logger()

MAX_QUEUE = 16


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


class RunnerServer:
    def __init__(self, args: RunnerArgs, nc: NATS, engine: Engine) -> None:
        self.args = args
        self.nc = nc
        self.engine = engine
        self.queue: asyncio.Queue[tuple[GenerateRequest, list[int]]] = asyncio.Queue(MAX_QUEUE)
        self.cancelled: set[str] = set()

    async def serve(self, stop: asyncio.Event) -> None:
        iid = self.args.instance_id
        await self.nc.subscribe(subjects.runner_generate(iid), queue="rank0", cb=self._on_generate)
        await self.nc.subscribe(subjects.runner_cancel(iid), cb=self._on_cancel)
        await self.nc.flush()
        await report_runner(self.nc, iid, self.args.node_id, self.args.rank, "ready", f"pid {os.getpid()}")
        log.info("runner serving", instance=iid)
        loop_task = asyncio.create_task(self._generation_loop())
        await stop.wait()
        loop_task.cancel()

    async def _on_generate(self, msg) -> None:  # noqa: ANN001
        reply = self._admit(msg.data)
        await msg.respond(msgspec.json.encode(reply))

    def _admit(self, data: bytes) -> GenerateAccepted | GenerateRejected:
        try:
            request = msgspec.json.decode(data, type=GenerateRequest)
        except msgspec.DecodeError as exc:
            return GenerateRejected("", "invalid_request", f"unreadable request: {exc}")
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
        if wanted is None:
            request = msgspec.structs.replace(
                request, sampling=msgspec.structs.replace(request.sampling, max_tokens=room)
            )
        if self.queue.full():
            return GenerateRejected(request.request_id, "busy", "the runner's queue is full", retry_after=1.0)
        self.queue.put_nowait((request, prompt))
        return GenerateAccepted(request.request_id, len(prompt), queue_position=self.queue.qsize() - 1)

    async def _on_cancel(self, msg) -> None:  # noqa: ANN001
        try:
            self.cancelled.add(msgspec.json.decode(msg.data, type=CancelGeneration).request_id)
        except msgspec.DecodeError:
            log.warning("unreadable cancel ignored")

    async def _generation_loop(self) -> None:
        while True:
            request, prompt = await self.queue.get()
            try:
                await self._generate_one(request, prompt)
            except Exception as exc:  # noqa: BLE001 - the client gets the reason; the runner keeps serving
                log.exception("generation failed", request=request.request_id)
                await self._publish(request, len(prompt), 10**9, "", 0, "error", f"generation failed: {exc}")
            finally:
                self.cancelled.discard(request.request_id)

    async def _generate_one(self, request: GenerateRequest, prompt: list[int]) -> None:
        rid = request.request_id
        if rid in self.cancelled:
            return
        started = time.perf_counter()
        index, tokens, finish = 0, 0, None
        for step in self.engine.generate(prompt, request.sampling):
            tokens = step.completion_tokens
            finish = step.finish_reason
            if rid in self.cancelled:
                finish = "cancelled"
            await self._publish(request, len(prompt), index, step.text, tokens, finish)
            index += 1
            if finish is not None:
                break
            await asyncio.sleep(0)  # let NATS flush this chunk and read cancels before the next step
        log.info(
            "generated", request=rid, prompt_tokens=len(prompt), tokens=tokens, finish=finish,
            seconds=round(time.perf_counter() - started, 3),
        )  # fmt: skip

    async def _publish(
        self,
        request: GenerateRequest,
        prompt_tokens: int,
        index: int,
        text: str,
        tokens: int,
        finish: str | None,
        error: str | None = None,
    ) -> None:
        chunk = TokenChunk(request.request_id, index, text, tokens, prompt_tokens, finish, error)  # type: ignore[arg-type]
        await self.nc.publish(subjects.tokens(request.request_id), msgspec.json.encode(chunk))
