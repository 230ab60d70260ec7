"""Discovery beacons, pure: the signed datagram, its checks, and the peer table they feed.

No sockets here (beacon_io.py sends and receives), so every rule is a unit test with plain data.

Wire format: MAGIC + HMAC-SHA256(beacon_key(secret), body) + body, body = the Beacon as JSON. The MAC covers
the whole body, so a node without the cluster secret can neither join a table nor fake a latency. `sent_at`
within MAX_CLOCK_SKEW_S and a nonce seen only once keep a captured datagram from being replayed for long.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import OrderedDict
from typing import Literal

import msgspec

from shared.facts import Link
from shared.peers import Peer, PeerTable

MAGIC = b"EXOB1"  # format version; anything else on the port is not ours (or is a newer format)
MAC_BYTES = 32
MAX_DATAGRAM_BYTES = 2048
MAX_CLOCK_SKEW_S = 30.0
PEER_TIMEOUT_S = 5.0  # a peer not heard for this long leaves the table
ADDRESS_STICKY_S = 3.0  # a peer heard on several paths keeps one address until that one falls silent
PROBE_TIMEOUT_S = 5.0  # a probe unanswered this long is lost
LATENCY_SMOOTHING = 0.3  # weight of a new RTT sample in the running average
LATENCY_ROUNDING_MS = 0.1

Kind = Literal["beacon", "probe", "pong"]


class Beacon(msgspec.Struct, frozen=True):
    """What a node says about itself, once a second, to everyone who might listen (and in probes/pongs)."""

    node_id: str
    hostname: str
    route_port: int  # NATS cluster port to route to; 0 when this node takes no routes
    discovery_port: int  # UDP port this node listens on for beacons and probes
    memory_total: int
    memory_available: int
    backends: tuple[str, ...]
    sent_at: float  # sender's unix time: the receiver rejects what is too far from its own clock
    nonce: str
    kind: Kind = "beacon"
    peer_id: str = ""  # probe/pong: the node it is meant for (several nodes may share a host and port)
    probe_id: str = ""  # probe: its id; pong: the id of the probe it answers
    echo_sent_at: float = 0.0  # pong: the probe's sent_at
    # UDP port of the sender's own probe socket. Nodes on one machine may share discovery_port (broadcasts reach
    # them all), but a unicast datagram to a shared port reaches just one of them: probes need a port of their own.
    probe_port: int = 0


class Rejected(Exception):
    """A datagram that must not touch the table. `reason` is short and stable, for rate-limited logs."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def new_nonce() -> str:
    return secrets.token_hex(8)


def encode(beacon: Beacon, key: bytes) -> bytes:
    body = msgspec.json.encode(beacon)
    datagram = MAGIC + hmac.new(key, body, hashlib.sha256).digest() + body
    if len(datagram) > MAX_DATAGRAM_BYTES:
        raise ValueError(f"beacon of {len(datagram)} bytes is over {MAX_DATAGRAM_BYTES} (hostname too long?)")
    return datagram


def verify(datagram: bytes, key: bytes, own_node_id: str, now: float) -> Beacon:
    """The beacon inside a datagram, or Rejected with why. Cheap checks first; the MAC before any parsing."""
    if len(datagram) > MAX_DATAGRAM_BYTES:
        raise Rejected("oversize", f"{len(datagram)} bytes")
    if not datagram.startswith(MAGIC) or len(datagram) < len(MAGIC) + MAC_BYTES:
        raise Rejected("unsigned")
    mac = datagram[len(MAGIC) : len(MAGIC) + MAC_BYTES]
    body = datagram[len(MAGIC) + MAC_BYTES :]
    if not hmac.compare_digest(mac, hmac.new(key, body, hashlib.sha256).digest()):
        raise Rejected("bad mac", "another cluster secret, or forged")
    try:
        beacon = msgspec.json.decode(body, type=Beacon)
    except msgspec.DecodeError as exc:
        raise Rejected("malformed", str(exc)) from None
    if beacon.node_id == own_node_id:
        raise Rejected("own")
    skew = beacon.sent_at - now
    if abs(skew) > MAX_CLOCK_SKEW_S:
        raise Rejected("clock skew", f"{beacon.hostname} is {skew:+.0f} s off our clock")
    return beacon


class NonceGuard:
    """Nonces seen within the skew window: a replayed (or duplicate) datagram is dropped.

    Bounded, so a flood of valid-looking traffic cannot grow it without limit (only a secret holder can
    produce valid nonces anyway). A node sends the same beacon to several destinations, so duplicates are normal."""

    def __init__(self, max_entries: int = 4096):
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._max = max_entries

    def first_time(self, nonce: str, now: float) -> bool:
        while self._seen and (
            len(self._seen) >= self._max or next(iter(self._seen.values())) < now - 2 * MAX_CLOCK_SKEW_S
        ):
            self._seen.popitem(last=False)
        if nonce in self._seen:
            return False
        self._seen[nonce] = now
        return True


