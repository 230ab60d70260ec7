"""The master's write side of the event log: append with an expected last sequence, so a second
writer cannot fork the log. Decisions are re-made on the fresh state if someone else wrote first.

Fenced by the leader term: a writer appends only while the state it decided on names its own term
(LeaderElected). Together with the expected last sequence this means that an append lands only if no other
leader has claimed the log since: a master that was paused past its lease and comes back gets StaleWriter
on its first retry, however the re-made decision turns out."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

import structlog
from nats.js import JetStreamContext
from nats.js.errors import APIError

from shared.bus import WRONG_LAST_SEQUENCE, StateFollower
from shared.event_signing import signed_headers
from shared.events import AnyEvent, LeaderElected, encode_event
from shared.ids import NodeId
from shared.state import ClusterState
from shared.subjects import EVENTS_STREAM, EVENTS_SUBJECT

from services.master.lease import claim_problem, write_problem

log = structlog.get_logger()
R = TypeVar("R")


class StaleWriter(Exception):
    """This master may not write: another leader has claimed the log (or it never was the leader)."""


class TermNotNewer(StaleWriter):
    """A new lease whose term the log has already seen: the lease bucket's sequence went backwards (it was
    deleted or its server lost its data). The lease must be moved past the log's term before anyone leads."""


class EventLog:
    def __init__(self, js: JetStreamContext, follower: StateFollower, max_attempts: int = 5) -> None:
        self._js = js
        self._follower = follower
        self._lock = asyncio.Lock()
        self._max_attempts = max_attempts
        self._term: int | None = None  # the leader term this writer holds; None while it does not lead
        self._writer = ""  # this master's node id, which signs its events with the term
    @property
    def term(self) -> int | None:
        return self._term

    def step_down(self) -> None:
        """From now on every append fails (an append already on the wire may still land: it was decided on
        a state that named this writer's term, so it is ordered before any new leader's claim)."""
        self._term = None

    async def claim(self, node_id: NodeId, term: int) -> None:
        """Append LeaderElected(node_id, term); afterwards this writer may append while its term is the log's."""

        def fence(state: ClusterState) -> None:
            if problem := claim_problem(term, state.leader_term):
                raise TermNotNewer(problem)

        async with self._lock:
            await self._append_fenced(fence, lambda _state: ([LeaderElected(node_id, term)], None), term, node_id)
            self._term, self._writer = term, node_id

    async def decide_and_append(self, decide: Callable[[ClusterState], tuple[list[AnyEvent], R]]) -> R:
        def fence(state: ClusterState) -> None:
            if problem := write_problem(self._term, state.leader_term):
                raise StaleWriter(problem)

        async with self._lock:
            return await self._append_fenced(fence, decide, self._term or 0, self._writer)

    async def append(self, *events: AnyEvent) -> None:
        await self.decide_and_append(lambda _state: (list(events), None))

    async def _append_fenced(
        self,
        fence: Callable[[ClusterState], None],
        decide: Callable[[ClusterState], tuple[list[AnyEvent], R]],
        term: int,
        writer: str,
    ) -> R:
        for _ in range(self._max_attempts):
            state = self._follower.state
            fence(state)
            events, result = decide(state)
            try:
                await self._append_all(events, state.last_seq, term, writer)
                return result
            except APIError as exc:
                if exc.err_code != WRONG_LAST_SEQUENCE:
                    raise
                log.warning("event log moved under us; re-deciding", expected=state.last_seq)
                await self._follower.catch_up()
        raise StaleWriter("the event log keeps moving: another master is writing")

    async def _append_all(self, events: list[AnyEvent], expected_seq: int, term: int, writer: str) -> None:
        seq = expected_seq
        key = self._follower.key
        for event in events:
            data = encode_event(event)
            # seq + 1: the only sequence this append can land at (or it is refused), so it is signed with it
            signature = signed_headers(key, term, writer, seq + 1, data) if key is not None else {}
            ack = await self._js.publish(
                EVENTS_SUBJECT,
                data,
                stream=EVENTS_STREAM,
                headers={"Nats-Expected-Last-Sequence": str(seq), **signature},
            )
            seq = ack.seq
        if events:
            await self._follower.wait_for_seq(seq)
