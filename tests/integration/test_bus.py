"""The bus contract on a real node: micro services answer $SRV.PING/INFO, the event log replays into the
cluster state, tokens never enter it, and a writer with a stale sequence cannot fork it."""

from __future__ import annotations

import asyncio

import msgspec
import nats
import openai
import pytest
from nats.js.errors import APIError

from shared.apply import apply
from shared.bus import WRONG_LAST_SEQUENCE
from shared.commands import CommandReply, decode_reply
from shared.events import InstancePlaced, LeaderElected, RunnerStatusChanged, decode_event
from shared.state import ClusterState
from shared.subjects import CMD_PLACE_INSTANCE, EVENTS_STREAM, EVENTS_SUBJECT
from tests.conftest import MODEL, Node, micro_replies

pytestmark = pytest.mark.slow


async def read_log(nc) -> list[tuple[int, object]]:  # noqa: ANN001
    js = nc.jetstream()
    info = await js.stream_info(EVENTS_STREAM)
    events = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(EVENTS_STREAM, seq)
        events.append((seq, decode_event(msg.data)))
    return events


async def test_every_service_is_a_micro_service(node: Node) -> None:
    nc = await nats.connect(node.nats_url)
    try:
        names = {r["name"] for r in await micro_replies(nc, "$SRV.PING")}
        assert {"exo-master", "exo-discovery", "exo-worker", "exo-gateway"} <= names
        (info,) = await micro_replies(nc, "$SRV.INFO.exo-master")
        subjects = {e["subject"] for e in info["endpoints"]}
        assert {"exo.cmd.place_instance", "exo.cmd.delete_instance", "exo.cmd.report_runner"} <= subjects
    finally:
        await nc.close()


async def test_a_failed_command_is_a_micro_error_with_its_reason(node: Node) -> None:
    """A command the master cannot handle is answered with micro's error headers (counted in $SRV.STATS), and
    the callers' decode_reply turns that into a failed reply with the reason."""
    nc = await nats.connect(node.nats_url)
    try:
        msg = await nc.request(CMD_PLACE_INSTANCE, b"{not json", timeout=10)
        reply = decode_reply(msg.data, msg.headers, CommandReply)
        assert not reply.ok and "bad PlaceInstance" in (reply.error or ""), reply
        assert msg.headers and msg.headers.get("Nats-Service-Error-Code") == "400"
        stats = await micro_replies(nc, "$SRV.STATS.exo-master")
        (place,) = [e for s in stats for e in s["endpoints"] if e["subject"] == CMD_PLACE_INSTANCE]
        assert place["num_errors"] >= 1 and "bad PlaceInstance" in place["last_error"]
    finally:
        await nc.close()


async def test_log_replays_into_the_state_and_holds_no_tokens(node: Node) -> None:
    nc = await nats.connect(node.nats_url)
    try:
        before = await read_log(nc)
        client = openai.AsyncOpenAI(base_url=node.api_url, api_key="none", timeout=300)
        r = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Count to twenty."}], max_tokens=20, temperature=0
        )
        assert r.usage.completion_tokens >= 10
        after = await read_log(nc)
        # Twenty tokens were generated; the log may have gained a node-facts event, never one per token.
        assert len(after) - len(before) < 5
        assert not any("Count to twenty" in msgspec.json.encode(e).decode() for _, e in after)

        state = ClusterState()
        for seq, event in after:
            state = apply(state, event, seq)
        assert any(isinstance(e, LeaderElected) for _, e in after)
        assert state.leader_term > 0 and node.health()["master"] == state.leader_node_id
        placed = [e.instance for _, e in after if isinstance(e, InstancePlaced)]
        assert any(i.model_id == MODEL for i in placed)
        # (an instance placed and deleted by an earlier test of the session, e.g. exo bench's, is in the log but not
        # in the state)
        ready = [i.instance_id for i in placed if i.instance_id in state.instances and state.instance_ready(i.instance_id)]
        assert ready and any(isinstance(e, RunnerStatusChanged) and e.phase == "ready" for _, e in after)
        assert node.health()["ready_instances"] == ready
    finally:
        await nc.close()


async def test_a_writer_with_a_stale_sequence_cannot_fork_the_log(node: Node) -> None:
    nc = await nats.connect(node.nats_url_as("master"))  # only a master may publish on the log at all
    try:
        js = nc.jetstream()
        last = (await js.stream_info(EVENTS_STREAM)).state.last_seq
        forged = msgspec.json.encode(LeaderElected("node-impostor", 10**9))
        with pytest.raises(APIError) as raised:
            await js.publish(EVENTS_SUBJECT, forged, headers={"Nats-Expected-Last-Sequence": str(last - 1)})
        assert raised.value.err_code == WRONG_LAST_SEQUENCE
        await asyncio.sleep(0.5)
        assert node.health()["master"] != "node-impostor"
    finally:
        await nc.close()
