"""NATS helpers: a connection that keeps reconnecting, the event stream, and a follower that replays it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import msgspec
import nats
import nats.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext, api
from nats.js.errors import APIError, NotFoundError

from shared.apply import apply
from shared.bus_roles import OPERATOR
from shared.cluster_secret import (
    SECRET_ENV,
    event_key,
    nats_credentials,
    normalise,
    redact,
    remember,
    remembered,
    stored,
    without_credentials,
)
from shared.config import default_state_dir, environment
from shared.commands import CommandReply, decode_reply
from shared.event_signing import refusal
from shared.events import AnyEvent, decode_event
from shared.state import ClusterState
from shared.subjects import EVENTS_STREAM, EVENTS_SUBJECT

log = structlog.get_logger()

WRONG_LAST_SEQUENCE = 10071


async def connect(url: str, name: str, *, role: str = OPERATOR, first_connect_timeout: float = 30.0) -> NATS:
    """Connect as `role` (its rights: shared/bus_roles.py), retrying while the server starts; afterwards
    nats-py reconnects on its own, forever.

    A bus that refuses our credentials fails at once with the reason (nats-py alone would retry for ever)."""
    connected_once = False
    refused = asyncio.Event()

    async def on_error(exc: Exception) -> None:
        if not connected_once and "authorization" in str(exc).lower():
            refused.set()
        # before the first connection the caller reports; afterwards nats-py reconnects by itself
        (log.warning if connected_once else log.debug)("nats error", error=str(exc))

    async def on_disconnect() -> None:
        log.warning("nats disconnected")

    async def on_reconnect() -> None:
        log.info("nats reconnected")

    loop = asyncio.get_running_loop()
    deadline = loop.time() + first_connect_timeout
    reason: object = f"no answer in {first_connect_timeout:.0f} s"
    while loop.time() < deadline and not refused.is_set():
        attempt = asyncio.create_task(
            nats.connect(
                without_our_credentials(url),
                name=name,
                **bus_credentials(url, role),
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                connect_timeout=2,
                error_cb=on_error,
                disconnected_cb=on_disconnect,
                reconnected_cb=on_reconnect,
            )
        )
        watch = asyncio.create_task(refused.wait())
        done, _ = await asyncio.wait(
            {attempt, watch}, timeout=max(0.0, deadline - loop.time()), return_when=asyncio.FIRST_COMPLETED
        )
        watch.cancel()
        if attempt in done and attempt.exception() is None:
            connected_once = True
            return attempt.result()
        if attempt in done:
            reason = attempt.exception()
            await asyncio.sleep(0.2)  # the server may still be starting
        else:
            attempt.cancel()
    if refused.is_set():
        raise ConnectionError(
            f"the bus at {redact(url)} refused our credentials: give every node of a cluster the same secret "
            f"(`exo join`, --cluster-secret-file or env {SECRET_ENV}; the first node keeps it in "
            f"<state-dir>/cluster.secret)"
        )
    raise ConnectionError(f"cannot reach NATS at {redact(url)}: {reason}")


async def disconnect(nc: NATS) -> None:
    """Let go of the bus at a service's stop: drain a connected client (what it sent and was sent is not
    lost), close one whose bus is gone or that cannot drain (drain would raise, or wait for a server that is
    not there)."""
    if nc.is_closed:
        return
    if nc.is_connected:
        try:
            await nc.drain()
            return
        except (nats.errors.Error, OSError) as exc:
            log.warning("could not drain the bus connection; closing it", error=str(exc))
    try:
        await nc.close()
    except OSError as exc:  # the connection broke while closing: it is closed all the same
        log.debug("bus connection closed with an error", error=str(exc))


def process_secret() -> str | None:
    """The secret this process knows: remembered by its service's or runner's spec (shared.config), else (a
    tool) from the environment or the state dir the environment names."""
    given = remembered()
    if given is None and (given := environment().get("cluster_secret")):
        remember(given)  # taken out of the environment: kept in memory for the next connection
    return normalise(given) if given else stored(default_state_dir())


def process_event_key() -> bytes | None:
    secret = process_secret()
    return event_key(secret) if secret else None


def ours(url: str) -> bool:
    """A URL with credentials of one of our roles (the tests' URLs carry the operator's)."""
    return (urlsplit(url).username or "").startswith("exo")


def bus_credentials(url: str, role: str = OPERATOR) -> dict[str, str]:
    """The user and password of `role` on the cluster's bus, derived from the secret. A URL that carries
    credentials of its own keeps them, unless they are one of our roles' and we know the secret: then each
    service still connects as its own role (a node joined with --nats-url nats://exo-operator:...@host)."""
    secret = process_secret()
    if not secret or (urlsplit(url).username and not ours(url)):
        return {}
    user, password = nats_credentials(secret, role)
    return {"user": user, "password": password}


def without_our_credentials(url: str) -> str:
    return without_credentials(url) if ours(url) and process_secret() else url


async def ensure_event_stream(js: JetStreamContext) -> None:
    try:
        await js.stream_info(EVENTS_STREAM)
    except NotFoundError:
        await js.add_stream(
            api.StreamConfig(
                name=EVENTS_STREAM,
                subjects=[EVENTS_SUBJECT],
                storage=api.StorageType.FILE,
                retention=api.RetentionPolicy.LIMITS,
                discard=api.DiscardPolicy.OLD,
            )
        )


async def stream_last_seq(js: JetStreamContext) -> int:
    info = await js.stream_info(EVENTS_STREAM)
    return info.state.last_seq


EventHandler = Callable[[ClusterState, AnyEvent], Awaitable[None] | None]


STALL_S = 1.5  # a follower behind the stream that applies nothing for this long has lost its subscription
WATCH_EVERY_S = 5.0  # how often a follower checks, between catch-ups, that it is not behind for good


class StateFollower:
    """Replays the event stream from the start and follows it, keeping `state` current.

    An ordered consumer re-creates itself after a gap or a reconnect, so the state never misses an event,
    with one exception that nats-py does not cover: a consumer that has delivered nothing yet cannot see
    that it missed its first message (lost while the connection was down; the server's heartbeats keep
    saying the consumer is fine). So the follower also compares itself with the stream: behind it and not
    moving, it subscribes again from the event after the last one it applied (`_watch`, `catch_up`).
    """

    def __init__(
        self,
        js: JetStreamContext,
        on_event: EventHandler | None = None,
        watch_every_s: float = WATCH_EVERY_S,
        key: bytes | None = None,
    ) -> None:
        """`key`: the event signing key (default: derived from this process's secret). Without any secret
        nothing is verified (a bus without credentials has no secret to sign with either)."""
        self._js = js
        self._on_event = on_event
        self.key = key if key is not None else process_event_key()
        if self.key is None:
            log.warning("no cluster secret: events are applied unverified")
        self.refused = 0  # events not applied: unsigned, or not signed by the term's leader
        self._watch_every_s = watch_every_s
        self.state = ClusterState()
        self._changed = asyncio.Condition()
        self._sub: JetStreamContext.PushSubscription | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._resubscribing = asyncio.Lock()
        self.resubscribed = 0  # how many times a stalled subscription was replaced

    async def start(self) -> None:
        await self._wait_for_stream()
        await self._subscribe()
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _subscribe(self) -> None:
        """An ordered consumer from the event after the last one applied (from the start, at first)."""
        start = self.state.last_seq + 1
        config = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.ALL) if start == 1 else api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start)  # fmt: skip
        self._sub = await self._js.subscribe(EVENTS_SUBJECT, ordered_consumer=True, config=config, cb=self._handle)

    async def _resubscribe_if_stuck(self, applied: int, stream_seq: int) -> None:
        """Subscribe again from the next event, unless an event was applied since `applied` was read."""
        async with self._resubscribing:
            if self.state.last_seq != applied or self.state.last_seq >= stream_seq:
                return
            log.warning("event stream follower stalled; subscribing again", applied=applied, stream=stream_seq)
            old, self._sub = self._sub, None
            if old is not None:
                try:
                    await old.unsubscribe()
                except (nats.errors.Error, TimeoutError) as exc:  # its consumer ends by inactivity then
                    log.debug("stalled subscription not removed", error=str(exc))
            try:
                await self._subscribe()
            except (nats.errors.Error, TimeoutError) as exc:  # no subscription now: the next check tries again
                log.warning("event stream follower could not subscribe again", error=str(exc))
                return
            self.resubscribed += 1

    async def _watch(self) -> None:
        """Between catch-ups: behind the stream at two checks in a row with nothing applied in between."""
        behind_at: int | None = None  # last_seq at the previous check, if the follower was behind then
        while True:
            await asyncio.sleep(self._watch_every_s)
            try:
                stream_seq = await stream_last_seq(self._js)
                applied = self.state.last_seq
                if stream_seq > applied and behind_at == applied:
                    await self._resubscribe_if_stuck(applied, stream_seq)
                behind_at = applied if stream_seq > applied else None
            except (nats.errors.Error, TimeoutError, OSError) as exc:  # the bus is away: next round
                log.debug("event stream not checked", error=str(exc))

    async def _wait_for_stream(self) -> None:
        while True:
            try:
                await self._js.stream_info(EVENTS_STREAM)
                return
            except NotFoundError:
                await asyncio.sleep(0.2)  # the master creates it; until then there is nothing to replay

    async def _handle(self, msg: Msg) -> None:
        seq = msg.metadata.sequence.stream
        if seq <= self.state.last_seq:
            return
        try:
            event = decode_event(msg.data)
        except Exception as exc:  # noqa: BLE001 - one unreadable event must not stop the follower
            log.error("undecodable event skipped", seq=seq, error=str(exc))
            event = None
        reason = None
        if self.key is not None and event is not None:
            reason = refusal(self.key, msg.headers, seq, msg.data, event, self.state)
        if reason is not None:
            log.error("event refused: not written by the leader", seq=seq, kind=type(event).__name__, reason=reason)
            self.refused += 1
        if event is None or reason is not None:
            # passed over, not applied: the state's sequence moves on so that the master's next append (which
            # expects the stream's last sequence) and catch_up do not wait for it for ever
            self.state = msgspec.structs.replace(self.state, last_seq=seq)
        else:
            self.state = apply(self.state, event, seq)
            if self._on_event is not None:
                result = self._on_event(self.state, event)
                if asyncio.iscoroutine(result):
                    await result
        async with self._changed:
            self._changed.notify_all()

    async def wait_for_seq(self, seq: int, timeout: float = 10.0) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: self.state.last_seq >= seq), timeout)

    async def catch_up(self, timeout: float = 10.0) -> None:
        """Wait until every event that is in the stream now has been applied. A follower that applies nothing
        for STALL_S meanwhile subscribes again (see the class), so one lost message does not cost `timeout`."""
        target = await stream_last_seq(self._js)
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            applied = self.state.last_seq
            left = deadline - asyncio.get_running_loop().time()
            try:
                await self.wait_for_seq(target, max(0.0, min(STALL_S, left)))
                return
            except TimeoutError:
                if left <= STALL_S:
                    raise
            await self._resubscribe_if_stuck(applied, target)

    async def wait_until(self, predicate: Callable[[ClusterState], bool], timeout: float) -> ClusterState:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: predicate(self.state)), timeout)
        return self.state

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        if self._sub is not None:
            await self._sub.unsubscribe()


async def send_command(nc: NATS, subject: str, payload: bytes, attempts: int = 20) -> CommandReply | None:
    """Request/reply to the master, retrying while none answers (it may be restarting). None if none did."""
    for attempt in range(attempts):
        try:
            msg = await nc.request(subject, payload, timeout=2.0)
            return decode_reply(msg.data, msg.headers, CommandReply)
        except (NoRespondersError, NatsTimeout):
            await asyncio.sleep(min(0.25 * (attempt + 1), 2.0))
    return None


MAX_REPLICAS = 3


async def scale_replicas(js: JetStreamContext, stream: str, most: int = MAX_REPLICAS) -> int:
    """Raise a stream's replicas towards `most` as far as the NATS cluster has servers for (JetStream
    refuses more replicas than servers, and any above one on a standalone server). Returns the count."""
    info = await js.stream_info(stream)
    current = info.config.num_replicas or 1
    for target in range(most, current, -1):
        config = info.config
        config.num_replicas = target
        try:
            await js.update_stream(config)
        except APIError:
            continue  # not enough servers (yet) for this many
        log.info("stream replicas raised", stream=stream, replicas=target, was=current)
        return target
    return current
