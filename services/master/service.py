"""The master's I/O shell: replays the log, answers commands, records node facts, forgets silent nodes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import msgspec
import structlog
from nats.micro.request import Request

from shared import subjects
from shared.bus import StateFollower, connect, ensure_event_stream
from shared.commands import (
    CommandReply,
    DeleteInstance,
    PlaceInstance,
    PreviewPlacements,
    PreviewReply,
    ReportRunner,
    ReportWorkerStarted,
    decode,
    encode,
)
from shared.config import CommonConfig
from shared.events import MasterStarted
from shared.facts import NodeFacts
from shared.ids import new_instance_id
from shared.service import register

from services.master.decide import (
    decide_delete,
    decide_place,
    decide_preview,
    decide_report,
    decide_worker_started,
    facts_event,
    nodes_to_forget,
)
from services.master.event_log import EventLog

log = structlog.get_logger()

NODE_TIMEOUT_S = 10.0
LIVENESS_PERIOD_S = 1.0


class Master:
    def __init__(self, config: CommonConfig, node_id: str) -> None:
        self.config = config
        self.node_id = node_id
        self.last_seen: dict[str, float] = {}

    async def run(self, stop: asyncio.Event) -> None:
        nc = await connect(self.config.nats_url, f"exo-master:{self.node_id}")
        js = nc.jetstream()
        await ensure_event_stream(js)
        self.follower = StateFollower(js)
        await self.follower.start()
        await self.follower.catch_up(timeout=60)
        self.log = EventLog(js, self.follower)
        await self.log.append(MasterStarted(self.node_id))
        log.info("master ready", replayed=self.follower.state.last_seq, nodes=len(self.follower.state.nodes))
        started = time.monotonic()
        self.last_seen = {n: started for n in self.follower.state.nodes}

        await nc.subscribe(subjects.facts_wildcard(), cb=self._on_facts)
        service = await register(nc, subjects.SERVICE_MASTER, self.node_id, "cluster state, placement, commands")
        group = service.add_group(name=subjects.COMMAND_PREFIX)
        await group.add_endpoint(name="place_instance", handler=self._endpoint(PlaceInstance, self._place))
        await group.add_endpoint(name="delete_instance", handler=self._endpoint(DeleteInstance, self._delete))
        await group.add_endpoint(name="report_runner", handler=self._endpoint(ReportRunner, self._report))
        await group.add_endpoint(name="preview", handler=self._endpoint(PreviewPlacements, self._preview))
        await group.add_endpoint(
            name="worker_started", handler=self._endpoint(ReportWorkerStarted, self._worker_started)
        )
        liveness = asyncio.create_task(self._liveness_loop())
        await stop.wait()
        liveness.cancel()
        await service.stop()
        await nc.drain()

    def _endpoint(self, type_: type, handle: Callable) -> Callable:
        async def handler(req: Request) -> None:
            try:
                cmd = decode(req.data, type_)
            except msgspec.DecodeError as exc:
                await req.respond(encode(CommandReply(ok=False, error=f"bad {type_.__name__}: {exc}")))
                return
            try:
                reply = await handle(cmd)
            except Exception as exc:  # noqa: BLE001 - the caller gets the reason instead of a timeout
                log.exception("command failed", command=type_.__name__)
                reply = CommandReply(ok=False, error=f"{type_.__name__} failed: {exc}")
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
        return decide_preview(self.follower.state, cmd)

    async def _worker_started(self, cmd: ReportWorkerStarted) -> CommandReply:
        return await self.log.decide_and_append(lambda s: decide_worker_started(s, cmd))

    async def _on_facts(self, msg) -> None:  # noqa: ANN001
        try:
            facts = msgspec.json.decode(msg.data, type=NodeFacts)
        except msgspec.DecodeError as exc:
            log.warning("unreadable node facts ignored", subject=msg.subject, error=str(exc))
            return
        self.last_seen[facts.node_id] = time.monotonic()

        def decide(state):  # noqa: ANN001, ANN202
            event = facts_event(state, facts)
            return ([event] if event else []), None

        await self.log.decide_and_append(decide)

    async def _liveness_loop(self) -> None:
        while True:
            await asyncio.sleep(LIVENESS_PERIOD_S)
            now = time.monotonic()
            lost = nodes_to_forget(self.follower.state, self.last_seen, now, NODE_TIMEOUT_S)
            for event in lost:
                log.warning("node lost", node=event.node_id, reason=event.reason)
            if lost:
                await self.log.decide_and_append(
                    lambda s, lost=lost: ([e for e in lost if e.node_id in s.nodes], None)
                )
