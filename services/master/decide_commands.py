"""What the master writes in answer to a command or an observation. Pure: state in, events out."""

from __future__ import annotations

import msgspec

from shared.commands import (
    CommandReply,
    DeleteInstance,
    GroupPreviewReply,
    PlaceInstance,
    PreviewGroup,
    PreviewPlacements,
    PreviewReply,
    ReportRunner,
    ReportWorkerStarted,
    RolePreview,
)
from shared.events import (
    AnyEvent,
    InstanceDeleted,
    GroupMember,
    InstancePlaced,
    ModelCardRecorded,
    NodeFactsRecorded,
    NodeLost,
    RunnerStatusChanged,
    WorkerStarted,
)
from shared.facts import Link, NodeFacts
from shared.ids import InstanceId
from shared.models import ModelCard, builtin_card
from shared.state import ClusterState

from services.master.group_placement import place_apart, place_group
from services.master.memory_budget import node_memory
from services.master.placement import NoPlacement, preview, worker_nodes

Decision = tuple[list[AnyEvent], CommandReply]

# Memory readings move all the time; only a change this large is worth an event.
MEMORY_CHANGE_WORTH_RECORDING = 0.10
PROGRESS_STEP_WORTH_RECORDING = 0.05
# Link latencies jitter on every probe; only a move this large (both absolute and relative) is worth an event.
LINK_CHANGE_WORTH_RECORDING_MS = 2.0
LINK_CHANGE_WORTH_RECORDING_RATIO = 0.5


def node_count_problem(min_nodes: int, max_nodes: int | None = None) -> str | None:
    """Commands come from any client of the bus, not only the gateway, which checks the same."""
    if min_nodes < 1:
        return f"min_nodes must be at least 1, not {min_nodes}"
    if max_nodes is not None and max_nodes < min_nodes:
        return f"max_nodes ({max_nodes}) must be at least min_nodes ({min_nodes})"
    return None


def decide_place(state: ClusterState, cmd: PlaceInstance, instance_id: InstanceId) -> Decision:
    if problem := node_count_problem(cmd.min_nodes):
        return [], CommandReply(ok=False, error=problem)
    card = command_card(state, cmd.model_id, cmd.card)
    if isinstance(card, str):
        return [], CommandReply(ok=False, error=card)
    if cmd.if_absent and (existing := state.instances_of(card.model_id)):
        return [], CommandReply(ok=True, instance_id=existing[0].instance_id)
    if cmd.group is not None and (problem := group_problem(state, cmd.group)):
        return [], CommandReply(ok=False, error=problem)
    request = msgspec.structs.replace(cmd, model_id=card.model_id, card=None)
    placed = place_apart(state, request, card, instance_id, cmd.apart_from)
    if isinstance(placed, NoPlacement):
        return [], CommandReply(ok=False, error=placed.reason)
    recorded: list[AnyEvent] = [] if card_known(state, card) else [ModelCardRecorded(card)]
    instance = msgspec.structs.replace(placed.instance, group=cmd.group, speculative=cmd.speculative)
    return [*recorded, InstancePlaced(instance)], CommandReply(ok=True, instance_id=instance_id, shares=placed.shares)


def group_problem(state: ClusterState, group: GroupMember) -> str | None:
    """A group's main stands alone; its validator or draft names a main instance that exists."""
    if group.role == "main":
        return "a group's main instance names no main" if group.main is not None else None
    main = state.instances.get(group.main) if group.main is not None else None
    if main is None or main.group is None or main.group.role != "main":
        return f"the {group.role} of a group must name its main instance, not {group.main!r}"
    return None


def decide_preview_group(state: ClusterState, cmd: PreviewGroup) -> GroupPreviewReply:
    """Where each role would go now (place_group, each role's instance id its role's name: what it shares reads
    "shares node-a with main")."""
    roles = []
    for role in cmd.roles:
        if problem := node_count_problem(role.min_nodes):
            return GroupPreviewReply(ok=False, error=f"the {role.role}: {problem}")
        card = command_card(state, role.model_id, role.card)
        if isinstance(card, str):
            return GroupPreviewReply(ok=False, error=f"the {role.role}: {card}")
        roles.append((role.role, PlaceInstance(card.model_id, min_nodes=role.min_nodes), card, role.role))
    placed = place_group(state, roles)
    if isinstance(placed, NoPlacement):
        return GroupPreviewReply(ok=False, error=placed.reason)
    return GroupPreviewReply(ok=True, roles=[
        RolePreview(role, p.instance.model_id, tuple(sorted({s.node_id for s in p.instance.shards})),  # type: ignore[arg-type]
                    p.instance.strategy, p.instance.backend, p.instance.shards, p.shares)
        for role, p in placed
    ])  # fmt: skip


def command_card(state: ClusterState, model_id: str, given: ModelCard | None) -> ModelCard | str:
    """The card a command means: built in or recorded by name, else the one it carries (derived by the
    gateway from the repo's config.json); or why there is none."""
    known = builtin_card(model_id) or state.models.get(model_id)
    if known is not None:
        return known
    if given is None:
        return f"unknown model {model_id!r}"
    if given.model_id != model_id:
        return f"the card given is for {given.model_id!r}, not {model_id!r}"
    if given.n_layers < 1 or given.storage_bytes < 0 or given.n_heads < 1:
        return f"the card given for {model_id!r} is not valid (layers, heads, bytes)"
    return given


