"""A model nobody wrote a card for: the command carries a derived card, the master records it and places it."""

from __future__ import annotations

from services.master.decide_commands import decide_place, decide_preview
from shared.apply import apply
from shared.commands import PlaceInstance, PreviewPlacements
from shared.events import InstancePlaced, ModelCardRecorded
from shared.ids import InstanceId
from shared.models import HubRepo, ModelCard, get_card
from shared.state import ClusterState
from tests.unit.factories import facts

TINY = ModelCard("org/tiny-llama", "org/tiny-llama", HubRepo("org/tiny-llama"), n_layers=4, hidden_size=64,
                 n_heads=4, n_kv_heads=2, context_length=2048, storage_bytes=2_000_000, architecture="llama",
                 files={"model.safetensors": 2_000_000})  # fmt: skip


def state_with(*node_ids: str) -> ClusterState:
    return ClusterState(nodes={n: facts(n) for n in node_ids})  # type: ignore[misc]


def test_a_carried_card_is_recorded_then_placed():
    events, reply = decide_place(state_with("a"), PlaceInstance("org/tiny-llama", card=TINY), InstanceId("i1"))
    assert reply.ok and [type(e) for e in events] == [ModelCardRecorded, InstancePlaced]
    state = state_with("a")
    for event in events:
        state = apply(state, event)
    assert get_card("org/tiny-llama", state.models) == TINY
    assert state.instances[InstanceId("i1")].model_id == "org/tiny-llama"
    # placed again: the card is known, not recorded twice, and no card need travel
    events, reply = decide_place(state, PlaceInstance("org/tiny-llama"), InstanceId("i2"))
    assert reply.ok and [type(e) for e in events] == [InstancePlaced]


def test_without_a_card_an_unknown_model_is_refused():
    events, reply = decide_place(state_with("a"), PlaceInstance("org/tiny-llama"), InstanceId("i1"))
    assert events == [] and reply.error == "unknown model 'org/tiny-llama'"


def test_a_card_for_another_model_or_a_broken_card_is_refused():
    _, reply = decide_place(state_with("a"), PlaceInstance("org/other", card=TINY), InstanceId("i1"))
    assert reply.error == "the card given is for 'org/tiny-llama', not 'org/other'"
    broken = ModelCard("org/b", "org/b", HubRepo("org/b"), 0, 64, 4, 2, 2048, 10)
    _, reply = decide_place(state_with("a"), PlaceInstance("org/b", card=broken), InstanceId("i1"))
    assert reply.error is not None and "not valid" in reply.error


def test_a_built_in_model_by_its_repo_id_is_the_built_in_card():
    cmd = PlaceInstance("mlx-community/Llama-3.3-70B-Instruct-4bit")
    big = state_with("a")
    events, reply = decide_place(big, cmd, InstanceId("i1"))
    assert reply.error is None or "does not fit" in reply.error  # placed or refused by memory, never unknown
    assert get_card("mlx-community/Llama-3.3-70B-Instruct-4bit").model_id == "llama-3.3-70b"


def test_preview_of_a_derived_card_splits_it():
    reply = decide_preview(state_with("a", "b"), PreviewPlacements("org/tiny-llama", min_nodes=2, card=TINY))
    assert reply.ok and any(o.feasible and o.n_nodes == 2 for o in reply.options)
