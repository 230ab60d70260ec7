"""Discovery beacons: what a datagram must be to enter the table, and how the table keeps one entry per node."""

from __future__ import annotations

import msgspec
import pytest

from shared.cluster_secret import beacon_key, generate
from services.discovery.beacon import (
    MAC_BYTES,
    MAGIC,
    MAX_CLOCK_SKEW_S,
    MAX_DATAGRAM_BYTES,
    PEER_TIMEOUT_S,
    Beacon,
    NonceGuard,
    PeerBook,
    Rejected,
    encode,
    make_pong,
    make_probe,
    new_nonce,
    verify,
)

KEY = beacon_key(generate())
NOW = 1_700_000_000.0


def beacon(node_id: str = "node-b", sent_at: float = NOW, **kw) -> Beacon:
    fields = dict(
        node_id=node_id, hostname=f"host-{node_id}", route_port=6222, discovery_port=52416,
        memory_total=16 << 30, memory_available=8 << 30, backends=("ring",), sent_at=sent_at, nonce=new_nonce(),
    )  # fmt: skip
    fields.update(kw)
    return Beacon(**fields)


def reason(datagram: bytes, own: str = "node-a", now: float = NOW) -> str:
    with pytest.raises(Rejected) as info:
        verify(datagram, KEY, own, now)
    return info.value.reason


# --- signing and checks --------------------------------------------------------------------------


def test_a_signed_beacon_round_trips() -> None:
    b = beacon()
    assert verify(encode(b, KEY), KEY, "node-a", NOW + 1) == b


def test_another_secret_is_rejected() -> None:
    assert reason(encode(beacon(), beacon_key(generate()))) == "bad mac"


def test_a_tampered_body_is_rejected() -> None:
    datagram = encode(beacon(memory_available=1), KEY)
    assert reason(datagram.replace(b'"memory_available":1', b'"memory_available":9')) == "bad mac"


def test_unsigned_and_foreign_datagrams_are_rejected() -> None:
    assert reason(msgspec.json.encode(beacon())) == "unsigned"
    assert reason(b"") == "unsigned"
    assert reason(MAGIC + b"short") == "unsigned"


def test_signed_garbage_is_malformed() -> None:
    import hashlib
    import hmac

    body = b'{"node_id": 3}'
    assert reason(MAGIC + hmac.new(KEY, body, hashlib.sha256).digest() + body) == "malformed"


def test_oversize_is_rejected_before_anything_else() -> None:
    assert reason(MAGIC + b"x" * MAX_DATAGRAM_BYTES) == "oversize"
    with pytest.raises(ValueError):
        encode(beacon(hostname="h" * MAX_DATAGRAM_BYTES), KEY)


def test_our_own_beacon_is_rejected() -> None:
    assert reason(encode(beacon("node-a"), KEY), own="node-a") == "own"


@pytest.mark.parametrize("offset", [MAX_CLOCK_SKEW_S + 1, -(MAX_CLOCK_SKEW_S + 1)])
def test_a_beacon_far_from_our_clock_is_rejected(offset: float) -> None:
    assert reason(encode(beacon(sent_at=NOW + offset), KEY)) == "clock skew"


def test_the_mac_is_32_bytes_after_the_magic() -> None:
    datagram = encode(beacon(), KEY)
    assert datagram.startswith(MAGIC) and datagram[len(MAGIC) + MAC_BYTES :].startswith(b"{")


def test_a_nonce_counts_once_within_the_window() -> None:
    guard = NonceGuard()
    assert guard.first_time("n1", NOW)
    assert not guard.first_time("n1", NOW + 1)
    assert guard.first_time("n1", NOW + 3 * MAX_CLOCK_SKEW_S)  # long gone, and sent_at would be rejected anyway


def test_the_nonce_guard_is_bounded() -> None:
    guard = NonceGuard(max_entries=3)
    for i in range(10):
        assert guard.first_time(f"n{i}", NOW)
    assert len(guard._seen) <= 3


# --- the peer table ------------------------------------------------------------------------------


def test_a_beacon_adds_one_entry_and_repeats_do_not_duplicate() -> None:
    book = PeerBook("node-a")
    assert book.observe(beacon(), "10.0.0.2", NOW)
    assert not book.observe(beacon(memory_available=7 << 30), "10.0.0.2", NOW + 1)  # memory: no urgent write
    (peer,) = book.table(NOW + 1).peers
    assert (peer.node_id, peer.address, peer.last_seen, peer.memory_available) == ("node-b", "10.0.0.2", NOW + 1, 7 << 30)