def make_probe(me: Beacon, peer_id: str, now: float) -> Beacon:
    return msgspec.structs.replace(
        me, kind="probe", peer_id=peer_id, probe_id=new_nonce(), sent_at=now, nonce=new_nonce()
    )


def make_pong(me: Beacon, probe: Beacon, now: float) -> Beacon:
    return msgspec.structs.replace(
        me, kind="pong", peer_id=probe.node_id, probe_id=probe.probe_id, echo_sent_at=probe.sent_at,
        sent_at=now, nonce=new_nonce(),
    )  # fmt: skip


def _rounded(ms: float) -> float:
    return round(round(ms / LATENCY_ROUNDING_MS) * LATENCY_ROUNDING_MS, 3)


class PeerBook:
    """The peer table: one entry per node id, refreshed by beacons, aged out after PEER_TIMEOUT_S.

    Methods return whether the table changed in a way worth writing at once (a peer came, left, moved, or got
    its first latency); memory readings and last_seen move every second and only ride on periodic writes.
    Time is passed in: `now` is unix time; probe timing uses whatever clock the caller passes (monotonic)."""

    def __init__(self, own_node_id: str):
        self.own_node_id = own_node_id
        self.peers: dict[str, Peer] = {}
        self._address_heard: dict[str, float] = {}  # node id -> last beacon from its current address
        self._probe_ports: dict[str, int] = {}  # node id -> where its probes are answered
        self._probes: dict[str, tuple[str, float]] = {}  # probe id -> (peer id, sent at on the probe clock)

    def observe(self, beacon: Beacon, address: str, now: float) -> bool:
        known = self.peers.get(beacon.node_id)
        heard = self._address_heard.get(beacon.node_id, 0.0)
        if known is not None and address != known.address and now - heard <= ADDRESS_STICKY_S:
            address = known.address  # the same node on another path: keep the one in use while it works
        else:
            self._address_heard[beacon.node_id] = now
        updated = Peer(
            node_id=beacon.node_id,
            hostname=beacon.hostname,
            address=address,
            discovery_port=beacon.discovery_port,
            route_port=beacon.route_port,
            memory_total=beacon.memory_total,
            memory_available=beacon.memory_available,
            backends=beacon.backends,
            last_seen=now,
            latency_ms=known.latency_ms if known is not None else None,
        )
        self.peers[beacon.node_id] = updated
        self._probe_ports[beacon.node_id] = beacon.probe_port or beacon.discovery_port
        if known is None:
            return True
        moved = (known.address, known.discovery_port) != (updated.address, updated.discovery_port)
        if moved:  # a latency measured on the old path says nothing about the new one
            self.peers[beacon.node_id] = msgspec.structs.replace(updated, latency_ms=None)
        same = ("hostname", "route_port", "memory_total", "backends")
        return moved or any(getattr(known, f) != getattr(updated, f) for f in same)

    def expire(self, now: float) -> list[str]:
        """Forget peers not heard for PEER_TIMEOUT_S; returns their ids."""
        gone = [node_id for node_id, p in self.peers.items() if now - p.last_seen > PEER_TIMEOUT_S]
        for node_id in gone:
            del self.peers[node_id]
            self._address_heard.pop(node_id, None)
            self._probe_ports.pop(node_id, None)
        return gone

    def probe_address(self, node_id: str) -> tuple[str, int]:
        peer = self.peers[node_id]
        return peer.address, self._probe_ports.get(node_id, peer.discovery_port)

    def probe_sent(self, probe: Beacon, at: float) -> None:
        self._probes = {pid: sent for pid, sent in self._probes.items() if at - sent[1] <= PROBE_TIMEOUT_S}
        self._probes[probe.probe_id] = (probe.peer_id, at)

    def pong_received(self, pong: Beacon, at: float) -> bool:
        """Record the round trip of a pong that answers one of our probes from the node it was sent to."""
        sent = self._probes.get(pong.probe_id)
        if sent is None or sent[0] != pong.node_id or pong.peer_id != self.own_node_id:
            return False
        del self._probes[pong.probe_id]
        rtt_ms = (at - sent[1]) * 1000.0
        peer = self.peers.get(pong.node_id)
        if peer is None or not 0.0 <= rtt_ms <= PROBE_TIMEOUT_S * 1000.0:
            return False
        previous = peer.latency_ms
        smoothed = rtt_ms if previous is None else previous + LATENCY_SMOOTHING * (rtt_ms - previous)
        self.peers[pong.node_id] = msgspec.structs.replace(peer, latency_ms=_rounded(smoothed))
        return previous is None

    def table(self, now: float) -> PeerTable:
        return PeerTable(self.own_node_id, now, tuple(sorted(self.peers.values(), key=lambda p: p.node_id)))

    def links(self) -> tuple[Link, ...]:
        return tuple(
            Link(p.node_id, p.latency_ms) for p in sorted(self.peers.values(), key=lambda p: p.node_id)
            if p.latency_ms is not None
        )  # fmt: skip
