"""A `"trifurcated"` chat request's defaults from its model's group (docs/trifurcated.md). Pure: the followed state.

A group is placed with POST /instances (services/gateway/group_instances.py); its main instance records the
group's settings (shared.events.GroupMember) and its validator and draft instances name it. A request for the
model that leaves a setting out gets the group's: its main instance serves the answer, its own validator instance
judges (on the devices placed apart for it), under its policy."""

from __future__ import annotations

from shared.events import GroupMember
from shared.models import UnknownModel, get_card
from shared.state import ClusterState

from services.gateway.validator import GroupDefaults

SERVED_DRAFTS = ("ngram", "none")  # a draft model's instance is placed, but the runner drafts by prompt lookup


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
    draft = group.draft if group.draft in SERVED_DRAFTS else "ngram"
    return GroupDefaults(validator, group.policy or "annotate", draft, main)
