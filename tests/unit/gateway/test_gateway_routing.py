"""What the gateway tells clients about instances (services/gateway/routing.py), on plain state: an instance that
went down is noticed from the state alone, and a runner's log lines never reach a client."""

from __future__ import annotations

import msgspec
import pytest

from services.gateway.errors import OpenAIError
from services.gateway.routing import (
    default_speculation,
    draft_named_instance,
    instance_down,
    pick_instance,
    resolve_draft,
    short_reason,
    speculation_for,
)
from shared.generation import Speculation
from shared.apply import apply
from shared.events import InstanceDeleted, InstancePlaced, Instance, RunnerStatusChanged, ShardAssignment, WorkerStarted
from shared.state import ClusterState

LOG_TAIL = (
    "runner exited with code -9: 2026-11-29 22:01:02 [info] generated request=chatcmpl-3f9a tokens=17\n"
    "2026-11-29 22:01:03 [info] generated request=cmpl-77b1 prompt_tokens=12 tokens=40"
)


def state_of(*events) -> ClusterState:  # noqa: ANN002
    state = ClusterState()
    for event in events:
        state = apply(state, event)
    return state


def two_ranks(iid: str = "inst-1") -> InstancePlaced:
    shards = (ShardAssignment("node-a", 0, 0, 15), ShardAssignment("node-b", 1, 15, 30))
    return InstancePlaced(Instance(iid, "smollm2-135m", "pipeline", "ring", shards))


READY = (two_ranks(), RunnerStatusChanged("inst-1", "node-a", 0, "ready"), RunnerStatusChanged("inst-1", "node-b", 1, "ready"))


def test_a_ready_instance_is_not_down():
    assert instance_down(state_of(*READY), "inst-1") is None


def test_a_failed_rank_puts_the_instance_down_with_a_short_reason():
    state = state_of(*READY, RunnerStatusChanged("inst-1", "node-b", 1, "failed", LOG_TAIL))
    reason = instance_down(state, "inst-1")
    assert reason is not None
    assert "rank 1 on node-b: failed (runner exited with code -9)" in reason
    assert "request=" not in reason and "chatcmpl" not in reason
    assert "rank 0" not in reason  # only the ranks that are not ready


@pytest.mark.parametrize(
    "event",
    [InstanceDeleted("inst-1", "deleted by a user"), RunnerStatusChanged("inst-1", "node-a", 0, "stopped"),
     RunnerStatusChanged("inst-1", "node-a", 0, "loading"), WorkerStarted("node-a")],  # fmt: skip
    ids=["deleted", "stopped", "restarting", "worker-restarted"],
)
def test_every_way_of_going_down_is_seen(event):
    assert instance_down(state_of(*READY, event), "inst-1") is not None


def test_a_worker_restart_that_kept_the_runner_keeps_the_instance_up():
    assert instance_down(state_of(*READY, WorkerStarted("node-a", kept=("inst-1/0",))), "inst-1") is None


def test_the_not_ready_answer_carries_no_log_lines():
    state = state_of(two_ranks(), RunnerStatusChanged("inst-1", "node-a", 0, "failed", LOG_TAIL))
    with pytest.raises(OpenAIError) as info:
        pick_instance(state, "smollm2-135m", 0)
    assert info.value.status == 503
    assert "rank 0 on node-a: failed (runner exited with code -9)" in info.value.message
    assert "request=" not in info.value.message and "tokens=" not in info.value.message
    assert "GET /instances" in info.value.message


@pytest.mark.parametrize(
    ("detail", "short"),
    [("", ""), ("out of memory", "out of memory"), (LOG_TAIL, "runner exited with code -9"),
     ("model failed to load: [Errno 2] No such file", "model failed to load"), ("x" * 500, "x" * 119 + "…")],
)  # fmt: skip
def test_short_reason(detail: str, short: str):
    assert short_reason(detail) == short


