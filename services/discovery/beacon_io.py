"""Beacons on the wire: one UDP socket, a beacon every second to every place a peer may listen (each
interface's broadcast address, 255.255.255.255, a multicast group, the static peers), signed probes every two
seconds to measure links, and the peer table handed to `on_table` whenever it changes and every 2 s.

Why so many destinations: broadcast is the simplest and works on most LANs, but some networks (Wi-Fi with
client isolation, some switches, VPNs) drop it while passing multicast, and some pass neither, hence static
peers (EXO_PEERS). Duplicates cost nothing: receivers drop a nonce they have seen.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import time
from collections.abc import Callable

import psutil
import structlog

from shared.peers import PeerTable

from services.discovery.beacon import (
    MAX_DATAGRAM_BYTES,
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
from services.discovery.settings import DiscoverySettings

log = structlog.get_logger()

BEACON_PERIOD_S = 1.0
PROBE_PERIOD_S = 2.0
TABLE_CHECK_PERIOD_S = 0.25  # how often expiry runs: a dead peer leaves within PEER_TIMEOUT_S + this
TABLE_WRITE_PERIOD_S = 2.0  # written this often even unchanged, so readers can tell a live table from a stale one
INTERFACE_RESCAN_S = 10.0  # interfaces come and go (a Thunderbolt bridge, Wi-Fi): rejoin multicast on new ones
LOG_EVERY_S = 10.0  # rejected datagrams: at most one line per reason this often


class LogLimiter:
    """One log line per key per period, with the count of those swallowed since: a flood of forged
    datagrams must not flood the log (or the disk)."""

    def __init__(self, period_s: float = LOG_EVERY_S):
        self.period_s = period_s
        self._last: dict[str, float] = {}
        self._swallowed: dict[str, int] = {}

    def allow(self, key: str, now: float) -> int | None:
        """None: stay quiet. Otherwise log now, mentioning the returned count of earlier swallowed lines."""
        if now - self._last.get(key, -self.period_s) < self.period_s:
            self._swallowed[key] = self._swallowed.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._swallowed.pop(key, 0)


def ipv4_interfaces() -> list[tuple[str, str, str | None]]:
    """(name, address, broadcast) of each non-loopback IPv4 address."""
    found = []
    for name, addrs in psutil.net_if_addrs().items():
        for a in addrs:
            if a.family == socket.AF_INET and not a.address.startswith("127."):
                found.append((name, a.address, a.broadcast))
    return found


def open_socket(bind: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if hasattr(socket, "SO_REUSEPORT"):  # several nodes on one machine can share the port (broadcasts reach all)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        except OSError:
            pass
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)  # one hop: beacons stay on the local network
    sock.bind((bind, port))
    sock.setblocking(False)
    return sock


class BeaconIO:
    """The I/O shell around PeerBook. `on_table` is called with the table after every change and every 2 s."""

    def __init__(
        self,
        settings: DiscoverySettings,
        key: bytes,
        node_id: str,
        backends: tuple[str, ...],
        on_table: Callable[[PeerTable], None],
    ):
        self.settings = settings
        self.key = key
        self.node_id = node_id
        self.backends = backends
        self.on_table = on_table
        self.book = PeerBook(node_id)
        self.nonces = NonceGuard()
        self.limiter = LogLimiter()
        self._sock: socket.socket | None = None  # the shared discovery port: beacons
        self._probe_sock: socket.socket | None = None  # a port of our own: probes and pongs
        self._joined: set[str] = set()
        self._last_write = 0.0

    # -- what we say --------------------------------------------------------------------------------

    def me(self) -> Beacon:
        memory = psutil.virtual_memory()
        return Beacon(
            node_id=self.node_id,
            hostname=self.settings.hostname,
            route_port=self.settings.route_port,
            discovery_port=self.settings.port,
            memory_total=memory.total,
            memory_available=memory.available,
            backends=self.backends,
            sent_at=time.time(),
            nonce=new_nonce(),
            probe_port=self._probe_sock.getsockname()[1] if self._probe_sock is not None else 0,
        )

    def _send(self, datagram: bytes, address: tuple[str, int], via: socket.socket | None = None) -> None:
        sock = via or self._sock
        assert sock is not None
        try:
            sock.sendto(datagram, address)
        except OSError as exc:  # unreachable network, interface down, no route for broadcast on this bind...
            self._quiet("send failed", f"{address[0]}:{address[1]}: {exc}")

    # -- the loops ----------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        self._sock = open_socket(self.settings.bind, self.settings.port)
        self._probe_sock = open_socket(self.settings.bind, 0)
        loop = asyncio.get_running_loop()
        for sock in (self._sock, self._probe_sock):
            loop.add_reader(sock.fileno(), self._on_readable, sock)
        log.info("beacons on", bind=self.settings.bind, port=self.settings.port,
                 static_peers=[f"{h}:{p}" for h, p in self.settings.static_peers])  # fmt: skip
        self._publish()
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._every(stop, BEACON_PERIOD_S, self._send_beacons, jitter=0.1))
                tasks.create_task(self._every(stop, PROBE_PERIOD_S, self._send_probes))
                tasks.create_task(self._every(stop, TABLE_CHECK_PERIOD_S, self._check_table))
                tasks.create_task(self._every(stop, INTERFACE_RESCAN_S, self._join_multicast))
        finally:
            for sock in (self._sock, self._probe_sock):
                loop.remove_reader(sock.fileno())
                sock.close()

    @staticmethod
    async def _every(stop: asyncio.Event, period_s: float, step: Callable, jitter: float = 0.0) -> None:
        """Run `step` (sync or async) now and every period until stop. One failing step is logged, not fatal."""
        while not stop.is_set():
            try:
                result = step()
                if asyncio.iscoroutine(result):
                    await result
            except Exception:  # noqa: BLE001 - a bad tick must not stop discovery for good
                log.exception("discovery step failed", step=step.__name__)
            try:
                await asyncio.wait_for(stop.wait(), period_s * (1 + random.uniform(-jitter, jitter)))
            except TimeoutError:
                pass

    async def _send_beacons(self) -> None:
        datagram = encode(self.me(), self.key)
        for address in await self._beacon_destinations():
            self._send(datagram, address)
        for _, iface_address, _ in self._multicast_interfaces():
            assert self._sock is not None
            try:
                self._sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(iface_address))
            except OSError as exc:
                self._quiet("multicast interface", f"{iface_address}: {exc}")
                continue
            self._send(datagram, (self.settings.multicast_group, self.settings.port))

    async def _beacon_destinations(self) -> set[tuple[str, int]]:
        port = self.settings.port
        # without a broadcast address psutil reports the interface's own (or, point-to-point, the far end's)
        found = {(bcast, port) for _, own, bcast in self._multicast_interfaces() if bcast and bcast != own}
        if self.settings.bind == "0.0.0.0":
            found.add(("255.255.255.255", port))
        loop = asyncio.get_running_loop()
        for host, peer_port in self.settings.static_peers:
            try:  # resolved every time: a peer's name may point elsewhere after a DHCP renewal
                infos = await loop.getaddrinfo(host, peer_port, family=socket.AF_INET, type=socket.SOCK_DGRAM)
            except OSError as exc:
                self._quiet("peer unresolved", f"{host}: {exc}")
                continue
            found.update((str(info[4][0]), peer_port) for info in infos)
        return found

    def _multicast_interfaces(self) -> list[tuple[str, str, str | None]]:
        """The interfaces we beacon on: all of them, or only the one that owns the bind address."""
        interfaces = ipv4_interfaces()
        if self.settings.bind != "0.0.0.0":
            interfaces = [i for i in interfaces if i[1] == self.settings.bind]
        return interfaces

    def _join_multicast(self) -> None:
        """Join the group on every interface (joining on INADDR_ANY would pick just one). Only a socket bound
        to 0.0.0.0 receives datagrams sent to the group address."""
        if self.settings.bind != "0.0.0.0" or self._sock is None:
            return
        group = socket.inet_aton(self.settings.multicast_group)
        for name, address, _ in ipv4_interfaces():
            if address in self._joined:
                continue
            try:
                membership = struct.pack("4s4s", group, socket.inet_aton(address))
                self._sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
            except OSError as exc:
                self._quiet("multicast join", f"{name} {address}: {exc}")
                continue
            self._joined.add(address)
            log.debug("joined multicast group", group=self.settings.multicast_group, interface=name)

    def _send_probes(self) -> None:
        me = self.me()
        for peer_id in list(self.book.peers):
            self._probe(me, peer_id)

    def _probe(self, me: Beacon, peer_id: str) -> None:
        probe = make_probe(me, peer_id, time.time())
        self.book.probe_sent(probe, time.monotonic())
        self._send(encode(probe, self.key), self.book.probe_address(peer_id), via=self._probe_sock)

    def _check_table(self) -> None:
        gone = self.book.expire(time.time())
        for node_id in gone:
            log.info("peer lost", node=node_id)
        if gone or time.time() - self._last_write >= TABLE_WRITE_PERIOD_S:
            self._publish()

    def _publish(self) -> None:
        now = time.time()
        self._last_write = now
        try:
            self.on_table(self.book.table(now))
        except Exception:  # noqa: BLE001 - a full disk must not stop the beacons
            log.exception("cannot publish the peer table")

    # -- what we hear -------------------------------------------------------------------------------

    def _on_readable(self, sock: socket.socket) -> None:
        while True:
            try:
                data, source = sock.recvfrom(MAX_DATAGRAM_BYTES + 1)  # one byte more: oversize is seen
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._quiet("receive failed", str(exc))
                return
            try:
                self.handle(data, source, time.monotonic(), sock)
            except Exception:  # noqa: BLE001 - one odd datagram must not stop the reader
                log.exception("datagram handling failed", source=source[0])

    def handle(self, data: bytes, source: tuple[str, int], received_mono: float, sock: socket.socket) -> None:
        """One datagram: verify, then a beacon feeds the table, a probe gets a pong (from the socket it came
        to, so it returns to the prober's own port), a pong gives a latency."""
        now = time.time()
        try:
            beacon = verify(data, self.key, self.node_id, now)
        except Rejected as exc:
            if exc.reason != "own":  # our own broadcasts come back to us: normal
                self._rejected(exc, source)
            return
        if not self.nonces.first_time(beacon.nonce, now):
            return  # the same beacon by another path, or a replay
        if beacon.kind == "beacon":
            self._on_beacon(beacon, source[0], now)
        elif beacon.kind == "probe" and beacon.peer_id == self.node_id:
            self._send(encode(make_pong(self.me(), beacon, time.time()), self.key), source, via=sock)
        elif beacon.kind == "pong" and self.book.pong_received(beacon, received_mono):
            self._publish()

    def _on_beacon(self, beacon: Beacon, address: str, now: float) -> None:
        known = self.book.peers.get(beacon.node_id)
        if not self.book.observe(beacon, address, now):
            return
        peer = self.book.peers[beacon.node_id]
        if known is None:
            log.info("peer found", node=peer.node_id, hostname=peer.hostname, address=peer.address)
            self._probe(self.me(), peer.node_id)  # a latency right away
        elif known.address != peer.address:
            log.info("peer moved", node=peer.node_id, address=peer.address, was=known.address)
        self._publish()

    def _rejected(self, exc: Rejected, source: tuple[str, int]) -> None:
        swallowed = self.limiter.allow(exc.reason, time.monotonic())
        if swallowed is None:
            return
        level = log.warning if exc.reason in ("bad mac", "clock skew") else log.debug
        level("datagram ignored", reason=str(exc), source=f"{source[0]}:{source[1]}", similar_since=swallowed)

    def _quiet(self, what: str, detail: str) -> None:
        """Send/resolve errors repeat every second while a network is down: debug, rate-limited."""
        swallowed = self.limiter.allow(what, time.monotonic())
        if swallowed is not None:
            log.debug(what, detail=detail, similar_since=swallowed)
