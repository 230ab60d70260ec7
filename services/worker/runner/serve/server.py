"""The runner's I/O: admits generate requests from NATS into the engine's batch and streams token chunks back."""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import mlx.nn as nn
import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.micro.request import Request, ServiceError
from nats.micro.service import Service

from shared import subjects
from shared.generation import (
    CancelGeneration,
    FinishedRequest,
    FinishReason,
    GenerateAccepted,
    GenerateRejected,
    GenerateRequest,
    ProposeDraft,
    SamplingParams,
    Speculation,
    UPLOAD_HEADER,
    TokenChunk,
    TokenCount,
)
from shared.process_lifetime import register
from shared.specs import RunnerSpec

from services.worker.runner.blas import current_blas
from services.worker.runner.model.fused_layer import fused_layer_count
from services.worker.runner.model.quantized_cpu import weights_detail
from services.worker.runner.model.sharding import parameter_bytes
from services.worker.runner.reporting import report_runner
from services.worker.runner.serve import uploads
from services.worker.runner.serve.admission import Limits, admit
from services.worker.runner.serve.control import Control, ControlChannel, Submit
from services.worker.runner.serve.drafting import Drafter
from services.worker.runner.serve.model_draft import MlxWork, ModelDraft, bridge
from services.worker.runner.serve.engine import Engine, Step

log = structlog.get_logger()

WAITING_PER_SLOT = 4  # requests allowed to wait per batch slot before the runner answers "busy" (429)
# A stream that has had no chunk for this long gets an empty one, so the gateway can tell slow from dead.
KEEPALIVE_S = 3.0


class Stream:
    """What the runner remembers of a request while it generates."""

    def __init__(self, request: GenerateRequest, prompt: list[int], sampling: SamplingParams) -> None:
        self.request = request
        self.prompt = prompt
        self.sampling = sampling
        self.cached_tokens = 0
        self.index = 0
        self.admitted_at = self.last_sent = time.monotonic()
        self.first_token_at: float | None = None
        self.completion_tokens = 0
        self.drafted_tokens = self.accepted_tokens = 0

    def finished(self, reason: FinishReason, strategy: str, device_count: int, now: float) -> FinishedRequest:
        """The record of the request, ended at `now` (monotonic seconds)."""
        first = self.first_token_at
        decoding = now - first if first is not None else 0.0
        return FinishedRequest(
            finish_reason=reason,
            seed=self.sampling.seed,
            prompt_tokens=len(self.prompt),
            cached_tokens=self.cached_tokens,
            completion_tokens=self.completion_tokens,
            time_to_first_token_s=None if first is None else round(first - self.admitted_at, 4),
            total_s=round(now - self.admitted_at, 4),
            decode_tokens_per_s=round((self.completion_tokens - 1) / decoding, 2)
            if self.completion_tokens >= 2 and decoding > 0 else None,
            strategy=strategy,
            device_count=device_count,
            drafted_tokens=self.drafted_tokens,
            accepted_tokens=self.accepted_tokens,
        )


def model_detail(model: nn.Module) -> str:
    """What a rank's ready status says of its model: e.g. 'weights q4+exo-kernel (avx512vnni), weights in
    memory 98.3 MB, fused decode layers 30' (the bytes of this rank's part only)."""
    detail = f"{weights_detail(model)}, weights in memory {parameter_bytes(model) / 1e6:.1f} MB"
    if fused := fused_layer_count(model):
        detail += f", fused decode layers {fused}"
    return detail


