"""A follower that lost an event while its connection was down still gets it, against a real nats-server.

The loss is made real with a TCP proxy between the follower and the server: the proxy swallows what the
server sends while an event is published, then cuts the connection, and nats-py reconnects. That is what a
bus reload or restart can do to a service. The event lost is the stream's first, the one case nats-py's
ordered consumer never notices by itself (it has no delivered message to compare the heartbeats with).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client as NATS

from shared.bus import STALL_S, StateFollower, ensure_event_stream
from shared.events import NodeLost, encode_event
from shared.subjects import EVENTS_SUBJECT

pytestmark = pytest.mark.slow


class SwallowingProxy:
    """Forwards TCP both ways; `swallowing` drops what the server sends; `cut()` closes every connection."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.swallowing = False
        self.swallowed = 0  # bytes dropped
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self._server.sockets[0].getsockname()[1]

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._writers += [client_w, server_w]

        async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, downstream: bool) -> None:
            with contextlib.suppress(OSError):
                while data := await reader.read(65536):
                    if downstream and self.swallowing:
                        self.swallowed += len(data)
                        continue
                    writer.write(data)
                    await writer.drain()
            writer.close()

        await asyncio.gather(pump(client_r, server_w, False), pump(server_r, client_w, True))

    def cut(self) -> None:
        for writer in self._writers:
            writer.close()
        self._writers.clear()

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()


@pytest.fixture
async def proxied(bus_url: str) -> AsyncIterator[tuple[NATS, NATS, SwallowingProxy]]:
    """(a direct client that publishes, a client through the proxy for the follower, the proxy)."""
    proxy = SwallowingProxy(int(bus_url.rsplit(":", 1)[1]))
    port = await proxy.start()
    direct = await nats.connect(bus_url)
    through = await nats.connect(f"nats://127.0.0.1:{port}", reconnect_time_wait=0.2, max_reconnect_attempts=-1)
    await ensure_event_stream(direct.jetstream())
    try:
        yield direct, through, proxy
    finally:
        await through.close()
        await direct.close()
        await proxy.stop()


async def lose_the_first_event(direct: NATS, through: NATS, proxy: SwallowingProxy) -> None:
    """Publish the stream's first event while the proxy swallows its delivery, then cut the connection."""
    proxy.swallowing = True
    await direct.jetstream().publish(EVENTS_SUBJECT, encode_event(NodeLost("node-x", "published while away")))
    await asyncio.sleep(0.5)  # the delivery reaches the proxy and is dropped
    assert proxy.swallowed > 0
    proxy.swallowing = False
    proxy.cut()
    for _ in range(100):  # nats-py notices and reconnects (through the proxy again)
        await asyncio.sleep(0.05)
        if through.is_connected and through.stats["reconnects"] > 0:
            return
    pytest.fail("the follower's client did not reconnect")


async def test_catch_up_gets_an_event_lost_in_a_disconnect(proxied: tuple[NATS, NATS, SwallowingProxy]) -> None:
    direct, through, proxy = proxied
    follower = StateFollower(through.jetstream(), watch_every_s=3600)  # catch_up alone must recover it
    await follower.start()
    await lose_the_first_event(direct, through, proxy)
    started = asyncio.get_running_loop().time()
    await follower.catch_up(timeout=10)  # what the master does before it claims the log
    assert follower.state.last_seq == 1 and follower.resubscribed == 1
    assert asyncio.get_running_loop().time() - started < STALL_S + 3
    # and it keeps following on the new subscription
    await direct.jetstream().publish(EVENTS_SUBJECT, encode_event(NodeLost("node-y", "after")))
    await follower.wait_for_seq(2, timeout=5)
    await follower.stop()


async def test_a_follower_that_never_catches_up_recovers_on_its_own(
    proxied: tuple[NATS, NATS, SwallowingProxy],
) -> None:
    direct, through, proxy = proxied
    follower = StateFollower(through.jetstream(), watch_every_s=0.5)  # as the gateway's: it only follows
    await follower.start()
    await lose_the_first_event(direct, through, proxy)
    await follower.wait_for_seq(1, timeout=10)
    assert follower.resubscribed == 1
    await follower.stop()
