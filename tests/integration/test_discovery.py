"""Discovery across "machines": two real discovery processes that know each other only as static peers on
loopback (EXO_PEERS), one shared cluster secret, and a stranger with another secret shouting at both.

The tests of this module share one pair of processes and run in order: the last one kills a peer.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import nats
import pytest

from services.discovery.beacon import PEER_TIMEOUT_S, Beacon, encode, new_nonce
from services.node.embedded_bus import base_config
from services.node.nats_server import nats_server_argv, wait_for_port, write_config
from shared import subjects
from shared.cluster_secret import beacon_key, nats_client_credentials
from shared.facts import NodeFacts
from shared.peers import PeerTable, read_table
from tests.conftest import REPO_ROOT, free_port, free_udp_port

pytestmark = pytest.mark.slow

SECRET = secrets.token_hex(32)
FORGED_ID = "node-forged"
FOUND_WITHIN_S = 10.0  # two Python processes starting on a busy 2-core machine


@dataclass
class DiscoveryProcess:
    name: str
    state_dir: Path
    port: int
    proc: subprocess.Popen

    def table(self) -> PeerTable | None:
        return read_table(self.state_dir)

    def node_id(self) -> str:
        return (self.state_dir / "node_id").read_text().strip()

    def log(self) -> str:
        return "".join(p.read_text(errors="replace")[-4000:] for p in sorted(self.state_dir.glob("*.log")))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_discovery(root: Path, name: str, port: int, peers: str, nats_url: str, secret: str | None) -> DiscoveryProcess:
    state_dir = root / name
    state_dir.mkdir(parents=True)
    env = {
        **os.environ, "EXO_STATE_DIR": str(state_dir), "EXO_DISCOVERY_PORT": str(port), "EXO_DISCOVERY_BIND": "127.0.0.1",
        "EXO_PEERS": peers, "EXO_NATS_URL": nats_url, "EXO_HOSTNAME": f"host-{name}", "EXO_CONSOLE_LOGS": "1",
        "EXO_LOG_LEVEL": "info", "PYTHONUNBUFFERED": "1",
    }  # fmt: skip
    env.pop("EXO_CLUSTER_SECRET", None)
    if secret is not None:
        env["EXO_CLUSTER_SECRET"] = secret
    with open(state_dir / "console.log", "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "services.discovery"], cwd=REPO_ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    return DiscoveryProcess(name, state_dir, port, proc)


@pytest.fixture(scope="module")
def bus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real nats-server configured as a node's (one user per role; the services derive theirs from the secret)."""
    port = free_port()
    store = tmp_path_factory.mktemp("nats")
    conf = write_config(store, base_config(store, "discovery-test", SECRET, "127.0.0.1", port, "127.0.0.1", 0))
    proc = subprocess.Popen(nats_server_argv(conf), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for_port("127.0.0.1", port, 10.0), "nats-server did not start"
        yield f"nats://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def pair(bus: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DiscoveryProcess, DiscoveryProcess]]:
    root = tmp_path_factory.mktemp("discovery")
    port_a, port_b = free_udp_port(), free_udp_port()
    while port_b == port_a:
        port_b = free_udp_port()
    a = start_discovery(root, "a", port_a, f"127.0.0.1:{port_b}", bus, SECRET)
    b = start_discovery(root, "b", port_b, f"127.0.0.1:{port_a}", bus, SECRET)
    try:
        yield a, b
    finally:
        a.stop()
        b.stop()


@pytest.fixture(scope="module")
def stranger(pair: tuple[DiscoveryProcess, DiscoveryProcess]) -> Iterator[None]:
    """Sends both processes, five times a second, a beacon signed with another secret and an unsigned one."""
    forged = Beacon(node_id=FORGED_ID, hostname="evil", route_port=6222, discovery_port=1, memory_total=1 << 40,
                    memory_available=1 << 40, backends=("ring",), sent_at=0.0, nonce="")  # fmt: skip
    done = threading.Event()

    def shout() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            while not done.is_set():
                fresh = msgspec.structs.replace(forged, sent_at=time.time(), nonce=new_nonce())
                for target in pair:
                    s.sendto(encode(fresh, beacon_key(secrets.token_hex(32))), ("127.0.0.1", target.port))
                    s.sendto(msgspec.json.encode(fresh), ("127.0.0.1", target.port))
                done.wait(0.2)

    thread = threading.Thread(target=shout, daemon=True)
    thread.start()
    yield
    done.set()
    thread.join()


def wait_for(what: str, predicate, timeout: float, *procs: DiscoveryProcess):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            assert p.proc.poll() is None, f"discovery {p.name} exited with {p.proc.returncode}\n{p.log()}"
        if result := predicate():
            return result
        time.sleep(0.1)
    pytest.fail(f"no {what} within {timeout:.0f} s\n" + "\n".join(f"== {p.name}\n{p.log()}" for p in procs))


def never_forged(*procs: DiscoveryProcess) -> None:
    for p in procs:
        table = p.table()
        assert table is None or FORGED_ID not in {peer.node_id for peer in table.peers}, table


def sees_with_latency(me: DiscoveryProcess, other: DiscoveryProcess) -> bool:
    never_forged(me)
    table = me.table()
    if table is None:
        return False
    mine = [p for p in table.peers if p.node_id == other.node_id()]
    return len(mine) == 1 and mine[0].latency_ms is not None


def test_each_sees_the_other_once_with_a_latency(pair, stranger) -> None:  # noqa: ANN001
    a, b = pair
    wait_for("peers with latencies", lambda: sees_with_latency(a, b) and sees_with_latency(b, a), FOUND_WITHIN_S, a, b)
    for me, other in ((a, b), (b, a)):
        table = me.table()
        assert table is not None and table.node_id == me.node_id()
        (peer,) = table.peers  # exactly one entry: the other one (never the stranger, never ourselves)
        assert (peer.hostname, peer.address, peer.discovery_port) == (f"host-{other.name}", "127.0.0.1", other.port)
        assert 0.0 <= peer.latency_ms < 100.0 and peer.memory_total > 0 and time.time() - peer.last_seen < 3.0


def test_the_table_stays_fresh_and_the_stranger_stays_out(pair, stranger) -> None:  # noqa: ANN001
    a, b = pair
    for _ in range(30):  # 3 s of beacons, probes and forgeries
        never_forged(a, b)
        time.sleep(0.1)
    for p in pair:
        table = p.table()
        assert table is not None and len(table.peers) == 1 and time.time() - table.written_at < 3.0
    wait_for("log line about the forged datagrams", lambda: "bad mac" in a.log() and "bad mac" in b.log(), 5.0, a, b)


async def test_facts_carry_the_link_and_the_peers_endpoint_answers(pair, bus) -> None:  # noqa: ANN001
    a, b = pair
    user, password = nats_client_credentials(SECRET)
    nc = await nats.connect(bus, user=user, password=password)
    try:
        sub = await nc.subscribe(subjects.facts(a.node_id()))
        deadline = time.monotonic() + FOUND_WITHIN_S
        facts = None
        while time.monotonic() < deadline:
            facts = msgspec.json.decode((await sub.next_msg(timeout=FOUND_WITHIN_S)).data, type=NodeFacts)
            if facts.links:
                break
        assert facts is not None and facts.hostname == "host-a"
        assert [link.peer_id for link in facts.links] == [b.node_id()]
        reply = await nc.request(subjects.node_service(b.node_id(), "peers"), b"", timeout=5)
        table = msgspec.json.decode(reply.data, type=PeerTable)
        assert table.node_id == b.node_id() and [p.node_id for p in table.peers] == [a.node_id()]
    finally:
        await nc.close()


def test_a_killed_peer_leaves_the_table(pair) -> None:  # noqa: ANN001
    a, b = pair
    wait_for("peers", lambda: sees_with_latency(a, b), FOUND_WITHIN_S, a, b)
    b.proc.kill()
    b.proc.wait()
    killed = time.monotonic()
    # the bound: the timeout, plus one sweep and one table write (1-2 s), plus slack for a loaded CI machine
    bound = PEER_TIMEOUT_S + 4.0
    wait_for("expiry", lambda: (t := a.table()) is not None and not t.peers, bound, a)
    assert time.monotonic() - killed <= bound


def test_without_a_secret_there_are_no_beacons_and_it_says_why(bus, tmp_path) -> None:  # noqa: ANN001
    lone = start_discovery(tmp_path, "lone", free_udp_port(), "", bus, secret=None)
    try:
        wait_for("log line about the missing secret", lambda: "no cluster secret" in lone.log(), FOUND_WITHIN_S, lone)
        assert lone.table() is None
    finally:
        lone.stop()


# --- two "machines": network namespaces joined by a veth pair, no static peers, default port and bind --------


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=False)


