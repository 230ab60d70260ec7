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
    r = httpx.post(f"{first.base_url}/instances", json={"model": MODEL}, timeout=60)
    assert r.status_code == 201, r.text
    placed = r.json()
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
