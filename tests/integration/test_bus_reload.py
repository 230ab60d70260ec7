"""A clustered node's bus that learns a new peer reloads its routes without dropping its clients.

Three real nats-servers on loopback, run as a node runs them (EmbeddedBus under the Supervisor). The first
is told of the third after it started, as when a machine is switched on later, and reloads (SIGHUP). Its
services must stay connected through that: a disconnect can lose the delivery of an event, and the
configuration that nats-server reloads must not make it drop clients (its single-user `authorization`
form did, on every reload).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats
import pytest

from services.node.embedded_bus import EmbeddedBus, base_config
from services.node.nats_server import wait_for_port
from services.node.supervisor import BUS_CHILD, Supervisor
from shared.cluster_secret import nats_credentials
from tests.conftest import free_port

pytestmark = pytest.mark.slow

SECRET = "c3" * 32


async def test_new_routes_are_added_without_dropping_clients(tmp_path: Path) -> None:
    client_ports = [free_port() for _ in range(3)]
    route_ports = [free_port() for _ in range(3)]
    routes = [f"127.0.0.1:{p}" for p in route_ports]
    supervisor = Supervisor()
    buses = [
        EmbeddedBus(supervisor, tmp_path / f"n{i}", base_config(
            tmp_path / f"n{i}", f"node-{i}", SECRET, "127.0.0.1", client_ports[i], "127.0.0.1", route_ports[i]))
        for i in range(3)
    ]  # fmt: skip
    try:
        await buses[0].start((routes[1],))
        await buses[1].start((routes[0],))
        for port in client_ports[:2]:
            assert await asyncio.to_thread(wait_for_port, "127.0.0.1", port, 15.0)
        user, password = nats_credentials(SECRET, "master")  # the role that may publish on any subject
        dropped: list[str] = []

        async def on_disconnect() -> None:
            dropped.append("disconnected")

        nc = await nats.connect(f"nats://127.0.0.1:{client_ports[0]}", user=user, password=password,
                                disconnected_cb=on_disconnect, reconnect_time_wait=0.2)  # fmt: skip
        pid = supervisor.pid_of(BUS_CHILD)

        await buses[2].start((routes[0],))  # the new machine
        assert buses[0].apply_routes((routes[2],)) == "reloaded"
        assert routes[2] in (tmp_path / "n0" / "nats" / "nats.conf").read_text()
        await asyncio.sleep(2.0)  # a dropped client is told at once (EOF); give the reload time to act
        assert dropped == [] and nc.is_connected
        assert supervisor.pid_of(BUS_CHILD) == pid  # reloaded, not restarted
        # the connection still works, and the third server is in the same NATS cluster
        assert await asyncio.to_thread(wait_for_port, "127.0.0.1", client_ports[2], 15.0)
        other = await nats.connect(f"nats://127.0.0.1:{client_ports[2]}", user=user, password=password)
        sub = await other.subscribe("exo.test.reload")
        await other.flush()
        for _ in range(50):  # the interest crosses the route
            await nc.publish("exo.test.reload", b"hello")
            try:
                msg = await sub.next_msg(timeout=0.2)
                break
            except nats.errors.TimeoutError:
                continue
        else:
            pytest.fail("a message published on the first server never reached the third")
        assert msg.data == b"hello"
        await other.close()
        await nc.close()
    finally:
        await supervisor.stop()
