"""The master's write side of the event log: append with an expected last sequence, so a second
writer cannot fork the log. Decisions are re-made on the fresh state if someone else wrote first."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

import structlog
from nats.js import JetStreamContext
from nats.js.errors import APIError

from shared.bus import WRONG_LAST_SEQUENCE, StateFollower
from shared.events import AnyEvent, encode_event
from shared.state import ClusterState
from shared.subjects import EVENTS_STREAM, EVENTS_SUBJECT

log = structlog.get_logger()
R = TypeVar("R")


class StaleWriter(Exception):
    """Another writer kept appending while this one retried: it is not the master any more."""


class EventLog:
    def __init__(self, js: JetStreamContext, follower: StateFollower, max_attempts: int = 5) -> None:
        self._js = js
        self._follower = follower
        self._lock = asyncio.Lock()
        self._max_attempts = max_attempts

    async def decide_and_append(self, decide: Callable[[ClusterState], tuple[list[AnyEvent], R]]) -> R:
        async with self._lock:
            for _ in range(self._max_attempts):
                state = self._follower.state
                events, result = decide(state)
                try:
                    await self._append_all(events, state.last_seq)
                    return result
                except APIError as exc:
                    if exc.err_code != WRONG_LAST_SEQUENCE:
                        raise
                    log.warning("event log moved under us; re-deciding", expected=state.last_seq)
                    await self._follower.catch_up()
            raise StaleWriter("the event log keeps moving: another master is writing")

    async def append(self, *events: AnyEvent) -> None:
        await self.decide_and_append(lambda _state: (list(events), None))

    async def _append_all(self, events: list[AnyEvent], expected_seq: int) -> None:
        seq = expected_seq
        for event in events:
            ack = await self._js.publish(
                EVENTS_SUBJECT,
                encode_event(event),
                stream=EVENTS_STREAM,
                headers={"Nats-Expected-Last-Sequence": str(seq)},
            )
            seq = ack.seq
        if events:
            await self._follower.wait_for_seq(seq)
