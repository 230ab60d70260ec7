"""The leader's writer of the inference log, and the query endpoint that reads it.

Why this shape:
- The gateway publishes one small InferenceRecord per finished request to the EXO_INFERENCES stream, after the
  response is done and without the client waiting on it; nothing about the log is on the request path.
- One writer: the leader master pulls records in batches (up to BATCH_MAX or BATCH_WAIT_S), inserts them
  into DuckLake (services/master/lake.py) and only then acks. A master killed mid-batch acked nothing, so the
  records come again; a row's key is the request id and an insert skips ids the table has, so a redelivered
  record never becomes a second row.
- The consumer is durable and named after the node, and the stream keeps records for RETENTION (not a work
  queue): a node that becomes leader catches its own lake up from where it left off (everything in the
  stream the first time), so each leader's lake is whole, not a piece of the history split across nodes.
- Queries go to the leader over the bus (INFERENCES_QUERY), so `exo sql` and the gateway work from any node.
  Writer and queries share one DuckDB instance and take turns (one lock); the lake is attached only while
  one of them runs, so a plain duckdb shell can attach it in between (a batch that finds it held waits).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import msgspec
import nats.errors
import structlog
from nats.aio.client import Client as NATS
from nats.js import api
from nats.micro.request import Request
from nats.micro.service import Service

from services.master.lake import Lake, LakeBusy
from shared import subjects
from shared.bus import scale_replicas
from shared.inference_log import InferenceQuery, InferenceRecord, InferenceRows, ensure_inference_stream
from shared.process_lifetime import register

log = structlog.get_logger()
R = TypeVar("R")

BATCH_MAX = 200
BATCH_WAIT_S = 1.0  # a batch is written at most this long after its first record came
RETRY_S = 2.0  # after a failed write (lake busy, disk full): the records wait in the stream meanwhile
ACK_WAIT_S = 10.0  # a batch not acked by then comes again (its writer died); a slow one is deduplicated
FLUSH_ROWS = 1000  # rows written inline (in the catalog) before they are moved into a Parquet file
FLUSH_EVERY_S = 300.0  # or this long after the first of them; and when the writer stops
REPLICATE_EVERY = 30  # batches (or idle fetches) between two checks that the stream is replicated


def consumer_name(node_id: str) -> str:
    return f"{subjects.INFERENCES_CONSUMER_PREFIX}-{node_id}"


def decode_records(payloads: list[bytes]) -> tuple[list[InferenceRecord], list[str]]:
    """The records among the payloads, and why each other one is unreadable (those are acked and dropped:
    a record no writer can read would otherwise come back for ever)."""
    records, problems = [], []
    for data in payloads:
        try:
            records.append(msgspec.json.decode(data, type=InferenceRecord))
        except msgspec.DecodeError as exc:
            problems.append(f"{exc}: {data[:200]!r}")
    return records, problems


async def _quietly(end: Callable[[], Awaitable[None]]) -> None:
    """End a subscription; an error means the connection is going anyway."""
    try:
        await end()
    except (nats.errors.Error, ValueError) as exc:
        log.debug("inference log subscription not ended cleanly", error=str(exc))


def _report_if_failed(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("inference log writer stopped; records wait in the stream", exc_info=task.exception())


def should_flush(unflushed_rows: int, oldest_age_s: float) -> bool:
    """Time to move the inline rows into a data file: enough of them, or the oldest has waited long enough."""
    return unflushed_rows >= FLUSH_ROWS or (unflushed_rows > 0 and oldest_age_s > FLUSH_EVERY_S)


class InferenceLog:
    """Started when this master wins the lease, stopped when it loses it (services/master/service.py)."""

    def __init__(self, nc: NATS, node_id: str, lake_dir: Path) -> None:
        self.nc = nc
        self.node_id = node_id
        self.lake = Lake(lake_dir)
        self._turn = asyncio.Lock()  # the writer and queries take turns on the one DuckDB instance
        self._task: asyncio.Task | None = None
        self._psub = None  # the pull subscription, once made
        self._service: Service | None = None
        self.written = 0  # rows added by this writer (redeliveries of rows already there not counted)
        self._unflushed = 0
        self._unflushed_since = 0.0

    async def start(self) -> None:
        """Answer queries now; pull and write in a task that keeps trying until the bus and the lake let it."""
        self._service = await register(self.nc, subjects.SERVICE_INFERENCES, self.node_id, "the inference log")
        await self._service.add_endpoint(name="query", subject=subjects.INFERENCES_QUERY, handler=self._on_query)
        self._task = asyncio.get_running_loop().create_task(self._run())
        self._task.add_done_callback(_report_if_failed)

    async def _run(self) -> None:
        while True:
            try:
                self._psub = psub = await self._subscribe()
                break
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning("inference log cannot subscribe yet; trying again", error=str(exc))
                await asyncio.sleep(RETRY_S)
        try:  # the lake and its table exist from now on (and the extension is loaded)
            await self._in_turn(self.lake.write, [])
        except LakeBusy as exc:  # the first batch creates them then
            log.warning("inference log busy at start", error=str(exc))
        log.info("inference log writing", lake=str(self.lake.dir), consumer=consumer_name(self.node_id))
        await self._write_loop(psub)

    async def _subscribe(self):  # noqa: ANN202 - a nats-py PullSubscription
        js = self.nc.jetstream()
        await ensure_inference_stream(js)
        config = api.ConsumerConfig(
            durable_name=consumer_name(self.node_id),
            deliver_policy=api.DeliverPolicy.ALL,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=ACK_WAIT_S,
            max_ack_pending=BATCH_MAX * 10,
        )
        return await js.pull_subscribe(
            subjects.INFERENCES_SUBJECT, durable=config.durable_name, stream=subjects.INFERENCES_STREAM, config=config
        )

    async def stop(self) -> None:
        """Stop pulling and answering; records pulled and not yet written are not acked, so they come again."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._psub is not None:  # its durable consumer stays: the next term here resumes it
            await _quietly(self._psub.unsubscribe)
        if self._service is not None:
            await _quietly(self._service.stop)
        if self._unflushed:
            await self._flush()
        await self._in_turn(self.lake.close)

    async def _in_turn(self, call: Callable[..., R], *args: object) -> R:
        """Run a blocking lake call in a thread, on its turn. A thread cannot be stopped: cancelled meanwhile,
        this still holds the turn until the call ends, so no other call touches the DuckDB instance with it."""
        async with self._turn:
            running = asyncio.ensure_future(asyncio.to_thread(call, *args))
            try:
                return await asyncio.shield(running)
            except asyncio.CancelledError:
                await asyncio.wait({running})
                raise

    async def _write_loop(self, psub) -> None:  # noqa: ANN001 - a nats-py PullSubscription
        rounds = 0
        while True:
            rounds += 1
            if rounds % REPLICATE_EVERY == 1:
                await self._keep_replicated()
            msgs = await self._next_batch(psub)
            if msgs and not await self._write(msgs):
                await asyncio.sleep(RETRY_S)

    async def _next_batch(self, psub) -> list:  # noqa: ANN001
        """Up to BATCH_MAX messages: the first ones as they come, then more for up to BATCH_WAIT_S."""
        msgs: list = []
        loop = asyncio.get_running_loop()
        deadline = None
        while len(msgs) < BATCH_MAX:
            wait = BATCH_WAIT_S if deadline is None else deadline - loop.time()
            if wait <= 0.01:
                break
            try:
                msgs += await psub.fetch(BATCH_MAX - len(msgs), timeout=wait)
            except (nats.errors.TimeoutError, TimeoutError):
                if deadline is None:
                    return msgs  # nothing came: the caller loops
            except nats.errors.Error as exc:  # the bus is away: the caller loops and tries again
                log.debug("inference records not fetched", error=str(exc))
                await asyncio.sleep(RETRY_S)
                return msgs
            if msgs and deadline is None:
                deadline = loop.time() + BATCH_WAIT_S
        return msgs

    async def _write(self, msgs: list) -> bool:
        """Insert the batch, then ack it; False (nothing acked: the records come again) if it failed."""
        records, problems = decode_records([m.data for m in msgs])
        for problem in problems:
            log.error("unreadable inference record dropped", problem=problem)
        try:
            added = await self._in_turn(self.lake.write, records)
        except Exception as exc:
            if isinstance(exc, LakeBusy):
                log.warning("inference log busy; the batch waits", records=len(records), error=str(exc))
            else:
                log.exception("inference records not written; they wait in the stream", records=len(records))
            await self._nak(msgs)
            return False
        for msg in msgs:
            try:
                await msg.ack()
            except nats.errors.Error as exc:  # not acked: it comes again, and the insert skips it
                log.debug("inference record not acked", error=str(exc))
        log.info("inference records written", added=added, batch=len(msgs))
        self.written += added
        now = asyncio.get_running_loop().time()
        if added and not self._unflushed:
            self._unflushed_since = now
        self._unflushed += added
        if should_flush(self._unflushed, now - self._unflushed_since):
            await self._flush()
        return True

    async def _flush(self) -> None:
        """Inline rows into a data file. A failure only leaves them inline."""
        try:
            await self._in_turn(self.lake.flush)
            self._unflushed = 0
        except Exception as exc:
            log.warning("inference rows not flushed to a data file; trying later", error=str(exc))

    async def _nak(self, msgs: list) -> None:
        """Give a failed batch back to the stream at once (else it would wait for ACK_WAIT_S to come again)."""
        for msg in msgs:
            try:
                await msg.nak(delay=RETRY_S)
            except nats.errors.Error as exc:  # it comes again after ACK_WAIT_S all the same
                log.debug("inference record not given back", error=str(exc))

    async def _on_query(self, req: Request) -> None:
        try:
            query = msgspec.json.decode(req.data, type=InferenceQuery)
        except msgspec.DecodeError as exc:
            await req.respond(msgspec.json.encode(InferenceRows(error=f"bad InferenceQuery: {exc}")))
            return
        rows = await self._in_turn(self.lake.query, query.sql, max(1, query.max_rows))
        await req.respond(msgspec.json.encode(rows))

    async def _keep_replicated(self) -> None:
        try:
            await scale_replicas(self.nc.jetstream(), subjects.INFERENCES_STREAM)
        except (nats.errors.Error, TimeoutError) as exc:
            log.debug("inference stream replicas not raised this time", error=str(exc))


async def start_inference_log(nc: NATS, node_id: str, state_dir: Path) -> InferenceLog | None:
    """The leader's writer, started; None if it could not start (leading matters more than the log: the
    records wait in the stream for the next leader, or for this one's next term)."""
    writer = InferenceLog(nc, node_id, state_dir / "inferences")
    try:
        await writer.start()
    except Exception:
        log.exception("inference log not started; records wait in the stream")
        await writer.stop()
        return None
    return writer
