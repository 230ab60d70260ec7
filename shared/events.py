"""Events: past-tense facts in the cluster's log. Only the master writes them; every service replays them.

JSON on the wire (readable with `nats sub exo.events`), tagged by type name.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from shared.facts import NodeFacts
from shared.generation import Speculation
from shared.ids import InstanceId, NodeId
from shared.models import ModelCard

RunnerPhase = Literal["importing", "loading", "ready", "failed", "stopped"]


class ShardAssignment(msgspec.Struct, frozen=True):
    node_id: NodeId
    rank: int
    start_layer: int  # inclusive
    end_layer: int  # exclusive


GroupRole = Literal["validator", "main", "draft"]
GROUP_ROLES: tuple[GroupRole, ...] = ("main", "validator", "draft")  # the order a group is placed in
GROUP_TRITS: dict[str, int] = {"validator": -1, "main": 0, "draft": 1}


class GroupMember(msgspec.Struct, frozen=True):
    """An instance's role in a trifurcated group (docs/trifurcated.md). The main instance (0) carries the group's
    settings, the defaults of a `"trifurcated": true` request for its model; its validator (-1) and draft (+1)
    instances name it in `main`."""

    role: GroupRole
    main: InstanceId | None = None  # the group's main instance; None on the main itself
    # the main's (None on the others): the validator model, the draft ("ngram", "none" or a model), the policy
    validator: str | None = None
    draft: str | None = None
    policy: Literal["block", "annotate"] | None = None


class Instance(msgspec.Struct, frozen=True):
    instance_id: InstanceId
    model_id: str
    strategy: Literal["pipeline", "tensor"]
    backend: Literal["ring", "jaccl"]
    shards: tuple[ShardAssignment, ...]
    memory_per_node: dict[str, int] = {}  # bytes placement reserved on each node (weights, KV cache, headroom)
    group: GroupMember | None = None  # its role in a trifurcated group; None: on its own
    # the instance's speculative decoding for requests that ask none themselves (docs/speculative.md); None: off
    speculative: Speculation | None = None

    @property
    def world_size(self) -> int:
        return len(self.shards)


class Event(msgspec.Struct, frozen=True, tag=True):
    pass


class NodeFactsRecorded(Event, frozen=True):
    facts: NodeFacts


class NodeLost(Event, frozen=True):
    node_id: NodeId
    reason: str


class InstancePlaced(Event, frozen=True):
    instance: Instance


class InstanceDeleted(Event, frozen=True):
    instance_id: InstanceId
    reason: str


class RunnerStatusChanged(Event, frozen=True):
    instance_id: InstanceId
    node_id: NodeId
    rank: int
    phase: RunnerPhase
    detail: str = ""
    progress: float | None = None  # 0..1 for long phases (importing, loading)


class LeaderElected(Event, frozen=True):
    """A master won the leader lease and from now on is the only one allowed to append.

    `term` is the KV revision at which it created its lease: strictly increasing from one leader to the
    next, so every service can tell the current leader from a stale one, and the event log refuses a writer
    whose term is not the latest (fencing)."""

    node_id: NodeId
    term: int


class WorkerStarted(Event, frozen=True):
    """A node's worker (re)started: whatever its runners said before is stale, except for the runners it
    adopted (`kept`, runner keys instance/rank): they outlived the old worker and still serve."""

    node_id: NodeId
    kept: tuple[str, ...] = ()


class InstanceAwaitingNodes(Event, frozen=True):
    """An instance deleted with a lost node did not fit on the nodes that were left. Its model waits, keyed by
    the old instance id, and the leader places it again, with the strategy and backend it had if they still
    fit, as soon as it fits anywhere (the node came back, or another joined). The wait ends with the next
    InstancePlaced of the model (by the leader or anyone), or with InstanceDeleted of the old id (the user
    gave up on it: DELETE /instances/<old id>)."""

    instance_id: InstanceId
    model_id: str
    strategy: Literal["pipeline", "tensor"]
    backend: Literal["ring", "jaccl"]
    reason: str
    group: GroupMember | None = None  # its role in a trifurcated group, kept for the instance placed again
    speculative: Speculation | None = None  # its default speculation, kept too


class ModelCardRecorded(Event, frozen=True):
    """A card derived from a hub repo's or a folder's config.json (by the gateway or `exo --model`, which can
    reach the hub), so every service, the master's placement included, knows a model nobody wrote a card for."""

    card: ModelCard


AnyEvent = (
    NodeFactsRecorded | NodeLost | InstancePlaced | InstanceDeleted | InstanceAwaitingNodes | RunnerStatusChanged
    | LeaderElected | WorkerStarted | ModelCardRecorded
)

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(AnyEvent)


def encode_event(event: AnyEvent) -> bytes:
    return _encoder.encode(event)


def decode_event(data: bytes) -> AnyEvent:
    return _decoder.decode(data)
