"""Which events a follower applies: only those signed by the leader of the log's current term, for the
sequence they sit at."""

from __future__ import annotations

from shared.cluster_secret import event_key
from shared.event_signing import SIGNATURE_HEADER, refusal, signed_headers
from shared.events import InstanceDeleted, LeaderElected, encode_event
from shared.state import ClusterState

KEY = event_key("ab" * 32)
STATE = ClusterState(leader_node_id="node-a", leader_term=7, last_seq=41)
EVENT = InstanceDeleted("inst-1", "asked")
DATA = encode_event(EVENT)


def why(headers: dict | None, seq: int = 42, data: bytes = DATA, event=EVENT, state: ClusterState = STATE) -> str | None:  # noqa: ANN001
    return refusal(KEY, headers, seq, data, event, state)


def test_the_leaders_event_at_its_sequence_is_applied() -> None:
    assert why(signed_headers(KEY, 7, "node-a", 42, DATA)) is None


def test_unsigned_or_malformed_events_are_refused() -> None:
    assert why(None) == "unsigned" and why({}) == "unsigned"
    headers = signed_headers(KEY, 7, "node-a", 42, DATA)
    assert why({**headers, "Exo-Term": "seven"}).startswith("bad term")
    assert why({**headers, SIGNATURE_HEADER: "00" * 32}).startswith("bad signature")


def test_another_key_sequence_or_body_is_refused() -> None:
    assert why(signed_headers(event_key("cd" * 32), 7, "node-a", 42, DATA)).startswith("bad signature")
    assert why(signed_headers(KEY, 7, "node-a", 12, DATA)).startswith("bad signature")  # copied from seq 12
    other = encode_event(InstanceDeleted("inst-2", "asked"))
    assert why(signed_headers(KEY, 7, "node-a", 42, other)).startswith("bad signature")


def test_an_event_of_another_term_or_writer_is_refused() -> None:
    assert "term 6" in why(signed_headers(KEY, 6, "node-a", 42, DATA))  # a master replaced since
    assert "node-b" in why(signed_headers(KEY, 7, "node-b", 42, DATA))


def test_a_claim_is_signed_by_its_claimant_for_its_term() -> None:
    claim = LeaderElected("node-b", 9)
    data = encode_event(claim)
    assert why(signed_headers(KEY, 9, "node-b", 42, data), data=data, event=claim) is None
    assert why(signed_headers(KEY, 9, "node-a", 42, data), data=data, event=claim) is not None
    assert why(signed_headers(KEY, 7, "node-b", 42, data), data=data, event=claim) is not None