def test_a_node_heard_on_two_paths_keeps_one_address() -> None:
    book = PeerBook("node-a")
    book.observe(beacon(), "10.0.0.2", NOW)
    assert not book.observe(beacon(), "192.168.1.2", NOW + 0.1)
    assert [p.address for p in book.table(NOW).peers] == ["10.0.0.2"]


def test_a_node_whose_address_changed_is_replaced_not_duplicated() -> None:
    book = PeerBook("node-a")
    book.observe(beacon(), "10.0.0.2", NOW)
    assert book.observe(beacon(), "10.0.0.9", NOW + 4)  # old address silent for longer than the sticky window
    assert [(p.node_id, p.address) for p in book.table(NOW + 4).peers] == [("node-b", "10.0.0.9")]


def test_a_moved_node_loses_its_old_latency() -> None:
    book = PeerBook("node-a")
    book.observe(beacon(), "10.0.0.2", NOW)
    measure(book, "node-b", rtt_s=0.002)
    book.observe(beacon(), "10.0.0.9", NOW + 4)
    assert book.peers["node-b"].latency_ms is None


def test_a_changed_route_port_is_written_at_once() -> None:
    book = PeerBook("node-a")
    book.observe(beacon(), "10.0.0.2", NOW)
    assert book.observe(beacon(route_port=7222), "10.0.0.2", NOW + 1)


def test_silent_peers_expire() -> None:
    book = PeerBook("node-a")
    book.observe(beacon("node-b"), "10.0.0.2", NOW)
    book.observe(beacon("node-c"), "10.0.0.3", NOW + 3)
    assert book.expire(NOW + PEER_TIMEOUT_S) == []
    assert book.expire(NOW + PEER_TIMEOUT_S + 0.5) == ["node-b"]
    assert [p.node_id for p in book.table(NOW).peers] == ["node-c"]


# --- probes and latency --------------------------------------------------------------------------


def measure(book: PeerBook, peer_id: str, rtt_s: float, at: float = 100.0) -> bool:
    me = beacon(book.own_node_id)
    probe = make_probe(me, peer_id, NOW)
    book.probe_sent(probe, at)
    pong = make_pong(beacon(peer_id), probe, NOW)
    return book.pong_received(pong, at + rtt_s)


def test_a_pong_gives_the_round_trip_rounded_to_a_tenth_of_a_ms() -> None:
    book = PeerBook("node-a")
    book.observe(beacon(), "10.0.0.2", NOW)
    assert measure(book, "node-b", rtt_s=0.00123)  # first latency: worth writing at once
    assert book.peers["node-b"].latency_ms == 1.2
    assert [(link.peer_id, link.latency_ms) for link in book.links()] == [("node-b", 1.2)]


def test_latency_is_smoothed() -> None:
    book = PeerBook("node-a")
    book.observe(beacon(), "10.0.0.2", NOW)
    measure(book, "node-b", rtt_s=0.001)
    assert not measure(book, "node-b", rtt_s=0.011)
    assert book.peers["node-b"].latency_ms == 4.0


def test_pongs_that_answer_no_probe_of_ours_are_ignored() -> None:
    book = PeerBook("node-a")
    book.observe(beacon(), "10.0.0.2", NOW)
    me = beacon("node-a")
    probe = make_probe(me, "node-b", NOW)
    book.probe_sent(probe, 100.0)
    from_someone_else = make_pong(beacon("node-c"), probe, NOW)
    assert not book.pong_received(from_someone_else, 100.001)
    unknown = make_pong(beacon("node-b"), make_probe(me, "node-b", NOW), NOW)
    assert not book.pong_received(unknown, 100.001)
    assert book.pong_received(make_pong(beacon("node-b"), probe, NOW), 100.001)
    assert not book.pong_received(make_pong(beacon("node-b"), probe, NOW), 100.002)  # answered already
    assert book.peers["node-b"].latency_ms == 1.0


def test_a_pong_echoes_the_probe() -> None:
    probe = make_probe(beacon("node-a"), "node-b", NOW)
    pong = make_pong(beacon("node-b"), probe, NOW + 0.5)
    assert (pong.kind, pong.peer_id, pong.probe_id, pong.echo_sent_at) == ("pong", "node-a", probe.probe_id, NOW)
    assert pong.nonce != probe.nonce


def test_probes_go_to_the_peers_own_probe_port() -> None:
    book = PeerBook("node-a")
    book.observe(beacon(probe_port=40001), "10.0.0.2", NOW)
    assert book.probe_address("node-b") == ("10.0.0.2", 40001)
    book.observe(beacon("node-c"), "10.0.0.3", NOW)  # an older sender without one: its discovery port
    assert book.probe_address("node-c") == ("10.0.0.3", 52416)
