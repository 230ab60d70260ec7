"""The leader's command endpoints: the micro service that answers commands while this master leads.

Each handler decodes its command, lets a pure decide_* function choose the events, and appends them to the
fenced log. A handler that fails answers with a micro error (so `$SRV.STATS` counts it) whose description the
caller reads as a failed reply (shared.commands.decode_reply)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.micro.request import Request, ServiceError
from nats.micro.service import Service

from services.master.decide_commands import (
    decide_delete,
    decide_place,
    decide_preview,
    decide_preview_group,
    decide_report,
    decide_worker_started,
)
from services.master.event_log import EventLog, StaleWriter
from shared import subjects
from shared.commands import (
    CommandReply,
    DeleteInstance,
    GroupPreviewReply,
    PlaceInstance,
    PreviewGroup,
    PreviewPlacements,
    PreviewReply,
    ReportRunner,
    ReportWorkerStarted,
    decode,
    encode,
)
from shared.ids import new_instance_id
from shared.process_lifetime import register
from shared.state import ClusterState

log = structlog.get_logger()
Reply = CommandReply | PreviewReply | GroupPreviewReply


class CommandEndpoints:
    def __init__(
        self, log_: EventLog, state: Callable[[], ClusterState], give_up: Callable[[str], None]
    ) -> None:
        self.log = log_
        self.state = state  # the follower's current state (a preview writes nothing)
        self.give_up = give_up  # a stale writer must stop leading

    async def register(self, nc: NATS, node_id: str) -> Service:
        service = await register(nc, subjects.SERVICE_MASTER, node_id, "cluster state, placement, commands")
        group = service.add_group(name=subjects.COMMAND_PREFIX)
        endpoints: list[tuple[str, type, Callable[[Any], Awaitable[Reply]]]] = [
            (subjects.ENDPOINT_PLACE_INSTANCE, PlaceInstance, self._place),
            (subjects.ENDPOINT_DELETE_INSTANCE, DeleteInstance, self._delete),
            (subjects.ENDPOINT_REPORT_RUNNER, ReportRunner, self._report),
            (subjects.ENDPOINT_PREVIEW, PreviewPlacements, self._preview),
            (subjects.ENDPOINT_PREVIEW_GROUP, PreviewGroup, self._preview_group),
            (subjects.ENDPOINT_WORKER_STARTED, ReportWorkerStarted, self._worker_started),
        ]
        for name, type_, handle in endpoints:
            await group.add_endpoint(name=name, handler=self._handler(type_, handle))
        return service

    def _handler(self, type_: type, handle: Callable[[Any], Awaitable[Reply]]) -> Callable:
        async def handler(req: Request) -> None:
            try:
                cmd: Any = decode(req.data, type_)
            except msgspec.DecodeError as exc:
                raise ServiceError("400", f"bad {type_.__name__}: {exc}") from None
            try:
                reply = await handle(cmd)
            except StaleWriter as exc:
                # no answer: the caller times out and retries, and reaches the leader that replaced this one
                self.give_up(f"{type_.__name__}: {exc}")
                return
            except Exception as exc:  # micro answers with the error and counts it; the caller gets the reason
                log.exception("command failed", command=type_.__name__)
                raise ServiceError("500", f"{type_.__name__} failed: {exc}") from None
            await req.respond(encode(reply))

        return handler

    async def _place(self, cmd: PlaceInstance) -> CommandReply:
        instance_id = new_instance_id()
        reply = await self.log.decide_and_append(lambda s: decide_place(s, cmd, instance_id))
        log.info("place instance", model=cmd.model_id, ok=reply.ok, error=reply.error, instance=reply.instance_id)
        return reply

    async def _delete(self, cmd: DeleteInstance) -> CommandReply:
        return await self.log.decide_and_append(lambda s: decide_delete(s, cmd))

    async def _report(self, cmd: ReportRunner) -> CommandReply:
        return await self.log.decide_and_append(lambda s: decide_report(s, cmd))

    async def _preview(self, cmd: PreviewPlacements) -> PreviewReply:
        return decide_preview(self.state(), cmd)

    async def _preview_group(self, cmd: PreviewGroup) -> GroupPreviewReply:
        return decide_preview_group(self.state(), cmd)

    async def _worker_started(self, cmd: ReportWorkerStarted) -> CommandReply:
        return await self.log.decide_and_append(lambda s: decide_worker_started(s, cmd))
