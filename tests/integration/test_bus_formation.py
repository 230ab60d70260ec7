"""A node that started alone meets its first peer later (the usual case: machines are switched on one by one).

Two nodes on loopback, each with its own bus, find each other by static peers (`--peers`: loopback carries no
broadcast between them). The first, alone until then, restarts its bus as a member of the NATS cluster and
places its model again; the second starts clustered at once (or, when it hears the first only after its
formation window, as on a loaded machine, restarts too). Both then see one cluster state.
"""

from __future__ import annotations

from collections.abc import Callable

import openai
import pytest

from tests.conftest import MODEL, Node, free_port, free_udp_port

pytestmark = pytest.mark.slow


def test_a_lone_node_joins_the_cluster_of_its_first_peer(start_node: Callable[..., Node]) -> None:
    disc_a, disc_b = free_udp_port(), free_udp_port()
    route_a, route_b = free_port(), free_port()
    common = ("--cluster-bind", "127.0.0.1")
    a = start_node("form-a", "--discovery-port", str(disc_a), "--route-port", str(route_a),
                   "--peers", f"127.0.0.1:{disc_b}", *common)  # fmt: skip
    try:
        a_id = a.health()["master"]
        b = start_node("form-b", "--no-model", "--discovery-port", str(disc_b), "--route-port", str(route_b),
                       "--peers", f"127.0.0.1:{disc_a}", *common)  # fmt: skip
        try:
            both = a.wait_until(lambda h: len(h["nodes"]) == 2 and bool(h["ready_instances"]), 120,
                                "two nodes and the model placed again")  # fmt: skip
            assert a_id in both["nodes"]
            b.wait_until(lambda h: h["nodes"] == both["nodes"] and bool(h["ready_instances"]), 60, "the same state")
            assert "restarting this node's bus as a member of the cluster" in a.output_path.read_text()
            client = openai.OpenAI(base_url=b.api_url, api_key="none", timeout=120, max_retries=0)
            r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                               max_tokens=4, temperature=0)  # fmt: skip
            assert r.usage.completion_tokens >= 1
        finally:
            b.stop()
    finally:
        a.stop()
