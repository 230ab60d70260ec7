"""Failover on real nodes: every node runs a master, one leads. kill -9 of the leader's master mid-stream: the
stream completes (tokens go runner -> gateway, never via the master), another master takes the lease and
answers commands within 5 s, and the instance is the same one. On a single node, kill -9 of the master and of
discovery mid-stream: the stream goes on, the supervisor restarts both, and they are back and caught up.
Also: a paused leader is replaced and steps down when it resumes; a lost node's instance is placed again."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
import nats
import openai
import pytest
from nats.aio.client import Client as NATS

from shared import subjects
from shared.commands import CommandReply, PlaceInstance, decode, encode
from shared.events import AnyEvent, InstanceDeleted, InstancePlaced, decode_event
from shared.subjects import EVENTS_STREAM
from tests.conftest import MODEL, Node, micro_replies

pytestmark = pytest.mark.slow

FAILOVER_LIMIT_S = 5.0
PROMPT = [{"role": "user", "content": "Write a long story about a lighthouse keeper and a storm."}]
KILL_AT_CHUNK = 3


def node_id(node: Node) -> str:
    return (node.state_dir / "node_id").read_text().strip()


@pytest.fixture(scope="module")
def trio(start_node: Callable[..., Node]) -> Iterator[list[Node]]:
    """Three nodes on the first one's bus, all with a master; only the last has room for the model."""
    first = start_node("fo-0", "--no-model", "--memory", "1MB")
    second = start_node("fo-1", "--no-model", "--memory", "1MB", "--nats-url", first.nats_url)
    third = start_node("fo-2", "--nats-url", first.nats_url)  # places the model at start, on itself
    nodes = [first, second, third]
    first.wait_until(lambda h: len(h["nodes"]) == 3 and len(h["ready_instances"]) == 1, 60, "3 nodes, 1 instance")
    yield nodes
    for n in reversed(nodes):
        n.stop()


@pytest.fixture(scope="module")
def solo(start_node: Callable[..., Node]) -> Iterator[Node]:
    n = start_node("fo-solo")
    yield n
    n.stop()


@dataclass
class StreamOutcome:
    chunks: int = 0
    chunks_after_kill: int = 0
    finish_reason: str | None = None
    error: BaseException | None = None
    killed: threading.Event = field(default_factory=threading.Event)
    killed_at: float = 0.0


def stream_and_kill(gateway: Node, kill: Callable[[], None], outcome: StreamOutcome) -> None:
    """Stream a long completion; at the KILL_AT_CHUNK-th chunk run `kill`. Runs in a thread."""
    client = openai.OpenAI(base_url=gateway.api_url, api_key="none", timeout=120, max_retries=0)
    try:
        stream = client.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=250, stream=True)
        for chunk in stream:
            outcome.chunks += 1
            if outcome.killed.is_set():
                outcome.chunks_after_kill += 1
            if outcome.chunks == KILL_AT_CHUNK:
                kill()
                outcome.killed_at = time.monotonic()
                outcome.killed.set()
            if chunk.choices and chunk.choices[0].finish_reason:
                outcome.finish_reason = chunk.choices[0].finish_reason
    except BaseException as exc:  # noqa: BLE001 - asserted on below
        outcome.error = exc
    finally:
        outcome.killed.set()


async def first_answer(nc: NATS, since: float, timeout: float = 30.0) -> tuple[float, CommandReply]:
    """Seconds from `since` until a master answers a place command (if_absent: a write path through the
    fenced event log that adds nothing when the model is placed), and its reply."""
    payload = encode(PlaceInstance(MODEL, if_absent=True))
    while time.monotonic() - since < timeout:
        try:
            msg = await nc.request(subjects.CMD_PLACE_INSTANCE, payload, timeout=0.5)
            return time.monotonic() - since, decode(msg.data, CommandReply)
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            await asyncio.sleep(0.05)
    pytest.fail(f"no master answered within {timeout} s of the kill")


def kill_service(node: Node, service: str) -> int:
    pid = node.pids()[service]
    os.kill(pid, signal.SIGKILL)
    return pid


