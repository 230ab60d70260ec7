"""A trifurcated group's placement (services/master/group_placement.py): disjoint node groups where the cluster
has them, else shared, and the sharing said."""

from __future__ import annotations

from services.master.decide_commands import decide_place, decide_preview_group
from services.master.group_placement import place_apart, place_group
from services.master.placement import NoPlacement
from shared.apply import apply
from shared.commands import GroupRoleModel, PlaceInstance, PreviewGroup
from shared.events import GroupMember, InstancePlaced, decode_event, encode_event
from shared.generation import Speculation
from shared.ids import InstanceId
from shared.models import get_card
from tests.unit.master.test_placement import GB, cluster, node

SMOL = get_card("smollm2-135m")
ROLES = ["main", "draft", "validator"]


def group(n: int) -> list:
    return [(role, PlaceInstance(SMOL.model_id), SMOL, f"inst-{role}") for role in ROLES[:n]]


def nodes_used(placed) -> list[set[str]]:  # noqa: ANN001
    return [{s.node_id for s in p.instance.shards} for _role, p in placed]


def test_three_nodes_give_each_role_its_own() -> None:
    placed = place_group(cluster(node("a", 8 * GB), node("b", 4 * GB), node("c", 2 * GB)), group(3))
    assert not isinstance(placed, NoPlacement)
    used = nodes_used(placed)
    assert used == [{"a"}, {"b"}, {"c"}]  # the main model on the most memory
    assert all(p.shares is None for _r, p in placed)


def test_two_nodes_for_three_roles_share_one_and_say_so() -> None:
    placed = place_group(cluster(node("a", 8 * GB), node("b", 4 * GB)), group(3))
    assert not isinstance(placed, NoPlacement)
    used = nodes_used(placed)
    assert used[0] == {"a"} and used[1] == {"b"} and len(used[2]) == 1
    shares = placed[2][1].shares
    assert shares is not None and "shares" in shares and "no node is free" in shares, shares


def test_one_node_holds_the_group_beside_itself() -> None:
    placed = place_group(cluster(node("a", 8 * GB)), group(2))
    assert not isinstance(placed, NoPlacement)
    assert placed[1][1].shares is not None and "inst-main" in placed[1][1].shares  # type: ignore[operator]


def test_a_node_too_small_to_be_apart_is_passed_over_for_sharing() -> None:
    tiny = node("t", SMOL.storage_bytes // 100)  # not even a layer
    state = cluster(node("a", 8 * GB), tiny)
    placed = place_group(state, group(2))
    assert not isinstance(placed, NoPlacement)
    assert nodes_used(placed)[1] == {"a"}
    shares = placed[1][1].shares
    assert shares is not None and "does not fit apart" in shares, shares


def test_apart_from_nothing_is_plain_placement() -> None:
    found = place_apart(cluster(node("a", 8 * GB)), PlaceInstance(SMOL.model_id), SMOL, "i", [])
    assert not isinstance(found, NoPlacement) and found.shares is None


def test_a_role_that_fits_nowhere_names_its_role() -> None:
    placed = place_group(cluster(node("a", SMOL.storage_bytes // 100)), group(1))
    assert isinstance(placed, NoPlacement) and placed.reason.startswith("the main (smollm2-135m)")


# --- the master's commands: a group's members record their role, the preview says where each would go --------


def apply_all(state, events):  # noqa: ANN001, ANN201
    for event in events:
        state = apply(state, event)
    return state


def test_placing_a_group_records_each_role_and_the_main_keeps_the_settings() -> None:
    state = cluster(node("a", 8 * GB), node("b", 4 * GB))
    settings = GroupMember("main", validator=SMOL.model_id, draft="ngram", policy="block")
    default = Speculation("ngram", 6)  # the instance's default speculation travels the same way
    events, reply = decide_place(state, PlaceInstance(SMOL.model_id, group=settings, speculative=default),
                                 InstanceId("inst-main"))  # fmt: skip
    assert reply.ok and reply.shares is None
    state = apply_all(state, events)
    assert state.instances[InstanceId("inst-main")].group == settings
    assert state.instances[InstanceId("inst-main")].speculative == default
    validator = PlaceInstance(SMOL.model_id, apart_from=(InstanceId("inst-main"),),
                              group=GroupMember("validator", main=InstanceId("inst-main")))  # fmt: skip
    events, reply = decide_place(state, validator, InstanceId("inst-v"))
    assert reply.ok and reply.shares is None  # b is free of the main
    state = apply_all(state, events)
    assert state.group_members(InstanceId("inst-main")) == {"main": ["inst-main"], "validator": ["inst-v"]}
    assert {s.node_id for s in state.instances[InstanceId("inst-v")].shards} == {"b"}
    # and back from the log's bytes: the role travels in InstancePlaced
    placed = events[-1]
    assert isinstance(placed, InstancePlaced) and decode_event(encode_event(placed)) == placed


def test_a_validator_must_name_an_existing_main() -> None:
    state = cluster(node("a", 8 * GB))
    lost = PlaceInstance(SMOL.model_id, group=GroupMember("validator", main=InstanceId("inst-nope")))
    events, reply = decide_place(state, lost, InstanceId("inst-v"))
    assert events == [] and not reply.ok and "inst-nope" in (reply.error or "")
    events, reply = decide_place(state, PlaceInstance(SMOL.model_id, group=GroupMember("main", main=InstanceId("x"))),
                                 InstanceId("inst-m"))  # fmt: skip
    assert not reply.ok


def test_the_group_preview_names_each_roles_nodes_and_what_it_would_share() -> None:
    roles = tuple(GroupRoleModel(role, SMOL.model_id) for role in ("main", "validator", "draft"))  # type: ignore[arg-type]
    reply = decide_preview_group(cluster(node("a", 8 * GB), node("b", 4 * GB)), PreviewGroup(roles))
    assert reply.ok and [(r.role, r.nodes) for r in reply.roles][:2] == [("main", ("a",)), ("validator", ("b",))]
    assert reply.roles[0].shares is None and reply.roles[1].shares is None
    assert reply.roles[2].shares == "shares a with main: no node is free of them"  # the roles' names, not ids
    unknown = decide_preview_group(cluster(node("a", 8 * GB)), PreviewGroup((roles[0], GroupRoleModel("validator", "no-such"))))
    assert not unknown.ok and (unknown.error or "").startswith("the validator:"), unknown.error
