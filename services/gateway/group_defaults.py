"""A `"trifurcated"` chat request's defaults from its model's group (docs/trifurcated.md). Pure: the followed state.

A group is placed with POST /instances (services/gateway/group_instances.py); its main instance records the
group's settings (shared.events.GroupMember) and its validator and draft instances name it. A request for the
model that leaves a setting out gets the group's: its main instance serves the answer, its own validator instance
judges (on the devices placed apart for it), under its policy, and its own draft instance drafts (prompt lookup
while a draft model's instance is not ready)."""

from __future__ import annotations

from shared.events import GroupMember
from shared.models import UnknownModel, get_card
from shared.state import ClusterState

from services.gateway.validator import GroupDefaults

NO_MODEL_DRAFTS = ("ngram", "none")


def group_defaults(state: ClusterState, model: str) -> GroupDefaults | None:
    """The settings of a ready group of the model (the first by main instance id), else None."""
    try:
        model_id = get_card(model, state.models).model_id
    except UnknownModel:
        return None
    mains = sorted(i.instance_id for i in state.instances_of(model_id)
                   if i.group is not None and i.group.role == "main" and state.instance_ready(i.instance_id))  # fmt: skip
    if not mains:
        return None
    main = mains[0]
    group = state.instances[main].group
    assert isinstance(group, GroupMember)
    validators = [v for v in state.group_members(main).get("validator", []) if state.instance_ready(v)]
    validator = validators[0] if validators else (group.validator or model_id)
    draft = group.draft or "ngram"
    if draft not in NO_MODEL_DRAFTS:  # a draft model: the group's own instance of it drafts, while it is ready
        drafts = [d for d in state.group_members(main).get("draft", []) if state.instance_ready(d)]
        draft = drafts[0] if drafts else "ngram"
    return GroupDefaults(validator, group.policy or "annotate", draft, main)