def wait_restarted(node: Node, service: str, old_pid: int, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid = node.pids()[service]
        except (OSError, ValueError, KeyError):
            pid = old_pid  # pids.json is being rewritten
        if pid != old_pid:
            return pid
        time.sleep(0.1)
    pytest.fail(f"{service} of {node.name} not restarted within {timeout} s\n" + node.log_tail())


async def test_killing_the_leader_mid_stream_hands_over_within_5_s(trio: list[Node]) -> None:
    first = trio[0]
    before = first.health()
    (instance_id,) = before["ready_instances"]
    (leader,) = [n for n in trio if node_id(n) == before["master"]]
    gateway = next(n for n in trio if n is not leader)  # its gateway is not touched, only the leader's master
    nc = await nats.connect(first.nats_url)
    try:
        outcome = StreamOutcome()
        killed_pid: list[int] = []
        consumer = asyncio.create_task(
            asyncio.to_thread(stream_and_kill, gateway, lambda: killed_pid.append(kill_service(leader, "master")), outcome)
        )
        await asyncio.to_thread(outcome.killed.wait, 180)
        assert killed_pid, f"the stream ended before the kill: {outcome}"
        took, reply = await first_answer(nc, since=outcome.killed_at)
        print(f"kill -9 of the leader's master -> a master answers a command: {took:.2f} s")
        assert took <= FAILOVER_LIMIT_S
        assert reply.ok and reply.instance_id == instance_id, reply  # the same instance, not a new one
        await consumer
    finally:
        await nc.close()
    assert outcome.error is None, f"the stream broke: {outcome.error!r}"
    assert outcome.finish_reason in ("length", "stop") and outcome.chunks_after_kill > 5, outcome

    after = first.wait_until(lambda h: h["leader_term"] > before["leader_term"], 10, "a new leader term")
    print(f"leader {before['master']} (term {before['leader_term']}) -> {after['master']} (term {after['leader_term']})")
    assert after["ready_instances"] == [instance_id]
    assert sorted(after["nodes"]) == sorted(before["nodes"])
    wait_restarted(leader, "master", killed_pid[0])


def test_the_gateway_carries_a_command_through_a_handover(trio: list[Node]) -> None:
    """Right after the leader's master dies no master answers for ~2 s; the gateway asks again instead of
    answering 503 (no master received the request, so asking again cannot act twice)."""
    before = trio[0].health()
    (leader,) = [n for n in trio if node_id(n) == before["master"]]
    gateway = next(n for n in trio if n is not leader)
    killed = kill_service(leader, "master")
    time.sleep(0.3)  # the bus has noticed the dead connection: a request now finds no responder, none is lost
    started = time.monotonic()
    r = httpx.get(f"{gateway.base_url}/instances/preview", params={"model": MODEL}, timeout=30)
    took = time.monotonic() - started
    assert r.status_code == 200, r.text
    assert any(o["feasible"] for o in r.json()["options"]), r.json()
    print(f"preview through a handover answered in {took:.2f} s")
    wait_restarted(leader, "master", killed)


async def test_a_paused_leader_is_replaced_and_steps_down_when_it_resumes(trio: list[Node]) -> None:
    """SIGSTOP of the leader's master past its lease: another master takes over; on SIGCONT the old one finds
    its lease gone and stops answering (its writes would be refused anyway: the log is fenced by term)."""
    first = trio[0]
    before = first.health()
    (instance_id,) = before["ready_instances"]
    (leader,) = [n for n in trio if node_id(n) == before["master"]]
    paused = leader.pids()["master"]
    nc = await nats.connect(first.nats_url)
    try:
        os.kill(paused, signal.SIGSTOP)
        try:
            took, reply = await first_answer(nc, since=time.monotonic())
        finally:
            os.kill(paused, signal.SIGCONT)
        # A stopped process keeps its subscriptions, so the server still hands it a share of the requests
        # (micro endpoints are a queue group) until it resumes: callers retry, and it takes a little longer.
        print(f"SIGSTOP of the leader's master -> another master answers: {took:.2f} s")
        assert took <= 2 * FAILOVER_LIMIT_S
        assert reply.ok and reply.instance_id == instance_id, reply
        await asyncio.sleep(3)  # the resumed master wakes up, sees its lease expired and steps down
        masters = await micro_replies(nc, "$SRV.INFO.exo-master")
        after = first.health()
        assert [m["metadata"]["node_id"] for m in masters] == [after["master"]]
        assert after["leader_term"] > before["leader_term"]
        assert leader.pids()["master"] == paused  # it stepped down by itself; nothing restarted it
    finally:
        await nc.close()


async def test_a_lost_node_s_instance_is_placed_again_elsewhere(trio: list[Node], start_node: Callable[..., Node]) -> None:
    """Last in this module: it stops the node with the model. A fourth node has room; after the node timeout
    the leader deletes the instance (the reason names the node) and places the model on the fourth node."""
    first, holder = trio[0], trio[2]
    (old_instance,) = first.health()["ready_instances"]
    spare = start_node("fo-3", "--no-model", "--nats-url", first.nats_url)
    try:
        first.wait_until(lambda h: len(h["nodes"]) == 4, 30, "4 nodes")
        lost = node_id(holder)
        holder.stop()
        after = first.wait_until(
            lambda h: lost not in h["nodes"] and h["ready_instances"] not in ([], [old_instance]), 120,
            "the instance placed again and ready",
        )  # fmt: skip
        (new_instance,) = after["ready_instances"]
        nc = await nats.connect(first.nats_url)
        try:
            events = await read_events(nc)
        finally:
            await nc.close()
        deleted = [e for e in events if isinstance(e, InstanceDeleted) and e.instance_id == old_instance]
        assert deleted and lost in deleted[0].reason, deleted
        (placed,) = [e.instance for e in events if isinstance(e, InstancePlaced) and e.instance.instance_id == new_instance]
        assert placed.model_id == MODEL and {s.node_id for s in placed.shards} == {node_id(spare)}
    finally:
        spare.stop()


async def read_events(nc: NATS) -> list[AnyEvent]:
    js = nc.jetstream()
    info = await js.stream_info(EVENTS_STREAM)
    return [
        decode_event((await js.get_msg(EVENTS_STREAM, seq)).data)
        for seq in range(info.state.first_seq, info.state.last_seq + 1)
    ]


async def test_killing_master_and_discovery_of_a_lone_node_mid_stream(solo: Node) -> None:
    before = solo.health()
    (instance_id,) = before["ready_instances"]
    me = node_id(solo)
    nc = await nats.connect(solo.nats_url)
    try:
        outcome = StreamOutcome()
        killed: dict[str, int] = {}

        def kill() -> None:
            killed["master"] = kill_service(solo, "master")
            killed["discovery"] = kill_service(solo, "discovery")

        consumer = asyncio.create_task(asyncio.to_thread(stream_and_kill, solo, kill, outcome))
        await asyncio.to_thread(outcome.killed.wait, 180)
        assert killed, f"the stream ended before the kill: {outcome}"
        took, reply = await first_answer(nc, since=outcome.killed_at)
        print(f"kill -9 of a lone node's master -> restarted and answering: {took:.2f} s")
        assert reply.ok and reply.instance_id == instance_id, reply
        facts = await nc.subscribe(subjects.facts(me))
        await asyncio.to_thread(wait_restarted, solo, "discovery", killed["discovery"])
        await facts.next_msg(timeout=10)  # the new discovery publishes this node's facts again
        await consumer
    finally:
        await nc.close()
    assert outcome.error is None, f"the stream broke: {outcome.error!r}"
    assert outcome.finish_reason in ("length", "stop") and outcome.chunks_after_kill > 5, outcome
    await asyncio.to_thread(wait_restarted, solo, "master", killed["master"])
    # the restarted master replayed the log and claimed it (a new term), the node was never forgotten
    after = solo.wait_until(lambda h: h["leader_term"] > before["leader_term"], 10, "a new leader term")
    assert after["master"] == me and after["nodes"] == [me]
    assert after["ready_instances"] == [instance_id]
