"""The leader lease and the fenced event log against a real nats-server (a bare one of this test's own, no
node): one campaigner wins, a killed leader's lease expires and the next wins with a larger term, a paused
leader loses its lease, and a replaced writer gets StaleWriter even where its retried decision would fit."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import nats
import pytest
from nats.aio.client import Client as NATS

from services.master.event_log import EventLog, StaleWriter, TermNotNewer
from services.master.lease import LEASE_TTL_S, SIT_OUT_S
from services.master.lease_keeper import LeaseKeeper
from shared.bus import StateFollower, ensure_event_stream
from shared.events import NodeLost

pytestmark = pytest.mark.slow


class Campaigner:
    """One master's lease keeper, with what it was told."""

    def __init__(self, nc: NATS, node_id: str) -> None:
        self.won: list[int] = []
        self.lost: list[str] = []
        self.keeper = LeaseKeeper(nc.jetstream(), node_id, on_won=self.won.append, on_lost=self.lost.append)
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(self.keeper.run(self.stop))

    def kill(self) -> None:
        """Like kill -9: no release, the key stays until it expires."""
        self.task.cancel()


async def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            pytest.fail(f"no {what} within {timeout} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def test_one_wins_and_a_killed_leader_is_replaced_with_a_larger_term(bus_url: str) -> None:
    a_nc, b_nc = await nats.connect(bus_url), await nats.connect(bus_url)
    try:
        a = Campaigner(a_nc, "node-a")
        await wait_for(lambda: a.won, 5, "leader")
        b = Campaigner(b_nc, "node-b")
        await asyncio.sleep(LEASE_TTL_S * 1.5)  # a renews all along: b never wins
        assert b.won == [] and a.lost == []
        a.kill()
        took = await wait_for(lambda: b.won, 5, "takeover")
        assert b.won[0] > a.won[0]
        assert took <= LEASE_TTL_S + 1.0, took
        b.stop.set()
        await b.task
        await b.keeper.release()
        c = Campaigner(a_nc, "node-c")
        assert await wait_for(lambda: c.won, 2, "takeover after a release") < 1.0  # no TTL to wait for
        c.kill()
    finally:
        await a_nc.close()
        await b_nc.close()


async def test_a_leader_paused_past_its_ttl_loses_the_lease(bus_url: str) -> None:
    a_nc, b_nc = await nats.connect(bus_url), await nats.connect(bus_url)
    try:
        a = Campaigner(a_nc, "node-a")
        await wait_for(lambda: a.won, 5, "leader")
        a.kill()  # paused: no renewals (its lease object is kept, as in a stopped process)
        b = Campaigner(b_nc, "node-b")
        await wait_for(lambda: b.won, 5, "takeover")
        a.task = asyncio.create_task(a.keeper.run(a.stop))  # resumed
        await wait_for(lambda: a.lost, 2, "step down")
        assert a.keeper.lease is None and b.keeper.lease is not None
        a.kill()
        b.kill()
    finally:
        await a_nc.close()
        await b_nc.close()


async def test_a_master_that_gives_up_leaves_the_next_term_to_another(bus_url: str) -> None:
    """A master that won but could not lead (its claim on the log failed) must not win again at once: in a
    cluster, a healthy master takes the lease meanwhile; alone, it tries again after SIT_OUT_S."""
    a_nc, b_nc = await nats.connect(bus_url), await nats.connect(bus_url)
    try:
        a = Campaigner(a_nc, "node-a")
        await wait_for(lambda: a.won, 5, "leader")
        a.keeper.give_up("could not lead: TimeoutError()")
        await asyncio.sleep(SIT_OUT_S / 2)
        assert len(a.won) == 1  # alone, and still sitting out
        took = await wait_for(lambda: len(a.won) == 2, SIT_OUT_S + 1, "the next campaign")
        assert took >= SIT_OUT_S / 2 - 0.5

        b = Campaigner(b_nc, "node-b")
        await asyncio.sleep(0.5)
        assert b.won == []  # a leads again
        a.keeper.give_up("could not lead: TimeoutError()")
        await wait_for(lambda: b.won, 2, "the other master taking over")
        assert b.won[0] > a.won[-1] and len(a.won) == 2
        a.kill()
        b.kill()
    finally:
        await a_nc.close()
        await b_nc.close()


@pytest.mark.parametrize("lands", ["before the delete", "after the delete"])
async def test_a_lease_given_up_while_a_renewal_is_in_flight_is_released(bus_url: str, lands: str) -> None:
    """give_up sends a delete conditional on the lease's revision; a renewal already on its way either lands
    first (the key's revision moves, that delete fails: the renewal's own revision must delete it) or after
    (the renewal fails: that is not a lost lease to report). Either way the next master wins at once."""
    a_nc, b_nc = await nats.connect(bus_url), await nats.connect(bus_url)
    try:
        a = Campaigner(a_nc, "node-a")
        await wait_for(lambda: a.won, 5, "leader")
        kv = a.keeper._kv
        assert kv is not None
        update, in_flight, answered = kv.update, asyncio.Event(), asyncio.Event()

        async def slow_update(*args: object, **kwargs: object) -> int:
            in_flight.set()
            try:
                if lands == "after the delete":
                    await asyncio.sleep(0.3)
                revision = await update(*args, **kwargs)  # type: ignore[arg-type]
                if lands == "before the delete":
                    await asyncio.sleep(0.3)
                return revision
            finally:
                answered.set()

        kv.update = slow_update  # type: ignore[method-assign]
        await asyncio.wait_for(in_flight.wait(), 2)  # the next renewal is on its way
        a.keeper.give_up("could not lead: TimeoutError()")
        b = Campaigner(b_nc, "node-b")
        took = await wait_for(lambda: b.won, LEASE_TTL_S, "the other master taking over")
        assert took < 1.0, took  # no TTL waited out
        await asyncio.wait_for(answered.wait(), 2)
        await asyncio.sleep(0.1)  # what a's keeper does with the renewal's answer
        assert a.lost == [] and len(a.won) == 1
        assert b.keeper.lease is not None and b.lost == []
        a.kill()
        b.kill()
    finally:
        await a_nc.close()
        await b_nc.close()


async def writer(nc: NATS) -> EventLog:
    js = nc.jetstream()
    await ensure_event_stream(js)
    follower = StateFollower(js)
    await follower.start()
    await follower.catch_up()
    return EventLog(js, follower)


async def test_the_event_log_accepts_only_the_latest_leader(bus_url: str) -> None:
    a_nc, b_nc = await nats.connect(bus_url), await nats.connect(bus_url)
    try:
        old, new = await writer(a_nc), await writer(b_nc)
        with pytest.raises(StaleWriter, match="not the leader"):
            await old.append(NodeLost("node-x", "never claimed"))

        await old.claim("node-a", term=3)
        await old.append(NodeLost("node-x", "written by the leader of term 3"))
        await new.claim("node-b", term=8)
        # The old leader was paused through all that. Its state is behind: the append fails on the expected
        # sequence, and the re-made decision (which would fit the fresh state) is refused by the term.
        with pytest.raises(StaleWriter, match="term 3 is not the log's leader term 8"):
            await old.append(NodeLost("node-x", "a stale leader's retry"))
        await new.append(NodeLost("node-y", "the new leader writes"))

        with pytest.raises(TermNotNewer):
            await old.claim("node-a", term=8)
        state = new._follower.state
        assert (state.leader_node_id, state.leader_term) == ("node-b", 8)
        assert not any("stale" in str(m) for m in await _reasons(b_nc))
    finally:
        await a_nc.close()
        await b_nc.close()


async def test_a_lease_sequence_behind_the_log_is_moved_past_it(bus_url: str) -> None:
    nc = await nats.connect(bus_url)
    try:
        a = Campaigner(nc, "node-a")
        await wait_for(lambda: a.won, 5, "leader")
        first = a.won[0]
        await a.keeper.advance_past(1000)  # as if the log had seen term 1000 from an older lease bucket
        await wait_for(lambda: len(a.won) == 2, 5, "a new lease")
        assert first < 1000 < a.won[1]
        a.kill()
    finally:
        await nc.close()


async def test_an_overtaken_lease_does_not_knock_out_the_newer_one(bus_url: str) -> None:
    """A master that won, stalled before claiming, and found a newer leader's term in the log must not purge
    the lease bucket (its sequence is not behind): it only lets go."""
    a_nc, b_nc = await nats.connect(bus_url), await nats.connect(bus_url)
    try:
        a = Campaigner(a_nc, "node-a")
        await wait_for(lambda: a.won, 5, "leader")
        a.kill()
        b = Campaigner(b_nc, "node-b")
        await wait_for(lambda: b.won, 5, "takeover")
        await a.keeper.advance_past(b.won[0])  # what a's master does on TermNotNewer
        await asyncio.sleep(LEASE_TTL_S)
        assert b.lost == [] and b.keeper.lease is not None and b.keeper.lease.term == b.won[0]
        b.kill()
    finally:
        await a_nc.close()
        await b_nc.close()


async def _reasons(nc: NATS) -> list[str]:
    js = nc.jetstream()
    info = await js.stream_info("EXO_EVENTS")
    return [(await js.get_msg("EXO_EVENTS", seq)).data.decode() for seq in range(1, info.state.last_seq + 1)]
