"""A trifurcated group's placement (services/master/group_placement.py): disjoint node groups where the cluster
has them, else shared, and the sharing said."""

from __future__ import annotations

from services.master.group_placement import place_apart, place_group
from services.master.placement import NoPlacement
from shared.commands import PlaceInstance
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