@pytest.fixture
def two_hosts() -> Iterator[tuple[str, str]]:
    """Two network namespaces on one link (10.77.x.1 and .2), each with loopback up; skipped without root."""
    tag = f"{os.getpid() % 100000}"
    a, b = f"exoA{tag}", f"exoB{tag}"
    if os.geteuid() != 0 or _ip("netns", "add", a).returncode != 0:
        pytest.skip("network namespaces need root and iproute2")
    try:
        subnet = f"10.77.{os.getpid() % 250}"
        steps = [("netns", "add", b), ("link", "add", f"va{tag}", "type", "veth", "peer", "name", f"vb{tag}"),
                 ("link", "set", f"va{tag}", "netns", a), ("link", "set", f"vb{tag}", "netns", b),
                 ("-n", a, "addr", "add", f"{subnet}.1/24", "broadcast", f"{subnet}.255", "dev", f"va{tag}"),
                 ("-n", b, "addr", "add", f"{subnet}.2/24", "broadcast", f"{subnet}.255", "dev", f"vb{tag}"),
                 ("-n", a, "link", "set", f"va{tag}", "up"), ("-n", b, "link", "set", f"vb{tag}", "up"),
                 ("-n", a, "link", "set", "lo", "up"), ("-n", b, "link", "set", "lo", "up")]  # fmt: skip
        for step in steps:
            done = _ip(*step)
            assert done.returncode == 0, f"ip {' '.join(step)}: {done.stderr}"
        yield a, b
    finally:
        _ip("netns", "del", a)
        _ip("netns", "del", b)


