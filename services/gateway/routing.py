"""Which instance serves a request, and what a client is told when none can. Pure: decided on the followed state.

What clients read is short: a runner's status detail can hold its last log lines (other clients' request ids
and token counts); only its first clause reaches a client, and the whole detail stays in GET /instances and
the logs."""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from shared.generation import Speculation
from shared.ids import InstanceId
from shared.models import ToolCallFormat, UnknownModel, get_card
from shared.state import ClusterState

from services.gateway.errors import OpenAIError, bad_request, unavailable

SHORT_REASON_CHARS = 120
NO_DRAFT = "none"  # speculative.draft "none": no speculation, not even the instance's default


def pick_instance(state: ClusterState, model_id: str, turn: int, avoid: str | None = None) -> str:
    """A ready instance of the model (not `avoid`), round robin; otherwise a 503 that says why none is ready."""
    instances = state.instances_of(model_id)
    ready = sorted(i.instance_id for i in instances if state.instance_ready(i.instance_id) and i.instance_id != avoid)
    if ready:
        return ready[turn % len(ready)]
    if not instances:
        raise unavailable(
            f"no instance of {model_id} is placed; create one with POST /instances "
            f'{{"model": "{model_id}"}} or start exo with --model {model_id}'
        )
    raise not_ready(state, instances[0].instance_id)


def tool_format(state: ClusterState, model: str) -> ToolCallFormat:
    """The model's own tool-call syntax, from its card: "none" for a name with no card (routing answers for it)."""
    try:
        return get_card(model, state.models).tool_call_format
    except UnknownModel:
        return "none"


def draft_named_instance(state: ClusterState, speculation: Speculation | None) -> str | None:
    """The instance a draft names by its id (the main request must go to another one); None otherwise."""
    if speculation is None or speculation.draft in ("ngram", NO_DRAFT):
        return None
    return speculation.draft if InstanceId(speculation.draft) in state.instances else None


def unknown_draft(draft: str) -> OpenAIError:
    return bad_request(f"unknown draft {draft!r}: \"ngram\" (prompt lookup), a model or an instance id",
                       param="speculative.draft")


def resolve_draft(state: ClusterState, speculation: Speculation | None, main_instance: str) -> Speculation | None:
    """A draft model's speculation with the instance that drafts (a ready one-rank instance of the draft model, or
    the instance the draft names, never the main one); a 400 naming speculative.draft when there is none."""
    if speculation is None or speculation.draft == "ngram":
        return speculation
    draft = speculation.draft
    if InstanceId(draft) in state.instances:
        candidates = [state.instances[InstanceId(draft)]]
    else:
        try:
            model_id = get_card(draft, state.models).model_id
        except UnknownModel:
            raise unknown_draft(draft) from None
        candidates = state.instances_of(model_id)
    usable = sorted(
        i.instance_id for i in candidates
        if i.instance_id != main_instance and len(i.shards) == 1 and state.instance_ready(i.instance_id)
    )  # fmt: skip
    if not usable:
        raise bad_request(
            f"no ready one-node instance of the draft {draft!r} other than the main one ({main_instance}); place one "
            f'with POST /instances {{"model": "{draft}"}}', param="speculative.draft",
        )  # fmt: skip
    return msgspec.structs.replace(speculation, draft_instance=usable[0])


def default_speculation(state: ClusterState, speculation: Speculation) -> Speculation | None:
    """An instance's default (POST /instances): prompt lookup, a model the cluster knows, or an instance; "none"
    is no default."""
    draft = speculation.draft
    if draft == NO_DRAFT:
        return None
    if draft != "ngram" and InstanceId(draft) not in state.instances:
        try:
            get_card(draft, state.models)
        except UnknownModel:
            raise unknown_draft(draft) from None
    return speculation


def speculation_for(state: ClusterState, requested: Speculation | None, main_instance: str) -> Speculation | None:
    """The request's own speculation (resolved; what is wrong with it is the client's 400), else its instance's
    default, whose draft model decodes by prompt lookup while no instance of it is ready."""
    if requested is not None:
        return None if requested.draft == NO_DRAFT else resolve_draft(state, requested, main_instance)
    instance = state.instances.get(InstanceId(main_instance))
    if instance is None or instance.speculative is None:
        return None
    try:
        return resolve_draft(state, instance.speculative, main_instance)
    except OpenAIError:
        return msgspec.structs.replace(instance.speculative, draft="ngram", draft_instance=None)


def not_ready(state: ClusterState, instance_id: InstanceId) -> OpenAIError:
    instance = state.instances[instance_id]
    return unavailable(f"instance {instance_id} of {instance.model_id} is not ready: " + ranks_summary(state, instance_id))


def instance_down(state: ClusterState, instance_id: InstanceId) -> str | None:
    """Why an instance that was serving can serve no more (deleted, a rank failed, stopped or restarted);
    None while every rank is ready."""
    if instance_id not in state.instances:
        return f"instance {instance_id} was deleted"
    if state.instance_ready(instance_id):
        return None
    return f"instance {instance_id} is down: " + ranks_summary(state, instance_id, only_unready=True)


def short_reason(detail: str) -> str:
    """The first clause of a status detail (e.g. 'runner exited with code -9' of '...: <its last log lines>')."""
    first = detail.strip().splitlines()[0] if detail.strip() else ""
    first = first.split(": ", 1)[0]
    return first if len(first) <= SHORT_REASON_CHARS else first[: SHORT_REASON_CHARS - 1] + "…"


def ranks_summary(
    state: ClusterState,
    instance_id: InstanceId,
    only_unready: bool = False,
    shorten: Callable[[str], str] = short_reason,
    tail: str = "; GET /instances has the details",
) -> str:
    """What each rank of an instance is doing, e.g. 'rank 0 on node-a: loading 40% (layers 0-15)'; a runner's
    detail only as `shorten` gives it (its full text may hold its last log lines: other clients' request ids)."""
    parts = []
    for shard, runner in zip(state.instances[instance_id].shards, state.instance_runners(instance_id)):
        if runner is None:
            parts.append(f"rank {shard.rank} on {shard.node_id}: waiting for its worker")
        elif not (only_unready and runner.phase == "ready"):
            progress = f" {runner.progress:.0%}" if runner.progress is not None else ""
            reason = shorten(runner.detail) if runner.detail else ""
            detail = f" ({reason})" if reason else ""
            parts.append(f"rank {shard.rank} on {shard.node_id}: {runner.phase}{progress}{detail}")
    return "; ".join(parts) + tail
