"""Three hosts that share one hostname, as machines cloned from one image do: network namespaces on a bridge, each
running plain `exo` (no EXO_HOSTNAME: the namespaces share this machine's hostname). Issue 17: the cluster formed
and placed a 3-stage pipeline, but every rank was given a loopback address (same hostname = same machine, it was
decided) and the ring never connected. The nodes now tell machines apart by their host id (machine, boot, network
namespace), so the ring uses the hosts' addresses and the model answers.

A module of its own (the lab of test_netns_cluster.py must be down first: both use one subnet). Slow: run it alone.
"""

from __future__ import annotations

import json
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import MODEL, keep_or_remove_state
from tests.integration.test_netns_cluster import Host, start_host, stop_host, wait_for
from tests.netns_lab import Lab, skip_reason
from tests.shared_models import SharedModels

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def clones(request: pytest.FixtureRequest, shared_models: SharedModels) -> Iterator[list[Host]]:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    lab = Lab(3).up()
    root = Path(tempfile.mkdtemp(prefix="exo-netns-clones-"))
    started: list[Host] = []
    try:
        started = [start_host(lab, i, root, shared_models, hostname=None) for i in range(3)]
        yield started
    finally:
        for host in started:
            stop_host(host)
        lab.down()
        keep_or_remove_state(root, request, "netns clone state")


def test_hosts_with_one_hostname_run_a_three_stage_pipeline(clones: list[Host]) -> None:
    first = clones[0]
    wait_for("three nodes", lambda: len((first.health() or {}).get("nodes", [])) == 3, 90, clones)
    # discovery heard the peers under the one hostname they share
    names = {p.get("hostname") for h in clones for p in h.peers()}
    assert names == {socket.gethostname()}, names
    # Every host knows the three and one master (as test_netns_cluster waits for); a placement that still meets the
    # clustered bus electing its stream leaders answers 409 "nats: timeout" (seen in CI: EXO_EVENTS changed leader
    # as the append went out) and is tried again, as a user would.
    ids = sorted(h.node_id() for h in clones)
    for host in clones:
        wait_for(f"host {host.index} knowing all three nodes",
                 lambda host=host: (host.health() or {}).get("nodes") == ids, 60, clones)  # fmt: skip
    wait_for("one master for all", lambda: len({(h.health() or {}).get("master") for h in clones}) == 1, 60, clones)
    placed = wait_for("a placement past the bus's elections", lambda: place_unless_bus_timeout(first), 90, clones)
    assert len({s["node_id"] for s in placed["shards"]}) == 3, placed
    wait_for("a ready instance", lambda: (first.health() or {}).get("ready_instances"), 240, clones)
    # every host's ring hostfile lists the hosts' own addresses, none on loopback
    addresses = {h.address for h in clones}
    for host in clones:
        (hostfile,) = (host.state_dir / "dataplane").glob("*/*/hostfile.json")
        entries = [e.rpartition(":")[0] for rank in json.loads(hostfile.read_text()) for e in rank]
        assert set(entries) == addresses, (host.index, entries)
    client = openai.OpenAI(base_url=f"{clones[1].base_url}/v1", api_key="none", timeout=300, max_retries=0)
    answer = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say hello."}],
                                            max_tokens=8, temperature=0)  # fmt: skip
    assert answer.usage.completion_tokens >= 1


def place_unless_bus_timeout(host: Host) -> dict | None:
    """The placed instance; None to try again after a bus timeout, unless the timed-out append landed after all
    (then the instance is listed: it is never placed twice)."""
    listed = httpx.get(f"{host.base_url}/instances", timeout=10).json()["instances"]
    if listed:
        return listed[0]
    r = httpx.post(f"{host.base_url}/instances", json={"model": MODEL}, timeout=60)
    if r.status_code == 409 and "nats: timeout" in r.text:
        return None
    assert r.status_code == 201, r.text
    return r.json()
