"""The inference log on a real node: every request through the official `openai` client becomes exactly one row
of `exo_inferences` (read back with `exo sql`, `exo log` and GET /v1/inferences), /metrics moves with a real
request, a master killed with -9 while records wait loses none and duplicates none, and a new leader on another
node has every record in its own lake."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import duckdb
import httpx
import msgspec
import nats
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.master.inference_log import consumer_name
from services.master.lake import CATALOG_FILE, Lake
from shared import subjects
from shared.inference_log import InferenceRecord
from tests.conftest import MODEL, REPO_ROOT, Node, wait_for

pytestmark = pytest.mark.slow

WRITE_TIMEOUT_S = 60.0
SEED_SQL = "SELECT model, AVG(latency_ms) FROM exo_inferences GROUP BY model"


@pytest.fixture(scope="module")
def log_node(start_node) -> Iterator[Node]:  # noqa: ANN001 - the conftest factory
    """A node of this module's own: its log counts only these tests' requests, and one test kills its master."""
    node = start_node("inference-log")
    yield node
    node.stop()


@pytest.fixture(scope="module")
def client(log_node: Node) -> openai.OpenAI:
    return openai.OpenAI(base_url=log_node.api_url, api_key="not-needed", timeout=120.0, max_retries=0)


def exo(node: Node, *args: str) -> subprocess.CompletedProcess:
    """The `exo` CLI against the node's bus (credentials from its state dir, as a user on that machine has)."""
    argv = [sys.executable, "-m", "services.node.cli", *args, "--nats-url", node.nats_url_without_credentials,
            "--state-dir", str(node.state_dir)]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "EXO_CLUSTER_SECRET"}
    return subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)


def sql(node: Node, query: str) -> list[dict]:
    done = exo(node, "sql", "--json", query)
    assert done.returncode == 0, f"exo sql failed: {done.stderr}"
    return json.loads(done.stdout)


def row_count(node: Node) -> int:
    return sql(node, "SELECT count(*) AS n FROM exo_inferences")[0]["n"]


def wait_for_rows(node: Node, expected: int) -> None:
    wait_for(lambda: row_count(node) >= expected, WRITE_TIMEOUT_S, f"{expected} rows in exo_inferences", node)
    time.sleep(2.5)  # anything more (a duplicate) would have been written by now: two batches' time
    assert row_count(node) == expected


def rows_by_id(node: Node, ids: list[str]) -> dict[str, dict]:
    quoted = ", ".join(f"'{i}'" for i in ids)
    return {r["id"]: r for r in sql(node, f"SELECT * FROM exo_inferences WHERE id IN ({quoted})")}


def test_every_request_is_one_row(log_node: Node, client: openai.OpenAI) -> None:
    before = row_count(log_node)
    question = [{"role": "user", "content": "What is the capital of France?"}]
    chat = client.chat.completions.create(model=MODEL, messages=question, max_tokens=12, temperature=0)
    text = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=6, seed=7, temperature=0.8)
    streamed = list(client.chat.completions.create(model=MODEL, messages=question, max_tokens=5, temperature=0,
                                                   stream=True, stream_options={"include_usage": True}))  # fmt: skip
    with pytest.raises(openai.BadRequestError):  # refused by the runner's admission: recorded too (it reached one)
        client.completions.create(model=MODEL, prompt="", max_tokens=5)
    with pytest.raises(openai.NotFoundError):  # no such model: no inference ran, so no row
        client.chat.completions.create(model="no-such-model", messages=question, max_tokens=5)

    wait_for_rows(log_node, before + 4)
    rows = rows_by_id(log_node, [chat.id, text.id, streamed[0].id])
    assert len(rows) == 3
    for response, api, stream in ((chat, "chat.completions", False), (text, "completions", False)):
        row = rows[response.id]
        assert (row["api"], row["model"], row["status"], row["stream"], row["trit"]) == (api, MODEL, 200, stream, 0)
        assert row["prompt_tokens"] == response.usage.prompt_tokens > 0
        assert row["completion_tokens"] == response.usage.completion_tokens > 0
        assert row["finish_reason"] == response.choices[0].finish_reason
        assert row["latency_ms"] >= row["time_to_first_token_ms"] > 0
        assert (row["devices"], row["strategy"], row["error"]) == (1, "pipeline", None)
        assert row["instance"].startswith("inst-")
    assert rows[chat.id]["seed"] is None  # greedy
    assert rows[text.id]["seed"] == 7
    row = rows[streamed[0].id]
    assert (row["api"], row["stream"], row["status"]) == ("chat.completions", True, 200)
    assert row["completion_tokens"] == streamed[-1].usage.completion_tokens == 5
    refused = sql(log_node, "SELECT * FROM exo_inferences WHERE status = 400")
    assert len(refused) == 1 and refused[0]["finish_reason"] is None and "empty" in refused[0]["error"]

    # the seed's query, `exo log` and the gateway's JSON say the same
    averages = sql(log_node, SEED_SQL)
    assert [r["model"] for r in averages] == [MODEL] and averages[0]["avg(latency_ms)"] > 0
    shown = exo(log_node, "log", "-n", "4")
    assert shown.returncode == 0, shown.stderr
    assert all(i in shown.stdout for i in (chat.id, text.id, streamed[0].id)) and len(shown.stdout.splitlines()) == 5
    listed = httpx.get(f"{log_node.api_url}/inferences", params={"limit": 4}, timeout=30).json()["data"]
    assert {r["id"] for r in listed} >= {chat.id, text.id, streamed[0].id}