def test_two_hosts_find_each_other_with_no_configuration(two_hosts, tmp_path) -> None:  # noqa: ANN001
    """Only the secret is shared: beacons go out by broadcast and multicast on the default port."""
    procs = []
    for ns, name in zip(two_hosts, ("a", "b")):
        state_dir = tmp_path / name
        state_dir.mkdir()
        env = {**os.environ, "EXO_STATE_DIR": str(state_dir), "EXO_CLUSTER_SECRET": SECRET, "EXO_HOSTNAME": f"host-{name}",
               "EXO_NATS_URL": "nats://127.0.0.1:9", "PYTHONUNBUFFERED": "1"}  # fmt: skip
        for unset in ("EXO_PEERS", "EXO_DISCOVERY_PORT", "EXO_DISCOVERY_BIND"):
            env.pop(unset, None)
        with open(state_dir / "console.log", "wb") as out:
            proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "services.discovery"],
                                    cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
        procs.append(DiscoveryProcess(name, state_dir, 52416, proc))
    a, b = procs
    try:
        wait_for("peers across hosts", lambda: sees_with_latency(a, b) and sees_with_latency(b, a), FOUND_WITHIN_S, a, b)
        for me, other in ((a, b), (b, a)):
            (peer,) = me.table().peers
            assert peer.hostname == f"host-{other.name}" and peer.address.endswith(".1" if other is a else ".2")
    finally:
        for p in procs:
            p.stop()
