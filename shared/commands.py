"""Commands: requests to the master (NATS micro endpoints), each answered with a CommandReply."""

from __future__ import annotations

from typing import Literal, TypeVar

import msgspec

from shared.events import GroupMember, GroupRole, RunnerPhase, ShardAssignment
from shared.generation import Speculation
from shared.ids import InstanceId, NodeId
from shared.models import ModelCard


class PlaceInstance(msgspec.Struct, frozen=True):
    model_id: str
    strategy: Literal["auto", "pipeline", "tensor"] = "auto"
    backend: Literal["auto", "ring", "jaccl"] = "auto"
    min_nodes: int = 1
    if_absent: bool = False  # do nothing when an instance of the model already exists (start-up placement)
    # what the instance will serve at once: placement reserves that KV cache on its nodes when it exceeds the
    # usual headroom (services/master/memory_budget.py); None: the model's context / one sequence
    context_tokens: int | None = None
    max_batch: int | None = None
    # a card the caller derived from a hub repo or folder (no built-in card): the master records it
    card: ModelCard | None = None
    # a trifurcated group's other roles (docs/trifurcated.md): on nodes none of these uses, where it fits
    apart_from: tuple[InstanceId, ...] = ()
    group: GroupMember | None = None  # the instance's role in its group, recorded on it (InstancePlaced)
    speculative: Speculation | None = None  # the instance's default speculation, recorded on it (InstancePlaced)


class DeleteInstance(msgspec.Struct, frozen=True):
    instance_id: InstanceId


class ReportRunner(msgspec.Struct, frozen=True):
    """A worker (or its runner) reports what its runner is doing; the master records it as an event."""

    instance_id: InstanceId
    node_id: NodeId
    rank: int
    phase: RunnerPhase
    detail: str = ""
    progress: float | None = None


class ReportWorkerStarted(msgspec.Struct, frozen=True):
    node_id: NodeId
    kept: tuple[str, ...] = ()  # runner keys (instance/rank) of runners that outlived the old worker and were adopted


class PreviewPlacements(msgspec.Struct, frozen=True):
    """Every way the model could be placed now, and why each other way cannot (answered with PreviewReply)."""

    model_id: str
    min_nodes: int = 1
    max_nodes: int | None = None
    card: ModelCard | None = None  # as in PlaceInstance


class PlanPreview(msgspec.Struct, frozen=True):
    """One line of a placement preview (services/master/placement.py builds it): a plan (shards) or the reason
    there is none, and the memory per node in bytes."""

    strategy: str
    backend: str
    n_nodes: int
    feasible: bool
    shards: tuple[ShardAssignment, ...] | None = None
    reason: str | None = None
    memory_per_node: dict[str, int] = {}
    fits_now: bool = False  # beside the instances already placed (what placing it now would do)
    reason_now: str | None = None


class GroupRoleModel(msgspec.Struct, frozen=True):
    role: GroupRole
    model_id: str
    card: ModelCard | None = None  # as in PlaceInstance
    min_nodes: int = 1


class PreviewGroup(msgspec.Struct, frozen=True):
    """Where a trifurcated group's roles would go now, in this order, each apart from the ones before it
    (answered with GroupPreviewReply; what POST /instances with a group then does one role at a time)."""

    roles: tuple[GroupRoleModel, ...]


class RolePreview(msgspec.Struct, frozen=True):
    role: GroupRole
    model_id: str
    nodes: tuple[str, ...]
    strategy: str
    backend: str
    shards: tuple[ShardAssignment, ...]
    shares: str | None = None  # what it would share with the roles before it; None: nothing


class GroupPreviewReply(msgspec.Struct, frozen=True):
    ok: bool
    error: str | None = None
    roles: list[RolePreview] = []


class NodeMemory(msgspec.Struct, frozen=True):
    """One node's memory as placement sees it, in bytes: its budget (--memory, else measured free memory), what
    placed instances hold of it (per instance id), and what is left for the next one."""

    node_id: str
    total: int
    held: int
    free: int
    held_by: dict[str, int] = {}


class PreviewReply(msgspec.Struct, frozen=True):
    ok: bool
    error: str | None = None
    options: list[PlanPreview] = []
    memory: list[NodeMemory] = []


class CommandReply(msgspec.Struct, frozen=True):
    ok: bool
    error: str | None = None
    instance_id: InstanceId | None = None
    shares: str | None = None  # a placement apart_from others that could not be: what it shares with them


# The headers of a NATS micro error answer (the handler failed; micro counts it as an error in $SRV.STATS).
SERVICE_ERROR_HEADER = "Nats-Service-Error"


R = TypeVar("R", CommandReply, PreviewReply, GroupPreviewReply)


def decode_reply(data: bytes, headers: dict[str, str] | None, type_: type[R]) -> R:
    """A master's answer: the reply struct, or a failed one made from a micro error answer."""
    if headers and SERVICE_ERROR_HEADER in headers:
        return type_(ok=False, error=headers[SERVICE_ERROR_HEADER])
    return decode(data, type_)


def encode(obj: msgspec.Struct) -> bytes:
    return msgspec.json.encode(obj)


T = TypeVar("T")


def decode(data: bytes, type_: type[T]) -> T:
    return msgspec.json.decode(data, type=type_)