def one_rank(iid: str, model: str = "smollm2-135m") -> tuple:
    placed = InstancePlaced(Instance(iid, model, "pipeline", "ring", (ShardAssignment("node-a", 0, 0, 30),)))
    return placed, RunnerStatusChanged(iid, "node-a", 0, "ready")


def test_a_draft_model_resolves_to_a_ready_instance_other_than_the_main_one():
    state = state_of(WorkerStarted("node-a"), *one_rank("inst-a"), *one_rank("inst-b"))
    for main, draft in (("inst-a", "inst-b"), ("inst-b", "inst-a")):  # the same model drafts for itself
        resolved = resolve_draft(state, Speculation("smollm2-135m", 5), main)
        assert resolved == Speculation("smollm2-135m", 5, draft_instance=draft)
    assert resolve_draft(state, Speculation("ngram", 5), "inst-a") == Speculation("ngram", 5)
    # Named by its instance id: the main request avoids that instance.
    named = Speculation("inst-a", 4)
    assert draft_named_instance(state, named) == "inst-a"
    assert pick_instance(state, "smollm2-135m", 0, avoid="inst-a") == "inst-b"
    assert resolve_draft(state, named, "inst-b") == Speculation("inst-a", 4, draft_instance="inst-a")
    assert draft_named_instance(state, Speculation("smollm2-135m", 4)) is None


@pytest.mark.parametrize("draft", ["gpt-17", "smollm2-135m", "inst-a"], ids=["unknown", "only-the-main", "the-main"])
def test_a_draft_without_an_instance_of_its_own_is_a_400_naming_speculative_draft(draft):
    state = state_of(WorkerStarted("node-a"), *one_rank("inst-a"), two_ranks("inst-2"))
    with pytest.raises(OpenAIError) as err:
        resolve_draft(state, Speculation(draft, 4), "inst-a")
    assert err.value.status == 400 and err.value.param == "speculative.draft"


def with_default(iid: str, speculative: Speculation) -> tuple:
    placed, ready = one_rank(iid)
    return (InstancePlaced(msgspec.structs.replace(placed.instance, speculative=speculative)), ready)


def test_an_instances_default_speculation_applies_where_a_request_asks_none_and_yields_to_what_it_asks():
    state = state_of(WorkerStarted("node-a"), *with_default("inst-a", Speculation("ngram", 6)), *one_rank("inst-b"))
    assert speculation_for(state, None, "inst-a") == Speculation("ngram", 6)
    assert speculation_for(state, None, "inst-b") is None  # no default there
    assert speculation_for(state, Speculation("ngram", 2), "inst-a") == Speculation("ngram", 2)
    assert speculation_for(state, Speculation("none", 4), "inst-a") is None  # "none": not even the default
    # a default draft model drafts on another ready instance of it, and by prompt lookup while there is none
    state = state_of(WorkerStarted("node-a"), *with_default("inst-a", Speculation("smollm2-135m", 4)), *one_rank("inst-b"))
    assert speculation_for(state, None, "inst-a") == Speculation("smollm2-135m", 4, draft_instance="inst-b")
    alone = state_of(WorkerStarted("node-a"), *with_default("inst-a", Speculation("smollm2-135m", 4)))
    assert speculation_for(alone, None, "inst-a") == Speculation("ngram", 4)


def test_an_instances_default_names_prompt_lookup_a_known_model_or_an_instance():
    state = state_of(WorkerStarted("node-a"), *one_rank("inst-a"))
    assert default_speculation(state, Speculation("ngram", 4)) == Speculation("ngram", 4)
    assert default_speculation(state, Speculation("smollm2-135m", 4)) == Speculation("smollm2-135m", 4)
    assert default_speculation(state, Speculation("inst-a", 4)) == Speculation("inst-a", 4)
    assert default_speculation(state, Speculation("none", 4)) is None
    with pytest.raises(OpenAIError) as err:
        default_speculation(state, Speculation("gpt-17", 4))
    assert err.value.status == 400 and err.value.param == "speculative.draft"
