"""Wire formats: events (tagged JSON), commands, generation messages; and NATS subject names."""

from __future__ import annotations

import json
import re

import msgspec
import pytest

from shared import subjects
from shared.commands import (
    CommandReply,
    DeleteInstance,
    PlaceInstance,
    ReportRunner,
    ReportWorkerStarted,
    decode,
    encode,
)
from shared.events import (
    AnyEvent,
    Instance,
    InstanceAwaitingNodes,
    InstanceDeleted,
    InstancePlaced,
    LeaderElected,
    NodeFactsRecorded,
    NodeLost,
    RunnerStatusChanged,
    ShardAssignment,
    WorkerStarted,
    ModelCardRecorded,
    decode_event,
    encode_event,
)
from shared.facts import NetworkInterface, NodeFacts
from shared.models import HubRepo, ModelCard
from shared.generation import (
    CancelGeneration,
    ChatMessage,
    GenerateAccepted,
    GenerateRejected,
    GenerateReply,
    GenerateRequest,
    SamplingParams,
    TokenChunk,
)
from shared.ids import new_instance_id, new_node_id, new_request_id

FACTS = NodeFacts(
    node_id="node-a",
    hostname="host-a",
    memory_total=16 * 1024**3,
    memory_available=9 * 1024**3,
    memory_budget=4 * 1024**3,
    cpu_count=8,
    chip="Apple M4",
    backends=("ring", "jaccl"),
    interfaces=(NetworkInterface("en0", ("192.168.1.2", "fe80::1")), NetworkInterface("lo", ())),
    roles=("worker", "gateway"),
    rdma=True,
)
INSTANCE = Instance(
    "inst-1",
    "smollm2-135m",
    "tensor",
    "jaccl",
    (ShardAssignment("node-a", 0, 0, 30), ShardAssignment("node-b", 1, 0, 30)),
)

EVENTS: list[AnyEvent] = [
    NodeFactsRecorded(FACTS),
    NodeLost("node-a", reason="no facts for 31 s"),
    InstancePlaced(INSTANCE),
    InstanceDeleted("inst-1", reason="deleted on request"),
    InstanceAwaitingNodes("inst-1", "smollm2-135m", "pipeline", "ring", reason="does not fit after node-b was lost"),
    RunnerStatusChanged("inst-1", "node-a", 0, "importing", detail="gguf → mlx", progress=0.25),
    RunnerStatusChanged("inst-1", "node-b", 1, "ready"),
    LeaderElected("node-a", 7),
    WorkerStarted("node-b"),
    WorkerStarted("node-b", kept=("inst-1/1",)),
    ModelCardRecorded(ModelCard("org/tiny", "org/tiny", HubRepo("org/tiny"), 2, 64, 4, 2, 2048, 1234,
                                quantization="4-bit, group 64", files={"model.safetensors": 1234})),
]


def test_every_event_type_is_covered():
    assert {type(e) for e in EVENTS} == set(AnyEvent.__args__)


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_event_round_trip(event):
    data = encode_event(event)
    back = decode_event(data)
    assert type(back) is type(event)
    assert back == event


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_event_is_json_tagged_with_type(event):
    doc = json.loads(encode_event(event))
    assert doc["type"] == type(event).__name__


def test_event_json_is_readable():
    doc = json.loads(encode_event(InstancePlaced(INSTANCE)))
    assert doc["instance"]["model_id"] == "smollm2-135m"
    assert doc["instance"]["shards"][1] == {"node_id": "node-b", "rank": 1, "start_layer": 0, "end_layer": 30}


def test_decode_event_from_hand_written_json_uses_defaults():
    back = decode_event(b'{"type": "RunnerStatusChanged", "instance_id": "i", "node_id": "n", "rank": 0, "phase": "loading"}')
    assert back == RunnerStatusChanged("i", "n", 0, "loading", detail="", progress=None)


def test_decode_unknown_tag_raises():
    with pytest.raises(msgspec.ValidationError):
        decode_event(b'{"type": "NodeExploded", "node_id": "n"}')


def test_decode_missing_tag_raises():
    with pytest.raises(msgspec.ValidationError):
        decode_event(b'{"node_id": "n"}')


def test_decode_bad_phase_raises():
    with pytest.raises(msgspec.ValidationError):
        decode_event(b'{"type": "RunnerStatusChanged", "instance_id": "i", "node_id": "n", "rank": 0, "phase": "dancing"}')


def test_decode_garbage_raises():
    with pytest.raises(msgspec.DecodeError):
        decode_event(b"not json")


# --- commands -----------------------------------------------------------------------------------

COMMANDS = [
    PlaceInstance("smollm2-135m"),
    PlaceInstance("llama-3.3-70b", strategy="tensor", backend="jaccl", min_nodes=2, if_absent=True),
    DeleteInstance("inst-1"),
    ReportRunner("inst-1", "node-a", 0, "loading", detail="layers 0-15", progress=0.5),
    ReportRunner("inst-1", "node-a", 1, "failed"),
    ReportWorkerStarted("node-a"),
    ReportWorkerStarted("node-a", kept=("inst-1/0",)),
    CommandReply(ok=True, instance_id="inst-1"),
    CommandReply(ok=False, error="unknown model 'x'"),
]


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: type(c).__name__)
def test_command_round_trip(cmd):
    assert decode(encode(cmd), type(cmd)) == cmd
    assert msgspec.json.decode(msgspec.json.encode(cmd), type=type(cmd)) == cmd


def test_place_instance_defaults_from_minimal_json():
    cmd = decode(b'{"model_id": "smollm2-135m"}', PlaceInstance)
    assert cmd == PlaceInstance("smollm2-135m", strategy="auto", backend="auto", min_nodes=1, if_absent=False)


