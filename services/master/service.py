"""The master's I/O shell: every node runs one; they campaign for the leader lease (lease_keeper.py).

All masters replay the log and hear node facts, so a follower is current and takes over at once. Only the
leader writes (the event log is fenced by its term), answers commands (the micro service with the command
endpoints exists only while it leads: callers retry on no-responders), records facts and forgets silent
nodes. A master that loses the lease, or finds another leader's term in the log, stops all of that at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import msgspec
import nats.errors
import structlog
from nats.micro.request import Request
from nats.micro.service import Service

from services.master.decide import (
    decide_delete,
    decide_place,
    decide_preview,
    decide_report,
    decide_worker_started,
    facts_event,
)
from services.master.event_log import EventLog, StaleWriter, TermNotNewer
from services.master.inference_log import start_inference_log
from services.master.lease_keeper import LeaseKeeper
from services.master.node_loss import decide_liveness
from shared import subjects
from shared.bus import StateFollower, connect, disconnect, ensure_event_stream, scale_replicas
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
from shared.events import AnyEvent
from shared.facts import NodeFacts
from shared.ids import new_instance_id
from shared.service import register
from shared.state import ClusterState
from shared.subjects import EVENTS_STREAM, LEADER_BUCKET

log = structlog.get_logger()

NODE_TIMEOUT_S = 7.0  # facts come every 2 s: three missed in a row, and the node is lost within 10 s
LIVENESS_PERIOD_S = 1.0
REPLICATE_PERIOD_S = 5.0  # how often the leader checks that the log and the lease are replicated


class Master:
    def __init__(self, config: CommonConfig, node_id: str) -> None:
        self.config = config
        self.node_id = node_id
        self.last_seen: dict[str, float] = {}
        self._leading: asyncio.Task | None = None  # takeover, then the liveness loop, while this master leads

    async def run(self, stop: asyncio.Event) -> None:
        nc = await connect(self.config.nats_url, f"exo-master:{self.node_id}")
        self.nc = nc
        js = nc.jetstream()
        await ensure_event_stream(js)
        self.follower = StateFollower(js)
        await self.follower.start()
        await self.follower.catch_up(timeout=60)
        self.log = EventLog(js, self.follower)
        await nc.subscribe(subjects.facts_wildcard(), cb=self._on_facts)
        self.keeper = LeaseKeeper(js, self.node_id, on_won=self._on_won, on_lost=self._step_down)
        state = self.follower.state
        log.info("master ready", replayed=state.last_seq, nodes=len(state.nodes), leader=state.leader_node_id)
        await self.keeper.run(stop)
        leading = self._leading
        self._step_down("stopping")
        if leading is not None:
            await asyncio.gather(leading, return_exceptions=True)
        await self.keeper.release()  # after the last write: the next master need not wait for the TTL
        await disconnect(nc)

    # -- leadership -------------------------------------------------------------------------------

    def _on_won(self, term: int) -> None:
        self._leading = asyncio.get_running_loop().create_task(self._lead(term))

    def _step_down(self, reason: str) -> None:
        """Stop writing and answering at once (the endpoints go when the leading task ends)."""
        if self.log.term is None and self._leading is None:
            return
        log.warning("stepping down", term=self.log.term, reason=reason)
        self.log.step_down()
        leading, self._leading = self._leading, None
        if leading is not None and leading is not asyncio.current_task():
            leading.cancel()  # from inside, the task ends by itself once the exception unwinds it

    def _give_up(self, reason: str) -> None:
        """This master may not write (another leader claimed the log): stop leading and let the lease go."""
        self._step_down(reason)
        self.keeper.give_up(reason)

    async def _lead(self, term: int) -> None:
        service: Service | None = None
        inference_log = None
        won_at = time.monotonic()
        try:
            await self.follower.catch_up()
            await self.log.claim(self.node_id, term)
            now = time.monotonic()
            # a fresh baseline: silence before the takeover was nobody's to observe (or was this master's
            # own while it was a follower, which is no better), so no node is forgotten at once
            self.last_seen = {node_id: now for node_id in self.follower.state.nodes}
            service = await self._register_commands()
            took_ms = round((time.monotonic() - won_at) * 1000)
            log.info("leading", term=term, took_ms=took_ms, log_seq=self.follower.state.last_seq)
            inference_log = await start_inference_log(self.nc, self.node_id, self.config.state_dir)
            await self._liveness_loop()
        except TermNotNewer as exc:
            log.warning("the log already has this term or a newer one; letting the lease go", error=str(exc))
            self.log.step_down()
            await self.keeper.advance_past(self.follower.state.leader_term)
        except (StaleWriter, TimeoutError) as exc:
            self._give_up(f"could not lead: {exc!r}")
        except Exception as exc:  # a leader that silently stopped leading would hold the lease for nothing
            log.exception("leading failed")
            self._give_up(f"leading failed: {exc!r}")
        finally:
            if self._leading is asyncio.current_task():
                self._leading = None
            if inference_log is not None:
                await inference_log.stop()
            if service is not None:
                try:
                    await service.stop()
                except nats.errors.Error as exc:  # the connection is going anyway
                    log.debug("command endpoints not stopped cleanly", error=str(exc))

    async def _register_commands(self) -> Service:
        service = await register(self.nc, subjects.SERVICE_MASTER, self.node_id, "cluster state, placement, commands")
        group = service.add_group(name=subjects.COMMAND_PREFIX)
        await group.add_endpoint(name="place_instance", handler=self._endpoint(PlaceInstance, self._place))
        await group.add_endpoint(name="delete_instance", handler=self._endpoint(DeleteInstance, self._delete))
        await group.add_endpoint(name="report_runner", handler=self._endpoint(ReportRunner, self._report))
        await group.add_endpoint(name="preview", handler=self._endpoint(PreviewPlacements, self._preview))
        await group.add_endpoint(
            name="worker_started", handler=self._endpoint(ReportWorkerStarted, self._worker_started)
        )
        return service

    # -- commands ---------------------------------------------------------------------------------

    def _endpoint(self, type_: type, handle: Callable[..., Awaitable[CommandReply | PreviewReply]]) -> Callable:
        async def handler(req: Request) -> None:
            try:
                cmd = decode(req.data, type_)
            except msgspec.DecodeError as exc:
                await req.respond(encode(CommandReply(ok=False, error=f"bad {type_.__name__}: {exc}")))
                return
            try:
                reply = await handle(cmd)
            except StaleWriter as exc:
                # no answer: the caller times out and retries, and reaches the leader that replaced this one
                self._give_up(f"{type_.__name__}: {exc}")
                return
            except Exception as exc:  # the caller gets the reason instead of a timeout
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

    # -- observations (leader only) ---------------------------------------------------------------

    async def _on_facts(self, msg) -> None:  # msg: nats.aio.msg.Msg
        try:
            facts = msgspec.json.decode(msg.data, type=NodeFacts)
        except msgspec.DecodeError as exc:
            log.warning("unreadable node facts ignored", subject=msg.subject, error=str(exc))
            return
        self.last_seen[facts.node_id] = time.monotonic()
        if self.log.term is None:
            return  # a follower only keeps its liveness view

        def decide(state: ClusterState) -> tuple[list[AnyEvent], None]:
            event = facts_event(state, facts)
            return ([event] if event else []), None

        try:
            await self.log.decide_and_append(decide)
        except StaleWriter as exc:
            self._give_up(f"recording facts: {exc}")

    async def _liveness_loop(self) -> None:
        """Forget silent nodes, place models that wait for nodes where they fit now (and keep the log
        replicated) until cancelled. StaleWriter ends it (and the leadership); other errors are logged and the
        next round tries again, as a failed command does not stop the master either."""
        last_scaled = 0.0
        while True:
            await asyncio.sleep(LIVENESS_PERIOD_S)
            if time.monotonic() - last_scaled > REPLICATE_PERIOD_S:
                last_scaled = time.monotonic()
                await self._keep_replicated()
            try:
                events = await self.log.decide_and_append(self._decide_liveness)
            except StaleWriter:
                raise
            except Exception:
                log.exception("forgetting silent nodes failed; trying again")
                continue
            for event in events:
                log.warning("liveness: recorded", recorded=msgspec.json.encode(event).decode())

    async def _keep_replicated(self) -> None:
        """The log and the lease on as many servers as the NATS cluster has (up to 3), as servers join:
        a stream created while the cluster was small must not die with the one server that holds it."""
        js = self.nc.jetstream()
        for stream in (EVENTS_STREAM, f"KV_{LEADER_BUCKET}"):
            try:
                await scale_replicas(js, stream)
            except (nats.errors.Error, TimeoutError) as exc:
                log.debug("replicas not raised this time", stream=stream, error=str(exc))

    def _decide_liveness(self, state: ClusterState) -> tuple[list[AnyEvent], list[AnyEvent]]:
        events = decide_liveness(state, self.last_seen, time.monotonic(), NODE_TIMEOUT_S, new_instance_id)
        return events, events
