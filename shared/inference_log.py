"""The inference log's contracts: one record per finished request, and the read-only query the leader answers.

The gateway publishes an InferenceRecord to the EXO_INFERENCES stream when a request ends (any API, any end);
the leader master writes them into the DuckLake table `exo_inferences` (services/master/inference_log.py) and
answers InferenceQuery on the bus (`exo log`, `exo sql`, GET /v1/inferences).
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext, api
from nats.js.errors import BadRequestError, NotFoundError

from shared.events import GROUP_TRITS
from shared.subjects import INFERENCES_QUERY, INFERENCES_STREAM, INFERENCES_SUBJECT

# The stream keeps records (it is not a work queue): a node that becomes leader fills its own lake from it.
RETENTION_S = 30 * 24 * 3600
RETENTION_BYTES = 1024**3
DUPLICATE_WINDOW_S = 120  # a publish retried with the same record id (Nats-Msg-Id) is stored once

# trit: the request's role in trifurcated inference (-1 validator, 0 main, +1 speculative draft; shared/events.py)
TRIT_MAIN = GROUP_TRITS["main"]


class InferenceRecord(msgspec.Struct, frozen=True):
    id: str  # the request id the client saw (chatcmpl-..., cmpl-...): the row's key, so a redelivery is no new row
    timestamp: float  # when the request ended, Unix seconds
    api: str  # "chat.completions", "completions"
    model: str
    instance: str | None  # None: it never reached one
    status: int  # the HTTP status the client got (200; 400, 429, 503, 5xx...); 499: the client went away
    finish_reason: str | None  # "stop", "length", "cancelled", "error"; None when the request never ran
    error: str | None
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    latency_ms: float  # from the gateway's submit to the last chunk, as the gateway measured it
    time_to_first_token_ms: float | None
    decode_tokens_per_s: float | None
    devices: int
    strategy: str | None
    seed: int | None  # None: greedy
    trit: int = TRIT_MAIN
    stream: bool = False


class InferenceQuery(msgspec.Struct, frozen=True):
    sql: str
    max_rows: int = 10_000


class InferenceRows(msgspec.Struct, frozen=True):
    columns: tuple[str, ...] = ()
    rows: tuple[tuple[Any, ...], ...] = ()
    truncated: bool = False  # more rows than max_rows (or than fit in one bus message)
    error: str | None = None


async def ensure_inference_stream(js: JetStreamContext) -> None:
    """Create the stream if it is missing (the leader does, when it takes over: only masters may use the
    JetStream API beyond reading; a gateway that publishes before the stream exists retries)."""
    try:
        await js.stream_info(INFERENCES_STREAM)
        return
    except NotFoundError:
        pass
    try:
        await js.add_stream(
            api.StreamConfig(
                name=INFERENCES_STREAM,
                subjects=[INFERENCES_SUBJECT],
                storage=api.StorageType.FILE,
                retention=api.RetentionPolicy.LIMITS,
                discard=api.DiscardPolicy.OLD,
                max_age=RETENTION_S,
                max_bytes=RETENTION_BYTES,
                duplicate_window=DUPLICATE_WINDOW_S,
            )
        )
    except BadRequestError:  # created meanwhile by the other one (same config): fine
        await js.stream_info(INFERENCES_STREAM)


LAST_INFERENCES_SQL = "SELECT * FROM exo_inferences ORDER BY timestamp DESC, id LIMIT {limit}"


async def query_inference_log(nc: NATS, query: InferenceQuery, timeout: float = 30.0, attempts: int = 10) -> InferenceRows:
    """Ask the leader's inference log; retries while no master answers (a leader change takes seconds)."""
    payload = msgspec.json.encode(query)
    for attempt in range(attempts):
        try:
            msg = await nc.request(INFERENCES_QUERY, payload, timeout=timeout)
            return msgspec.json.decode(msg.data, type=InferenceRows)
        except NoRespondersError:
            await asyncio.sleep(min(0.25 * (attempt + 1), 2.0))
        except NatsTimeout:
            return InferenceRows(error=f"the leader's inference log did not answer within {timeout:.0f} s")
    return InferenceRows(error="no leader master answers inference log queries (is the cluster up?)")
