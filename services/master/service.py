"""The master's I/O shell: every node runs one; they campaign for the leader lease (lease_keeper.py). This file is
the leadership (take over, step down, liveness); the commands a leader answers are in command_endpoints.py.

All masters replay the log and hear node facts, so a follower is current and takes over at once. Only the
leader writes (the event log is fenced by its term), answers commands (the micro service with the command
endpoints exists only while it leads: callers retry on no-responders), records facts and forgets silent
nodes. A master that loses the lease, or finds another leader's term in the log, stops all of that at once.
"""

from __future__ import annotations

import asyncio
import time

import msgspec
import nats.errors
import structlog
from nats.micro.service import Service

from services.master.command_endpoints import CommandEndpoints
from services.master.decide_commands import facts_event
from services.master.event_log import EventLog, StaleWriter, TermNotNewer
from services.master.inference_log import start_inference_log
from services.master.lease_keeper import LeaseKeeper
from services.master.decide_liveness import decide_liveness
from shared import subjects
from shared.bus import StateFollower, connect, disconnect, ensure_event_stream, scale_replicas
from shared.bus_roles import MASTER
from shared.config import CommonConfig
from shared.events import AnyEvent
from shared.facts import NodeFacts
from shared.ids import NodeId, new_instance_id
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
        nc = await connect(self.config.nats_url, f"exo-master:{self.node_id}", role=MASTER)
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
            await self.log.claim(NodeId(self.node_id), term)
            now = time.monotonic()
            # a fresh baseline: silence before the takeover was nobody's to observe (or was this master's
            # own while it was a follower, which is no better), so no node is forgotten at once
            self.last_seen = {node_id: now for node_id in self.follower.state.nodes}
            commands = CommandEndpoints(self.log, lambda: self.follower.state, self._give_up)
            service = await commands.register(self.nc, self.node_id)
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
