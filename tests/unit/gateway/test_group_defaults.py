"""A trifurcated group's defaults for a chat request (services/gateway/group_defaults.py), the plan that merges them
with what the request says (validator.plan_trifurcated), the group field's 400s, and the dashboard's role label."""

from __future__ import annotations

import pytest

from services.gateway.dashboard.view import group_view
from services.gateway.errors import OpenAIError
from services.gateway.group_defaults import group_defaults
from services.gateway.group_instances import decode_group
from services.gateway.openai_schema import TrifurcatedField
from services.gateway.validator import DENY_LIST, plan_trifurcated
from shared.apply import apply
from shared.events import GroupMember, Instance, InstancePlaced, RunnerStatusChanged, ShardAssignment
from shared.ids import InstanceId, NodeId
from shared.state import ClusterState

MODEL = "smollm2-135m"
MAIN, VALIDATOR, DRAFT, PLAIN = (InstanceId(i) for i in ("inst-main", "inst-val", "inst-draft", "inst-plain"))


def instance(iid: InstanceId, node: str, group: GroupMember | None) -> Instance:
    return Instance(iid, MODEL, "pipeline", "ring", (ShardAssignment(NodeId(node), 0, 0, 30),), group=group)


def state_of(ready: tuple[InstanceId, ...] = (MAIN, VALIDATOR, DRAFT, PLAIN), draft: str = "ngram") -> ClusterState:
    state = ClusterState()
    settings = GroupMember("main", validator=MODEL, draft=draft, policy="block")
    for inst in (instance(PLAIN, "a", None), instance(MAIN, "a", settings),
                 instance(VALIDATOR, "b", GroupMember("validator", main=MAIN)),
                 instance(DRAFT, "c", GroupMember("draft", main=MAIN))):  # fmt: skip
        state = apply(state, InstancePlaced(inst))
    for iid in ready:
        node = state.instances[iid].shards[0].node_id
        state = apply(state, RunnerStatusChanged(iid, node, 0, "ready"))
    return state


def test_a_ready_group_gives_its_main_its_validator_instance_and_its_policy() -> None:
    found = group_defaults(state_of(), MODEL)
    assert found is not None
    assert (found.validator, found.policy, found.draft, found.main_instance) == (VALIDATOR, "block", "ngram", MAIN)


def test_a_draft_model_drafts_on_the_groups_instance_of_it_while_ready_else_by_prompt_lookup() -> None:
    found = group_defaults(state_of(draft="some-draft-model"), MODEL)
    assert found is not None and found.draft == DRAFT
    found = group_defaults(state_of(ready=(MAIN,), draft="some-draft-model"), MODEL)
    assert found is not None and found.draft == "ngram" and found.validator == MODEL  # nor the validator: its model


def test_no_ready_main_or_no_group_gives_no_defaults() -> None:
    assert group_defaults(state_of(ready=(VALIDATOR, PLAIN)), MODEL) is None
    assert group_defaults(state_of(), "no-such-model") is None
    plain = apply(ClusterState(), InstancePlaced(instance(PLAIN, "a", None)))
    assert group_defaults(apply(plain, RunnerStatusChanged(PLAIN, NodeId("a"), 0, "ready")), MODEL) is None


def test_true_takes_the_groups_settings_and_what_a_request_says_wins() -> None:
    group = group_defaults(state_of(), MODEL)
    plan = plan_trifurcated(True, MODEL, False, group)
    assert plan is not None and (plan.validator, plan.policy, plan.main_instance) == (VALIDATOR, "block", MAIN)
    said = plan_trifurcated(TrifurcatedField(policy="annotate", validator=DENY_LIST, deny=["x"]), MODEL, False, group)
    assert said is not None and (said.validator, said.policy, said.main_instance) == (DENY_LIST, "annotate", MAIN)
    alone = plan_trifurcated(TrifurcatedField(tokens=6), MODEL, False)  # no group: the defaults
    assert alone is not None and (alone.validator, alone.policy, alone.draft, alone.tokens) == (MODEL, "annotate", "ngram", 6)


@pytest.mark.parametrize(("raw", "param"), [({"polcy": "block"}, "trifurcated.polcy"),
                                            ({"policy": 3}, "trifurcated.policy"),
                                            ({"validator": ["a"]}, "trifurcated.validator")])  # fmt: skip
def test_a_bad_group_field_is_a_400_naming_it(raw: dict, param: str) -> None:
    with pytest.raises(OpenAIError) as err:
        decode_group(raw)
    assert err.value.status == 400 and err.value.param == param


def test_the_dashboard_labels_each_role_with_its_trit() -> None:
    state = state_of()
    assert group_view(state, PLAIN) is None
    views = {iid: group_view(state, iid) for iid in (VALIDATOR, MAIN, DRAFT)}
    assert [(v["role"], v["trit"]) for v in views.values() if v] == [("validator", -1), ("main", 0), ("draft", 1)]
    assert all(v is not None and v["main"] == MAIN and v["policy"] == "block" for v in views.values())
