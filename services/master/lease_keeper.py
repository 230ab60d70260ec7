"""The I/O side of the leader lease (rules in lease.py): campaign with `create`, renew with `update`, release
with `delete`, all conditional on the key's last revision. Tells the master when it wins or loses; the
callbacks are plain functions so that nothing the master does on winning can delay a renewal."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import nats.errors
import structlog
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, KeyWrongLastSequenceError
from nats.js.client import KV_STREAM_TEMPLATE
from nats.js.kv import KeyValue

from shared.subjects import LEADER_BUCKET, LEADER_KEY

from services.master.lease import (
    CAMPAIGN_EVERY_S,
    LEASE_TTL_S,
    SIT_OUT_S,
    Lease,
    expired_locally,
    lease_bucket_config,
    renew_due,
    seconds_until_renewal,
    won,
)

log = structlog.get_logger()

BUS_ERRORS = (nats.errors.Error, asyncio.TimeoutError, OSError)


async def ensure_lease_bucket(js: JetStreamContext) -> KeyValue:
    """The lease bucket, made if missing. The one place that creates it (config: lease.lease_bucket_config)."""
    try:
        return await js.key_value(LEADER_BUCKET)
    except BucketNotFoundError:
        return await js.create_key_value(lease_bucket_config())  # identical concurrent creations both succeed


class LeaseKeeper:
    def __init__(
        self,
        js: JetStreamContext,
        node_id: str,
        on_won: Callable[[int], None],
        on_lost: Callable[[str], None],
    ) -> None:
        self._js = js
        self._node_id = node_id
        self._on_won = on_won
        self._on_lost = on_lost
        self._kv: KeyValue | None = None
        self._lease: Lease | None = None
        self._wake = asyncio.Event()
        self._advancing = False  # no campaign while advance_past deletes the lease and moves the sequence
        self._sitting_out_until = 0.0  # monotonic time before which this master does not campaign (give_up)

    @property
    def lease(self) -> Lease | None:
        return self._lease

    async def run(self, stop: asyncio.Event) -> None:
        """Campaign and renew until `stop` is set. Does not release: the master first stops writing."""
        while self._kv is None and not stop.is_set():
            try:
                self._kv = await ensure_lease_bucket(self._js)
            except BUS_ERRORS as exc:
                log.warning("lease bucket not reachable yet", error=str(exc))
                await self._sleep(stop, 1.0)
        while not stop.is_set():
            if self._lease is None:
                if not self._advancing and time.monotonic() >= self._sitting_out_until:
                    await self._campaign()
                await self._sleep(stop, 0 if self._lease is not None else CAMPAIGN_EVERY_S)
            else:
                if renew_due(self._lease, time.monotonic()):
                    await self._renew()
                if self._lease is not None:
                    await self._sleep(stop, seconds_until_renewal(self._lease, time.monotonic()))

    def give_up(self, reason: str, sit_out_s: float = SIT_OUT_S) -> None:
        """The master may not or cannot write (another leader claimed the log, or its claim failed): drop the
        lease now, and leave the next `sit_out_s` to the other masters' campaigns."""
        self._sitting_out_until = time.monotonic() + sit_out_s
        lease, self._lease = self._lease, None
        if lease is not None:
            log.warning("giving up the leader lease", term=lease.term, reason=reason)
            asyncio.get_running_loop().create_task(self._delete(lease))
        self._wake.set()

    async def release(self) -> None:
        """Let the next master take over at once instead of after the TTL (a clean stop)."""
        lease, self._lease = self._lease, None
        if lease is not None and await self._delete(lease):
            log.info("leader lease released", term=lease.term)

    async def advance_past(self, term: int) -> None:
        """The log has a leader term >= this lease's: let go of the lease, and if the lease bucket's sequence
        is behind `term` (the bucket was re-made or lost its data), move it past, so the next term is larger.
        If the sequence is not behind, this lease was simply overtaken (a newer leader claimed the log while
        this one was slow to): nothing is purged, the newer leader's lease stays."""
        self._advancing = True
        try:
            lease, self._lease = self._lease, None
            if lease is not None:
                await self._delete(lease)
            stream = KV_STREAM_TEMPLATE.format(bucket=LEADER_BUCKET)
            last_seq = (await self._js.stream_info(stream)).state.last_seq
            if last_seq < term:
                await self._js.purge_stream(stream, seq=term + 1)  # the first (and next) sequence becomes term + 1
                log.warning("lease sequence moved past the log's leader term", term=term, was=last_seq)
        finally:
            self._advancing = False
            self._wake.set()

    async def _campaign(self) -> None:
        assert self._kv is not None
        try:
            revision = await self._kv.create(LEADER_KEY, self._node_id.encode())
        except KeyWrongLastSequenceError:
            return  # someone holds it
        except BUS_ERRORS as exc:
            log.debug("campaign failed", error=str(exc))
            return
        self._lease = won(revision, time.monotonic())
        log.info("won the leader lease", term=revision)
        self._on_won(revision)

    async def _renew(self) -> None:
        assert self._kv is not None and self._lease is not None
        lease = self._lease
        now = time.monotonic()
        if expired_locally(lease, now):
            self._lose(f"no renewal for {now - lease.renewed_at:.1f} s (lease TTL {LEASE_TTL_S} s)")
            return
        budget = lease.renewed_at + LEASE_TTL_S - now  # a renewal that arrives later is worth nothing
        try:
            revision = await asyncio.wait_for(
                self._kv.update(LEADER_KEY, self._node_id.encode(), last=lease.revision), budget
            )
        except KeyWrongLastSequenceError:
            if self._lease is lease:  # else dropped meanwhile (give_up, release): its delete came first
                self._lose("the lease was taken over (it expired)")
            return
        except BUS_ERRORS as exc:
            if self._lease is lease:
                self._lose(f"renewal failed: {exc!r}")
            return
        if self._lease is lease:
            self._lease = lease.renewed(revision, now)
        else:
            # Dropped while this renewal was in flight, and the renewal landed first: the key now has the
            # renewal's revision, so the delete made with the old one failed. Delete it with this one, or the
            # next master waits out the TTL.
            await self._delete(lease.renewed(revision, now))

    def _lose(self, reason: str) -> None:
        lease, self._lease = self._lease, None
        log.warning("lost the leader lease", term=lease.term if lease else None, reason=reason)
        self._on_lost(reason)

    async def _delete(self, lease: Lease) -> bool:
        assert self._kv is not None
        try:
            await self._kv.delete(LEADER_KEY, last=lease.revision)  # only if it is still ours
            return True
        except BUS_ERRORS as exc:
            log.info("leader lease not released (it expires on its own)", term=lease.term, error=str(exc))
            return False

    async def _sleep(self, stop: asyncio.Event, seconds: float) -> None:
        self._wake.clear()
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