class RunnerServer:
    """NATS callbacks run on the event loop; every MLX call runs on one dedicated thread, between which the
    loop admits newcomers and cancels, so a long prefill never stops the runner from answering."""

    def __init__(
        self,
        args: RunnerSpec,
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
        self._mlx_work = MlxWork(self._mlx_thread)  # draft proposals for other instances' requests
        # Several ranks: each cycle's control goes to the other ranks one cycle ahead (see control.py).
        self.channel = ControlChannel(group) if group is not None else None

    async def serve(self, stop: asyncio.Event) -> None:
        iid = self.args.instance_id
        loop = self._loop = asyncio.get_running_loop()
        if self.channel is not None:
            await loop.run_in_executor(self._mlx_thread, self.channel.post, Control())
        service = await self._register()
        model = model_detail(self.engine.model)
        detail = f"pid {os.getpid()}, blas {current_blas()}, {model}, batch {self.engine.max_batch}"
        await report_runner(self.nc, iid, self.args.node_id, self.args.rank, "ready", detail)
        log.info("runner serving", instance=iid, max_batch=self.engine.max_batch, max_admitted=self.max_admitted)
        self.stop = stop
        tasks = [asyncio.create_task(self._generation_loop()), asyncio.create_task(self._keepalive_loop())]
        await stop.wait()
        await service.stop()  # no request is admitted any more
        for task in tasks:
            task.cancel()
        if self.channel is not None and not self.failed:  # release the other ranks, which wait for our next control
            await loop.run_in_executor(self._mlx_thread, self._shut_down_ranks)

    async def _register(self) -> Service:
        """The runner's micro service: `$SRV.INFO.exo-runner` lists its endpoints, `$SRV.STATS` their counts."""
        iid = self.args.instance_id
        service = await register(self.nc, subjects.SERVICE_RUNNER, self.args.node_id, f"generation of instance {iid}")
        group = service.add_group(name=subjects.runner_group(iid), queue_group=subjects.RUNNER_QUEUE)
        await group.add_endpoint(name=subjects.RUNNER_GENERATE, handler=self._on_generate)
        await group.add_endpoint(name=subjects.RUNNER_COUNT, handler=self._on_count)
        # Every runner of the instance hears a cancel (the one that holds the request acts): a queue of its own.
        own_queue = f"{subjects.RUNNER_QUEUE}-{secrets.token_hex(4)}"
        await group.add_endpoint(name=subjects.RUNNER_CANCEL, handler=self._on_cancel, queue_group=own_queue)
        if self.group is None:  # a one-rank instance drafts for others
            self.drafter = Drafter(self.engine.model, self.engine.vocab_size)
            await group.add_endpoint(name=subjects.RUNNER_PROPOSE, handler=self._on_propose)
        self.engine.model_drafts = self._model_draft  # and asks a draft model's instance (for all its ranks)
        await self.nc.flush()
        return service

    async def _on_generate(self, req: Request) -> None:
        """Answers accepted or rejected. An unreadable request raises: micro counts it as the endpoint's error
        and answers with its error headers."""
        data = req.data
        if req.headers and UPLOAD_HEADER in req.headers:
            try:
                data = await uploads.fetch(self.nc, data)
            except uploads.UploadFailed as exc:
                raise ServiceError("400", f"the request's upload failed: {exc}") from None
        try:
            request = msgspec.json.decode(data, type=GenerateRequest)
        except msgspec.DecodeError as exc:
            raise ServiceError("400", f"unreadable request: {exc}") from None
        await req.respond(msgspec.json.encode(self._admit(request)))

    async def _on_count(self, req: Request) -> None:
        """The prompt's token count with the model's tokenizer and chat template; nothing is generated."""
        try:
            request = msgspec.json.decode(req.data, type=GenerateRequest)
        except msgspec.DecodeError as exc:
            raise ServiceError("400", f"unreadable request: {exc}") from None
        await req.respond(msgspec.json.encode(TokenCount(len(self.engine.prompt_tokens(request)))))

    def _admit(self, request: GenerateRequest) -> GenerateAccepted | GenerateRejected:
        limits = Limits(self.args.context_length, self.max_admitted, self.engine.vocab_size)
        decision = admit(
            request, len(self.streams), limits, self.engine.prompt_tokens, secrets.randbits(63),
            self.engine.grammars.check,
        )  # fmt: skip
        if isinstance(decision, GenerateRejected):
            return decision
        stream = Stream(request, decision.prompt, decision.sampling)
        self.streams[request.request_id] = stream
        self.to_submit.append(stream)
        self._work.set()
        return GenerateAccepted(
            request.request_id, len(decision.prompt), len(self.streams) - 1, decision.sampling.seed
        )

    async def _on_propose(self, req: Request) -> None:
        """Greedy tokens of this instance's model for another instance's speculating request, computed on the MLX
        thread between two steps of the batch (drafting.py); a `done` message has no answer."""
        try:
            ask = msgspec.json.decode(req.data, type=ProposeDraft)
        except msgspec.DecodeError as exc:
            raise ServiceError("400", f"unreadable proposal request: {exc}") from None
        now = time.monotonic()
        try:
            proposal = await asyncio.wrap_future(self._mlx_work.submit(lambda: self.drafter.propose(ask, now)))
        except ValueError as exc:
            raise ServiceError("400", str(exc)) from None
        if not ask.done:
            await req.respond(msgspec.json.encode(proposal))

    def _model_draft(self, request_id: str, speculation: Speculation, prompt: list[int]) -> ModelDraft:
        """On the MLX thread, for a request that speculates with a draft model's instance."""
        assert speculation.draft_instance is not None
        ask, tell = bridge(self.nc, self._loop, subjects.runner_propose(speculation.draft_instance), self._mlx_work)
        return ModelDraft(request_id, prompt, ask, tell, self.group)

    async def _on_cancel(self, req: Request) -> None:
        try:
            request_id = msgspec.json.decode(req.data, type=CancelGeneration).request_id
        except msgspec.DecodeError:
            log.warning("unreadable cancel ignored")  # a cancel has no reply to carry an error
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
        control = Control([Submit(s.request.request_id, s.prompt, s.sampling, s.request.json_schema, s.request.speculative) for s in submits], cancels)
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
        from services.worker.runner.group import sync_ranks

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
        now = time.monotonic()
        if step.completion_tokens > 0 and stream.first_token_at is None:
            stream.first_token_at = now
        stream.last_sent = now
        stream.completion_tokens = max(stream.completion_tokens, step.completion_tokens)
        stream.drafted_tokens = max(stream.drafted_tokens, step.drafted)
        stream.accepted_tokens = max(stream.accepted_tokens, step.accepted)
        reason: FinishReason | None = step.finish_reason  # type: ignore[assignment]
        finished = None if reason is None else stream.finished(reason, self.args.strategy, self.args.world_size, now)
        chunk = TokenChunk(
            step.request_id, stream.index, step.text, stream.completion_tokens, len(stream.prompt), reason,
            error or step.error, stream.cached_tokens, finished, step.stop_sequence, step.logprobs or [],
        )  # fmt: skip
        stream.index += 1
        await self.nc.publish(subjects.tokens(step.request_id), msgspec.json.encode(chunk))
        if finished is not None:
            del self.streams[step.request_id]
            log.info(
                "generated", request=step.request_id, prompt_tokens=finished.prompt_tokens,
                cached_tokens=finished.cached_tokens, tokens=finished.completion_tokens, finish=finished.finish_reason,
                ttft_s=finished.time_to_first_token_s, total_s=finished.total_s,
                decode_tps=finished.decode_tokens_per_s, error=chunk.error, drafted=finished.drafted_tokens,
                accepted=finished.accepted_tokens,
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
