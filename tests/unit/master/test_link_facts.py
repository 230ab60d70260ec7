"""Link latencies in node facts: jitter must not turn into an event every two seconds, real changes must."""

from __future__ import annotations

import pytest

from services.master.decide_commands import facts_event
from shared.apply import apply
from shared.events import NodeFactsRecorded
from shared.facts import Link
from shared.state import ClusterState
from tests.unit.factories import facts


def recorded(*links: Link) -> ClusterState:
    return apply(ClusterState(), NodeFactsRecorded(facts("node-a", links=links)))


@pytest.mark.parametrize("latency_ms", [0.1, 0.4, 0.9, 2.0])
def test_loopback_and_lan_jitter_is_no_event(latency_ms: float) -> None:
    state = recorded(Link("node-b", 0.3))
    assert facts_event(state, facts("node-a", links=(Link("node-b", latency_ms),))) is None


def test_wan_jitter_is_no_event() -> None:
    state = recorded(Link("node-b", 20.0))
    assert facts_event(state, facts("node-a", links=(Link("node-b", 27.0),))) is None


def test_a_link_that_got_much_slower_is_recorded() -> None:
    state = recorded(Link("node-b", 0.5))
    slower = facts("node-a", links=(Link("node-b", 5.0),))
    assert facts_event(state, slower) == NodeFactsRecorded(slower)


@pytest.mark.parametrize("links", [(), (Link("node-b", 0.5), Link("node-c", 0.5)), (Link("node-c", 0.5),)])
def test_a_peer_gained_or_lost_is_recorded(links: tuple[Link, ...]) -> None:
    state = recorded(Link("node-b", 0.5))
    changed = facts("node-a", links=links)
    assert facts_event(state, changed) == NodeFactsRecorded(changed)