def test_writes_are_refused(log_node: Node) -> None:
    done = exo(log_node, "sql", "DELETE FROM exo_inferences")
    assert done.returncode == 1
    assert "only read-only queries" in done.stderr
    assert row_count(log_node) > 0


def metric_values(node: Node) -> dict[tuple[str, tuple], float]:
    text = httpx.get(f"{node.base_url}/metrics", timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}  # fmt: skip


def test_metrics_move_with_a_request(log_node: Node, client: openai.OpenAI) -> None:
    before = metric_values(log_node)
    response = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=6)
    after = metric_values(log_node)

    def moved(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after[key] - before.get(key, 0.0)

    assert moved("exo_requests_total", api="chat.completions", model=MODEL, status="200") == 1
    assert moved("exo_tokens_total", model=MODEL, kind="prompt") == response.usage.prompt_tokens
    assert moved("exo_tokens_total", model=MODEL, kind="completion") == response.usage.completion_tokens
    assert moved("exo_time_to_first_token_seconds_count", model=MODEL) == 1
    assert moved("exo_inter_token_seconds_count", model=MODEL) >= 1
    assert moved("exo_http_responses_total", method="POST", route="/v1/chat/completions", status="200") == 1
    assert after[("exo_requests_in_flight", ())] == 0 and after[("exo_requests_waiting", ())] == 0
    health = log_node.health()
    assert after[("exo_leader_term", ())] == health["leader_term"]
    node_id = health["nodes"][0]
    memory = [v for (name, labels), v in after.items() if name == "exo_node_memory_total_bytes" and ("node", node_id) in labels]
    assert memory and memory[0] > 0
    assert ("exo_runner_restarts_total", ()) in after


async def pending_records(node: Node, node_id: str) -> int:
    nc = await nats.connect(node.nats_url_as("master"))  # the stream's consumers: a master's rights
    try:
        info = await nc.jetstream().consumer_info(subjects.INFERENCES_STREAM, consumer_name(node_id))
        return info.num_pending + info.num_ack_pending
    finally:
        await nc.close()


async def publish_again(node: Node, count: int) -> None:
    """The stream's last `count` records published once more, as a redelivery would bring them (no Nats-Msg-Id:
    JetStream's own duplicate window must not be what saves us)."""
    nc = await nats.connect(node.nats_url_as("master"))  # the stream's consumers: a master's rights
    try:
        js = nc.jetstream()
        last = (await js.stream_info(subjects.INFERENCES_STREAM)).state.last_seq
        for seq in range(last - count + 1, last + 1):
            msg = await js.get_msg(subjects.INFERENCES_STREAM, seq)
            await js.publish(subjects.INFERENCES_SUBJECT, msg.data, stream=subjects.INFERENCES_STREAM)
    finally:
        await nc.close()


def test_a_killed_master_loses_no_record_and_duplicates_none(log_node: Node, client: openai.OpenAI) -> None:
    # Judged by ids, not by the table's row count: under load an earlier test's record can still be on its way
    # (published after its response, written in the next batch) and land in between.
    node_id = log_node.health()["master"]
    term = log_node.health()["leader_term"]
    # Hold the lake as a duckdb shell would: the master cannot write, so the records wait in the stream
    holder = duckdb.connect(str(log_node.state_dir / "inferences" / CATALOG_FILE))
    try:
        ids = [client.completions.create(model=MODEL, prompt=f"Count to {n}:", max_tokens=4).id for n in range(3)]
        wait_for(lambda: asyncio.run(pending_records(log_node, node_id)) >= 3, 30, "3 records waiting", log_node)
        old_master = log_node.pids()["master"]
        os.kill(old_master, signal.SIGKILL)
        wait_for(lambda: log_node.pids().get("master") not in (None, old_master), 60, "a restarted master", log_node)
        wait_for(lambda: log_node.health()["leader_term"] > term, 60, "the restarted master leading", log_node)
        assert "held by another process" in exo(log_node, "sql", "SELECT 1").stderr
    finally:
        holder.close()
    wait_for(lambda: set(rows_by_id(log_node, ids)) == set(ids), WRITE_TIMEOUT_S, "the 3 records written", log_node)
    time.sleep(2.5)  # a duplicate would have been written by now: two batches' time
    assert sql(log_node, "SELECT id FROM exo_inferences GROUP BY id HAVING count(*) > 1") == []

    asyncio.run(publish_again(log_node, 3))
    wait_for(lambda: asyncio.run(pending_records(log_node, node_id)) == 0, 30, "the copies consumed", log_node)
    assert sql(log_node, "SELECT id FROM exo_inferences GROUP BY id HAVING count(*) > 1") == []
    assert len(sql(log_node, f"SELECT id FROM exo_inferences WHERE id IN ({', '.join(repr(i) for i in ids)})")) == 3


def test_records_are_msgspec_json_on_the_stream(log_node: Node) -> None:
    """What `nats sub exo.inferences.record` shows: the record as JSON (the log's one contract)."""

    async def last_record() -> dict:
        nc = await nats.connect(log_node.nats_url_as("master"))  # the stream's consumers: a master's rights
        try:
            js = nc.jetstream()
            last = (await js.stream_info(subjects.INFERENCES_STREAM)).state.last_seq
            return msgspec.json.decode((await js.get_msg(subjects.INFERENCES_STREAM, last)).data)
        finally:
            await nc.close()

    record = asyncio.run(last_record())
    assert record["model"] == MODEL and record["trit"] == 0 and record["id"].startswith(("cmpl-", "chatcmpl-"))


def handover_record(n: int) -> InferenceRecord:
    return InferenceRecord(
        id=f"cmpl-handover-{n}", timestamp=time.time(), api="completions", model=MODEL, instance="inst-x",
        status=200, finish_reason="stop", error=None, prompt_tokens=3, cached_tokens=0, completion_tokens=4,
        latency_ms=50.0, time_to_first_token_ms=10.0, decode_tokens_per_s=30.0, devices=1, strategy="pipeline",
        seed=None,
    )  # fmt: skip


async def publish_records(node: Node, records: list[InferenceRecord]) -> None:
    """As a gateway does (records published here stand for requests: these two nodes place no model)."""
    nc = await nats.connect(node.nats_url_as("gateway"))  # a gateway's own rights: publish records, nothing more
    try:
        for record in records:
            await nc.jetstream().publish(subjects.INFERENCES_SUBJECT, msgspec.json.encode(record),
                                         stream=subjects.INFERENCES_STREAM, headers={"Nats-Msg-Id": record.id})  # fmt: skip
    finally:
        await nc.close()


def test_a_new_leader_s_lake_holds_every_record(start_node) -> None:  # noqa: ANN001 - the conftest factory
    """Two nodes on one bus: the leader writes 3 records; paused, then killed, it loses the lease to the other
    master, whose lake (on its own disk) fills from the stream: the 3 and 2 more, once each."""
    a = start_node("il-a", "--no-model")
    b = start_node("il-b", "--no-model", "--nats-url", a.nats_url)
    try:
        a.wait_until(lambda h: len(h["nodes"]) == 2, 60, "2 nodes")
        leader_id, term = a.health()["master"], a.health()["leader_term"]
        (leader,) = [n for n in (a, b) if (n.state_dir / "node_id").read_text().strip() == leader_id]
        (other,) = [n for n in (a, b) if n is not leader]
        asyncio.run(publish_records(a, [handover_record(n) for n in range(3)]))
        wait_for_rows(a, 3)

        paused = leader.pids()["master"]
        os.kill(paused, signal.SIGSTOP)
        try:
            wait_for(lambda: a.health()["leader_term"] > term, 60, "another master leading", a)
        finally:
            os.kill(paused, signal.SIGKILL)  # its endpoints go with its connection (a stopped one would take queries)
        assert a.health()["master"] != leader_id
        asyncio.run(publish_records(a, [handover_record(n) for n in range(3, 5)]))
        wait_for_rows(a, 5)
        assert sql(a, "SELECT id FROM exo_inferences GROUP BY id HAVING count(*) > 1") == []
        assert (other.state_dir / "inferences" / CATALOG_FILE).exists()
        old_lake = Lake(leader.state_dir / "inferences")  # the old leader's lake: what it wrote while it led
        try:
            assert old_lake.query("SELECT count(*) FROM exo_inferences", 10).rows == ((3,),)
        finally:
            old_lake.close()
    finally:
        b.stop()
        a.stop()
