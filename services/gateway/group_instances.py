"""POST /instances and GET /instances/preview for a trifurcated group (docs/trifurcated.md): the main model (0),
then its validator (-1) and, when the draft is a model, the draft (+1), each placed apart from the ones before it
(PlaceInstance.apart_from) where the cluster has the nodes, else beside them, saying what it shares."""

from __future__ import annotations

import msgspec
from fastapi import Request

from shared import subjects
from shared.commands import (
    CommandReply,
    DeleteInstance,
    GroupPreviewReply,
    GroupRoleModel,
    PlaceInstance,
    PreviewGroup,
    encode,
)
from shared.events import GROUP_TRITS, GroupMember, GroupRole
from shared.ids import InstanceId
from shared.models import ModelCard
from shared.state import ClusterState

from services.gateway.errors import OpenAIError, bad_request
from services.gateway.group_defaults import NO_MODEL_DRAFTS
from services.gateway.instance_commands import COMMAND_TIMEOUT_S, card_for, carried, command, instance_view
from services.gateway.openai_schema import invalid_field
from services.gateway.validator import DENY_LIST, POLICIES, Policy

class GroupField(msgspec.Struct, forbid_unknown_fields=True):
    """`"trifurcated"` in the body of POST /instances (or GET /instances/preview's query)."""

    validator: str | None = None  # a model; None: the main model itself
    draft: str = "ngram"  # "ngram", "none" or a draft model (placed as the +1 role)
    policy: str = "annotate"


class GroupPlan(msgspec.Struct, frozen=True):
    roles: tuple[tuple[GroupRole, ModelCard], ...]  # in the order they are placed: main, validator, draft
    policy: Policy
    draft: str

    def member(self, role: GroupRole, main: InstanceId | None) -> GroupMember:
        if role == "main":
            return GroupMember("main", validator=self.roles[1][1].model_id, draft=self.draft, policy=self.policy)
        return GroupMember(role, main=main)

    def settings(self) -> dict:
        return {"validator": self.roles[1][1].model_id, "draft": self.draft, "policy": self.policy}


async def plan_group(request: Request, main: ModelCard, field: GroupField) -> GroupPlan:
    """The group's roles and cards; a bad value is a 400 naming its field (`trifurcated.validator`, ...)."""
    if field.policy not in POLICIES:
        raise bad_request(f"unknown policy {field.policy!r}: block or annotate", param="trifurcated.policy")
    if field.validator == DENY_LIST:
        raise bad_request("a group's validator is a model; deny patterns go with each request",
                          param="trifurcated.validator")  # fmt: skip
    roles: list[tuple[GroupRole, ModelCard]] = [("main", main)]
    for role, name in (("validator", field.validator or main.model_id), ("draft", field.draft)):
        if role == "draft" and name in NO_MODEL_DRAFTS:
            continue
        try:
            roles.append((role, await card_for(request, name, param=f"trifurcated.{role}")))  # type: ignore[arg-type]
        except OpenAIError as exc:
            if exc.status not in (400, 404):
                raise
            raise bad_request(f"trifurcated.{role}: {exc.message}", param=f"trifurcated.{role}") from None
    return GroupPlan(tuple(roles), field.policy, field.draft if field.draft in NO_MODEL_DRAFTS else roles[-1][1].model_id)  # type: ignore[arg-type]


def decode_group(raw: object) -> GroupField:
    try:
        return msgspec.convert(raw, GroupField)
    except msgspec.ValidationError as exc:
        field = invalid_field(str(exc))
        raise bad_request(f"invalid trifurcated group: {exc}", param="trifurcated" + (f".{field}" if field else "")) from None


async def place_group(request: Request, main_command: PlaceInstance, plan: GroupPlan) -> dict:
    """Each role in turn, apart from the ones placed before it; a role that cannot be placed removes the ones
    placed for it (a 409 naming the role)."""
    placed: list[tuple[GroupRole, InstanceId, str | None]] = []
    for role, card in plan.roles:
        base = main_command if role == "main" else PlaceInstance(card.model_id)
        main_id = placed[0][1] if placed else None
        cmd = msgspec.structs.replace(base, model_id=card.model_id, card=carried(card), group=plan.member(role, main_id),
                                      apart_from=tuple(iid for _r, iid, _s in placed))  # fmt: skip
        reply: CommandReply = await command(request, subjects.CMD_PLACE_INSTANCE, encode(cmd))
        if not reply.ok or reply.instance_id is None:
            for _r, iid, _s in reversed(placed):
                await command(request, subjects.CMD_DELETE_INSTANCE, encode(DeleteInstance(iid)))
            raise OpenAIError(409, f"the {role} ({card.model_id}): {reply.error or 'placement failed'}",
                              code="placement_failed", param="trifurcated" if role != "main" else "model")  # fmt: skip
        placed.append((role, reply.instance_id, reply.shares))
    ids = {iid for _r, iid, _s in placed}
    state: ClusterState = await request.app.state.gateway.follower.wait_until(
        lambda s: ids <= s.instances.keys(), COMMAND_TIMEOUT_S)  # fmt: skip
    return {
        "instance_id": placed[0][1],
        "group": plan.settings(),
        "instances": [instance_view(state, iid) | {"role": role, "trit": GROUP_TRITS[role], "shares": shares}
                      for role, iid, shares in placed],
    }  # fmt: skip


async def preview_group(request: Request, plan: GroupPlan, min_nodes: int = 1) -> dict:
    """Where each role would go now (`min_nodes` for the main model, as POST's body gives it)."""
    roles = tuple(GroupRoleModel(role, card.model_id, carried(card), min_nodes if role == "main" else 1)
                  for role, card in plan.roles)  # fmt: skip
    reply = await command(request, subjects.CMD_PREVIEW_GROUP, encode(PreviewGroup(roles)), GroupPreviewReply)
    if not reply.ok:
        return plan.settings() | {"feasible": False, "reason": reply.error, "roles": []}
    return plan.settings() | {"feasible": True, "roles": [
        msgspec.to_builtins(r) | {"trit": GROUP_TRITS[r.role]} for r in reply.roles
    ]}  # fmt: skip