def card_known(state: ClusterState, card: ModelCard) -> bool:
    return builtin_card(card.model_id) is not None or state.models.get(card.model_id) == card


def decide_delete(state: ClusterState, cmd: DeleteInstance) -> Decision:
    """Delete an instance, or stop waiting for one that was lost with a node (state.waiting)."""
    if cmd.instance_id not in state.instances and cmd.instance_id not in state.waiting:
        return [], CommandReply(ok=False, error=f"no instance {cmd.instance_id!r}")
    return [InstanceDeleted(cmd.instance_id, reason="deleted on request")], CommandReply(
        ok=True, instance_id=cmd.instance_id
    )


def decide_report(state: ClusterState, cmd: ReportRunner) -> Decision:
    instance = state.instances.get(cmd.instance_id)
    if instance is None:
        return [], CommandReply(ok=False, error=f"no instance {cmd.instance_id!r}")
    if not any(s.rank == cmd.rank and s.node_id == cmd.node_id for s in instance.shards):
        return [], CommandReply(ok=False, error=f"rank {cmd.rank} of {cmd.instance_id} is not on {cmd.node_id}")
    current = state.runner_status(cmd.instance_id, cmd.rank)
    if current is not None and not _report_is_news(current, cmd):
        return [], CommandReply(ok=True, instance_id=cmd.instance_id)
    event = RunnerStatusChanged(cmd.instance_id, cmd.node_id, cmd.rank, cmd.phase, cmd.detail, cmd.progress)
    return [event], CommandReply(ok=True, instance_id=cmd.instance_id)


def _report_is_news(current: RunnerStatusChanged, cmd: ReportRunner) -> bool:
    if current.phase != cmd.phase:
        return True
    if cmd.progress is not None and current.progress is not None:
        step = abs(cmd.progress - current.progress)
        # the epsilon: 0.15 - 0.10 is 0.0499999... in floating point, and that step counts
        return step >= PROGRESS_STEP_WORTH_RECORDING - 1e-9 or (cmd.progress >= 1.0 > current.progress)
    return current.detail != cmd.detail or current.progress != cmd.progress


def decide_worker_started(state: ClusterState, cmd: ReportWorkerStarted) -> Decision:
    """Forget what the node's runners said before, except for the runners the new worker adopted."""
    kept = set(cmd.kept)
    stale = any(r.node_id == cmd.node_id and key not in kept for key, r in state.runners.items())
    return ([WorkerStarted(cmd.node_id, kept=cmd.kept)] if stale else []), CommandReply(ok=True)


def decide_preview(state: ClusterState, cmd: PreviewPlacements) -> PreviewReply:
    if problem := node_count_problem(cmd.min_nodes, cmd.max_nodes):
        return PreviewReply(ok=False, error=problem)
    card = command_card(state, cmd.model_id, cmd.card)
    if isinstance(card, str):
        return PreviewReply(ok=False, error=card)
    options = preview(state, card, min_nodes=cmd.min_nodes, max_nodes=cmd.max_nodes)
    return PreviewReply(
        ok=True,
        options=options,
        memory=node_memory(state, worker_nodes(state)),
    )


def facts_event(state: ClusterState, facts: NodeFacts) -> NodeFactsRecorded | None:
    known = state.nodes.get(facts.node_id)
    if known is None:
        return NodeFactsRecorded(facts)
    ignoring_jitter = {"memory_available": 0, "links": ()}
    same_otherwise = msgspec.structs.replace(known, **ignoring_jitter) == msgspec.structs.replace(
        facts, **ignoring_jitter
    )
    moved = abs(facts.memory_available - known.memory_available) / max(known.memory_total, 1)
    if same_otherwise and moved < MEMORY_CHANGE_WORTH_RECORDING and not links_moved(known.links, facts.links):
        return None
    return NodeFactsRecorded(facts)


def links_moved(known: tuple[Link, ...], seen: tuple[Link, ...]) -> bool:
    """A peer gained or lost, or a latency that moved by more than the jitter of a healthy link."""
    before = {link.peer_id: link.latency_ms for link in known}
    after = {link.peer_id: link.latency_ms for link in seen}
    if before.keys() != after.keys():
        return True
    for peer_id, old in before.items():
        delta = abs(after[peer_id] - old)
        if delta > LINK_CHANGE_WORTH_RECORDING_MS and delta > LINK_CHANGE_WORTH_RECORDING_RATIO * max(old, 0.1):
            return True
    return False


def nodes_to_forget(state: ClusterState, last_seen: dict[str, float], now: float, timeout: float) -> list[NodeLost]:
    """Nodes whose discovery has been silent for `timeout` seconds. `last_seen` must hold a start-up
    baseline for every known node, so a master that just started does not forget everyone at once."""
    return [
        NodeLost(node_id, reason=f"no facts for {now - last_seen[node_id]:.0f} s")
        for node_id in state.nodes
        if now - last_seen.get(node_id, now) > timeout
    ]
