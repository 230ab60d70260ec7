"""The master refuses min_nodes below 1 (and max_nodes below min_nodes) from any client of the bus."""

from __future__ import annotations

import pytest

from services.master.decide_commands import decide_place, decide_preview, node_count_problem
from shared.apply import apply
from shared.commands import PlaceInstance, PreviewPlacements
from shared.events import NodeFactsRecorded
from shared.state import ClusterState
from tests.unit.factories import facts

STATE = apply(ClusterState(), NodeFactsRecorded(facts("node-a")))


@pytest.mark.parametrize("min_nodes", [0, -1, -100])
def test_place_refuses_min_nodes_below_one(min_nodes):
    events, reply = decide_place(STATE, PlaceInstance("smollm2-135m", min_nodes=min_nodes), "inst-new")
    assert events == [] and not reply.ok and reply.instance_id is None
    assert reply.error == f"min_nodes must be at least 1, not {min_nodes}"


def test_place_with_min_nodes_one_still_places():
    events, reply = decide_place(STATE, PlaceInstance("smollm2-135m", min_nodes=1), "inst-new")
    assert reply.ok and len(events) == 1


@pytest.mark.parametrize("min_nodes,max_nodes", [(0, None), (-3, 2), (2, 1)])
def test_preview_refuses_bad_node_counts(min_nodes, max_nodes):
    reply = decide_preview(STATE, PreviewPlacements("smollm2-135m", min_nodes, max_nodes))
    assert not reply.ok and reply.options == []
    assert reply.error and ("min_nodes" in reply.error)


def test_preview_with_good_counts_answers():
    reply = decide_preview(STATE, PreviewPlacements("smollm2-135m", 1, 1))
    assert reply.ok and reply.options


@pytest.mark.parametrize("min_nodes,max_nodes,ok", [(1, None, True), (1, 1, True), (2, 5, True), (0, None, False),
                                                    (-1, 5, False), (3, 2, False)])  # fmt: skip
def test_node_count_problem(min_nodes, max_nodes, ok):
    assert (node_count_problem(min_nodes, max_nodes) is None) == ok