def test_place_instance_rejects_unknown_strategy():
    with pytest.raises(msgspec.ValidationError):
        decode(b'{"model_id": "m", "strategy": "diagonal"}', PlaceInstance)


# --- generation ---------------------------------------------------------------------------------

GENERATION = [
    GenerateRequest(
        "req-1",
        "smollm2-135m",
        SamplingParams(max_tokens=16, temperature=0.0, top_p=0.9, stop=("\n", "END"), seed=42),
        messages=(ChatMessage("system", "be brief"), ChatMessage("user", "hi ✓")),
    ),
    GenerateRequest("req-2", "smollm2-135m", SamplingParams(max_tokens=None), prompt="Once upon"),
    TokenChunk("req-1", 0, "Hel", completion_tokens=1, prompt_tokens=12),
    TokenChunk("req-1", 5, "", completion_tokens=5, prompt_tokens=12, finish_reason="length"),
    TokenChunk("req-1", 6, "", completion_tokens=5, prompt_tokens=12, finish_reason="error", error="boom"),
    CancelGeneration("req-1"),
]


@pytest.mark.parametrize("msg", GENERATION, ids=lambda m: type(m).__name__)
def test_generation_round_trip(msg):
    assert msgspec.json.decode(msgspec.json.encode(msg), type=type(msg)) == msg


@pytest.mark.parametrize(
    "reply",
    [
        GenerateAccepted("req-1", prompt_tokens=12, queue_position=2),
        GenerateRejected("req-1", "busy", "queue full", retry_after=1.5),
        GenerateRejected("req-1", "context_length_exceeded", "too long"),
    ],
    ids=lambda r: f"{type(r).__name__}",
)
def test_generate_reply_union_round_trip(reply):
    data = msgspec.json.encode(reply)
    assert json.loads(data)["type"] in ("accepted", "rejected")
    back = msgspec.json.decode(data, type=GenerateReply)
    assert type(back) is type(reply)
    assert back == reply


def test_token_chunk_rejects_unknown_finish_reason():
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(
            b'{"request_id": "r", "index": 0, "text": "", "completion_tokens": 0, "prompt_tokens": 0, "finish_reason": "bored"}',
            type=TokenChunk,
        )


# --- subjects -----------------------------------------------------------------------------------

TOKEN = re.compile(r"^[A-Za-z0-9_\-$]+$")


def assert_valid_subject(subject: str, wildcard: bool = False) -> None:
    assert isinstance(subject, str) and subject
    assert not any(c.isspace() for c in subject), subject
    tokens = subject.split(".")
    assert all(tokens), f"empty token in {subject!r}"
    for tok in tokens:
        if wildcard and tok in ("*", ">"):
            continue
        assert "*" not in tok and ">" not in tok, f"wildcard in {subject!r}"
        assert TOKEN.match(tok), f"odd token {tok!r} in {subject!r}"


PER_ID = {
    "facts": (subjects.facts, new_node_id),
    "runner_generate": (subjects.runner_generate, new_instance_id),
    "runner_cancel": (subjects.runner_cancel, new_instance_id),
    "tokens": (subjects.tokens, new_request_id),
    "node_service_worker": (lambda n: subjects.node_service(n, "worker"), new_node_id),
}


@pytest.mark.parametrize("name", sorted(PER_ID))
def test_subject_functions_give_valid_subjects(name):
    fn, make_id = PER_ID[name]
    assert_valid_subject(fn(make_id()))


@pytest.mark.parametrize("name", sorted(PER_ID))
def test_subject_functions_distinct_for_distinct_ids(name):
    fn, make_id = PER_ID[name]
    ids = {make_id() for _ in range(50)}
    assert len(ids) == 50
    assert len({fn(i) for i in ids}) == 50


def test_subjects_of_one_id_differ_between_functions():
    iid = new_instance_id()
    assert len({subjects.runner_generate(iid), subjects.runner_cancel(iid), subjects.tokens(iid), subjects.facts(iid)}) == 4


def test_node_service_distinct_per_service():
    nid = new_node_id()
    assert subjects.node_service(nid, "worker") != subjects.node_service(nid, "gateway")
    assert_valid_subject(subjects.node_service(nid, subjects.SERVICE_WORKER))


def test_facts_wildcard_matches_facts_subjects():
    wc = subjects.facts_wildcard()
    assert_valid_subject(wc, wildcard=True)
    assert wc.split(".")[-1] == "*"
    subject = subjects.facts(new_node_id())
    # a single-token wildcard: same number of tokens, same prefix
    assert len(wc.split(".")) == len(subject.split("."))
    assert wc.split(".")[:-1] == subject.split(".")[:-1]


@pytest.mark.parametrize(
    "subject",
    [
        subjects.EVENTS_SUBJECT,
        subjects.CMD_PLACE_INSTANCE,
        subjects.CMD_DELETE_INSTANCE,
        subjects.CMD_REPORT_RUNNER,
        subjects.CMD_WORKER_STARTED,
    ],
)
def test_constant_subjects_are_valid(subject):
    assert_valid_subject(subject)


def test_command_subjects_distinct():
    cmds = [
        subjects.CMD_PLACE_INSTANCE,
        subjects.CMD_DELETE_INSTANCE,
        subjects.CMD_REPORT_RUNNER,
        subjects.CMD_WORKER_STARTED,
    ]
    assert len(set(cmds)) == len(cmds)
    assert all(c.startswith(subjects.COMMAND_PREFIX + ".") for c in cmds)


def test_stream_name_is_valid_jetstream_name():
    # JetStream stream names may not contain '.', '*', '>', whitespace or path separators.
    assert re.fullmatch(r"[A-Za-z0-9_\-]+", subjects.EVENTS_STREAM)
