"""The cluster secret stays secret on a running node: no process of the node (supervisor, nats-server,
services, runners) shows it, nor a bus password derived from it, on its command line (world-readable) or in
its environment (a node joined by --nats-url with a password included); a secret given on the command line is warned about and scrubbed; a cluster still forms
between nodes that were given the secret by file."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from shared.bus_roles import ROLES
from shared.cluster_secret import SECRET_ENV, nats_credentials, nats_route_credentials
from tests.conftest import REPO_ROOT, TEST_CLUSTER_SECRET, Node, free_port, free_udp_port

pytestmark = pytest.mark.slow


def secret_texts(secret: str) -> list[bytes]:
    passwords = [nats_credentials(secret, role)[1] for role in ROLES] + [nats_route_credentials(secret)[1]]
    return [t.encode() for t in (secret, secret.upper(), *passwords)]


def node_pids(node: Node) -> dict[int, str]:
    pids = {p.pid: p.name() for p in node.process_tree()}
    pids.update({pid: "runner" for pid in node.runner_pids()})
    return pids


def leaks(node: Node, secret: str) -> list[str]:
    """Every process of the node whose /proc cmdline or environ holds the secret or a password derived from it."""
    found = []
    for pid, name in node_pids(node).items():
        for part in ("cmdline", "environ"):
            try:
                shown = Path(f"/proc/{pid}/{part}").read_bytes()
            except OSError:
                continue  # exited meanwhile
            if any(text in shown for text in secret_texts(secret)):
                found.append(f"{pid} {name} {part}")
    return found


def test_no_process_of_a_clustered_node_shows_the_secret(start_node: Callable[..., Node]) -> None:
    disc_a, disc_b = free_udp_port(), free_udp_port()
    route_a, route_b = free_port(), free_port()
    common = ("--cluster-bind", "127.0.0.1")  # conftest gives each node the secret by --cluster-secret-file
    a = start_node("hide-a", "--discovery-port", str(disc_a), "--route-port", str(route_a),
                   "--peers", f"127.0.0.1:{disc_b}", *common)  # fmt: skip
    b = start_node("hide-b", "--no-model", "--discovery-port", str(disc_b), "--route-port", str(route_b),
                   "--peers", f"127.0.0.1:{disc_a}", *common)  # fmt: skip
    try:
        both = a.wait_until(lambda h: len(h["nodes"]) == 2 and bool(h["ready_instances"]), 120, "a cluster of two")
        b.wait_until(lambda h: h["nodes"] == both["nodes"], 60, "the same state on the second node")
        assert a.runner_pids() or b.runner_pids(), "the check must cover a runner too"
        names = {n for node in (a, b) for n in node_pids(node).values()}
        assert {"nats-server", "runner"} <= names and len(names) >= 3, names
        assert leaks(a, TEST_CLUSTER_SECRET) == [] and leaks(b, TEST_CLUSTER_SECRET) == []
        # a node that joins a bus by a URL with the operator's password: neither it nor its services show it
        c = start_node("hide-c", "--no-model", "--no-master", "--nats-url", a.nats_url)
        c.wait_until(lambda h: len(h["nodes"]) == 3, 60, "the third node in the state")
        assert leaks(c, TEST_CLUSTER_SECRET) == []
        c.stop()
        for node in (a, b):
            assert (node.state_dir / "nats" / "nats.conf").stat().st_mode & 0o077 == 0
            assert (node.state_dir / "cluster.secret").stat().st_mode & 0o077 == 0
    finally:
        b.stop()
        a.stop()


def test_a_secret_on_the_command_line_and_in_the_environment_is_scrubbed(
    start_node: Callable[..., Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "c4" * 32
    monkeypatch.setenv(SECRET_ENV, secret)  # what the node inherits from the fixture's environment
    node = start_node("argv-secret", "--no-model", "--cluster-secret", secret)
    try:
        assert "every user of this machine can read" in node.output_path.read_text()
        assert leaks(node, secret) == []
        assert len(node_pids(node)) >= 5  # supervisor, bus and the four services
    finally:
        node.stop()


def test_a_secret_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text(TEST_CLUSTER_SECRET)
    path.chmod(0o640)
    result = subprocess.run(
        [sys.executable, "-m", "services.node.cli", "--state-dir", str(tmp_path / "state"), "--no-model",
         "--cluster-secret-file", str(path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2 and f"chmod 600 {path}" in result.stderr, result.stderr
    assert not (tmp_path / "state" / "cluster.secret").exists()
