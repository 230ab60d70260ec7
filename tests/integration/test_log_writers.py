"""Only the master writes the log, on a real node: every other role's bus user is refused when it publishes
on the event subject, the stream's JetStream API or the lease bucket, and the state stays as it was; an event
that does reach the log without the term leader's signature (the master's bus password leaked, a signed
event copied back, a signature of another secret or another term) is passed over by every follower, and
the master goes on writing after it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import nats
import nats.errors
import pytest

from shared.bus import StateFollower
from shared.bus_roles import MASTER, ROLES
from shared.cluster_secret import event_key
from shared.event_signing import signed_headers
from shared.events import InstanceDeleted, LeaderElected, decode_event, encode_event
from shared.subjects import EVENTS_STREAM, EVENTS_SUBJECT, LEADER_BUCKET, LEADER_KEY
from tests.conftest import MODEL, TEST_CLUSTER_SECRET, Node

pytestmark = pytest.mark.slow

# What a non-master would try: append an event, and the JetStream API that rewrites the log or the lease.
WRITES = (
    EVENTS_SUBJECT,
    f"$JS.API.STREAM.PURGE.{EVENTS_STREAM}",
    f"$JS.API.STREAM.DELETE.{EVENTS_STREAM}",
    f"$JS.API.STREAM.MSG.DELETE.{EVENTS_STREAM}",
    f"$JS.API.STREAM.UPDATE.{EVENTS_STREAM}",
    f"$JS.API.STREAM.CREATE.{EVENTS_STREAM}",
    f"$KV.{LEADER_BUCKET}.{LEADER_KEY}",
)


async def last_seq(node: Node) -> int:
    nc = await nats.connect(node.nats_url)
    try:
        return (await nc.jetstream().stream_info(EVENTS_STREAM)).state.last_seq
    finally:
        await nc.close()


async def events_after(node: Node, seq: int) -> list[bytes]:
    nc = await nats.connect(node.nats_url)
    try:
        js = nc.jetstream()
        last = (await js.stream_info(EVENTS_STREAM)).state.last_seq
        return [(await js.get_msg(EVENTS_STREAM, s)).data for s in range(seq + 1, last + 1)]
    finally:
        await nc.close()


@pytest.mark.parametrize("role", [r for r in ROLES if r != MASTER])
async def test_no_other_role_may_write_the_log(node: Node, role: str) -> None:
    before = node.health()
    assert before["ready_instances"], "the forged event must have something to take offline"
    seq = await last_seq(node)
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc).lower())

    nc = await nats.connect(node.nats_url_as(role), error_cb=on_error, allow_reconnect=False)
    try:
        forged = encode_event(InstanceDeleted(before["ready_instances"][0], "forged"))
        assert (await nc.jetstream().stream_info(EVENTS_STREAM)).state.last_seq == seq  # reading is allowed
        with pytest.raises(nats.errors.Error):  # the server drops it: no acknowledgement ever comes
            await nc.jetstream().publish(EVENTS_SUBJECT, forged, timeout=1.0)
        for subject in WRITES:
            await nc.publish(subject, forged)
        await nc.flush()
        await asyncio.sleep(0.5)
    finally:
        await nc.close()
    for subject in WRITES:
        assert any(f'permissions violation for publish to "{subject.lower()}"' in e for e in errors), (subject, errors)
    # The master may write an event of its own meanwhile (a runner's status, a node's facts: seen in CI), so the
    # check is that none of what came after is the forgery, not that nothing came.
    assert forged not in await events_after(node, seq)
    after = node.health()
    assert (after["ready_instances"], after["master"]) == (before["ready_instances"], before["master"])


async def test_an_event_not_signed_by_the_leader_is_ignored(start_node: Callable[..., Node]) -> None:
    node = start_node("forge", "--no-model")
    try:
        node.wait_until(lambda h: len(h["nodes"]) == 1, 30, "this node's facts in the state")
        placed = httpx.post(f"{node.base_url}/instances", json={"model": MODEL}, timeout=60)
        assert placed.status_code == 201, placed.text
        instance_id = placed.json()["instance_id"]
        master = node.health()["master"]
        nc = await nats.connect(node.nats_url_as(MASTER))  # a leaked master password: it may publish...
        try:
            js = nc.jetstream()
            info = await js.stream_info(EVENTS_STREAM)
            claim = next(m for m in [await js.get_msg(EVENTS_STREAM, s) for s in range(1, info.state.last_seq + 1)]
                         if isinstance(decode_event(m.data), LeaderElected))  # fmt: skip
            term = decode_event(claim.data).term
            deleted = encode_event(InstanceDeleted(instance_id, "forged"))
            forgeries = [
                (deleted, {}),  # unsigned
                (deleted, lambda seq: signed_headers(event_key("99" * 32), term, master, seq, deleted)),  # other secret
                (claim.data, lambda _seq: dict(claim.headers)),  # the leader's own claim, copied back
                (deleted, lambda seq: signed_headers(event_key(TEST_CLUSTER_SECRET), term - 1, master, seq, deleted)),
                (deleted, lambda seq: signed_headers(event_key(TEST_CLUSTER_SECRET), term, "node-other", seq, deleted)),
            ]  # fmt: skip
            for data, headers in forgeries:
                seq = (await js.stream_info(EVENTS_STREAM)).state.last_seq
                extra = headers(seq + 1) if callable(headers) else headers
                extra = {k: v for k, v in extra.items() if not k.startswith("Nats-")}
                await js.publish(EVENTS_SUBJECT, data, headers={**extra, "Nats-Expected-Last-Sequence": str(seq)})
        finally:
            await nc.close()
        await asyncio.sleep(1.5)
        listed = httpx.get(f"{node.base_url}/instances", timeout=10).json()["instances"]
        assert [i["instance_id"] for i in listed] == [instance_id]  # ...but no follower applies what it wrote
        assert node.health()["master"] == master

        reader = await nats.connect(node.nats_url)  # a follower of our own: it passes over all five
        try:
            follower = StateFollower(reader.jetstream(), key=event_key(TEST_CLUSTER_SECRET))
            await follower.start()
            await follower.catch_up()
            assert follower.refused == len(forgeries) and instance_id in follower.state.instances
            assert follower.state.leader_node_id == master
            await follower.stop()
        finally:
            await reader.close()
        # the master still appends (its expected sequence moved past the forged entries)
        assert httpx.delete(f"{node.base_url}/instances/{instance_id}", timeout=60).status_code == 200
        node.wait_until(lambda h: not h["ready_instances"], 30, "the instance deleted")
        assert httpx.get(f"{node.base_url}/instances", timeout=10).json()["instances"] == []
    finally:
        node.stop()
