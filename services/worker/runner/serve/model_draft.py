"""The main side of draft-model speculation: ModelDraft proposes like NgramDraft (extend, propose(k)), by asking
the draft instance's `propose` endpoint over NATS (only token ids cross). It sends the context's delta since its
last call (the draft instance keeps the rest), with a short timeout; a draft that does not answer, or answers an
error, raises DraftUnavailable and the request goes on as plain decoding (Speculating turns its pace off).

The engine thread calls it synchronously; the request itself goes through the runner's asyncio loop
(`bridge`: run_coroutine_threadsafe), which is free meanwhile (it only awaits the engine thread's cycle)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from shared.generation import DraftProposal, ProposeDraft

from services.worker.runner.serve.rank_drafts import share

# A call's timeout: a few single-token steps of a small model, and the tokens it has not seen yet to prefill (the
# whole prompt on the first call, a few after). Short, so a dead draft runner costs a request little: a call in
# flight when it died waits this long, later ones find no responders at once.
PROPOSE_TIMEOUT_S = 2.0
PREFILL_TIMEOUT_S_PER_TOKEN = 0.02
ERROR_HEADER = "Nats-Service-Error"  # nats micro's error headers (…-Code beside it)

Ask = Callable[[ProposeDraft, float], DraftProposal]  # (the request, its timeout): raises DraftUnavailable
Tell = Callable[[ProposeDraft], None]  # fire and forget


class DraftUnavailable(Exception):
    pass


class ModelDraft:
    """On a split main instance every rank holds one: rank 0 asks the draft instance (`ask`), the others have no
    `ask` and receive rank 0's drafts (rank_drafts.share), so every rank verifies the same ones."""

    def __init__(self, key: str, tokens: Sequence[int], ask: Ask | None, tell: Tell | None, group=None) -> None:  # noqa: ANN001
        self.key, self.ask, self.tell, self.group = key, ask, tell, group
        self.tokens: list[int] = list(tokens)
        self.sent = 0  # the context's tokens the draft instance has been sent
        self.calls = 0
        self.seconds = 0.0  # the calls' round trips, all together

    def extend(self, tokens: Sequence[int]) -> None:
        self.tokens.extend(tokens)

    def propose(self, k: int) -> list[int]:
        if k <= 0:
            return []
        if self.group is None:
            return self._asked(k)
        proposed, failure = None, None
        if self.ask is not None:
            try:
                proposed = self._asked(k)
            except DraftUnavailable as exc:
                failure = str(exc)
        found = share(self.group, proposed, failure, k)
        if found is None:
            raise DraftUnavailable(failure or "rank 0 has no draft: its draft instance did not answer")
        return found

    def _asked(self, k: int) -> list[int]:
        assert self.ask is not None
        start = time.perf_counter()
        delta = self.tokens[self.sent :]
        reply = self.ask(ProposeDraft(self.key, self.sent, delta, k), timeout_of(len(delta)))
        if reply.known < self.sent:  # it lost what it was sent (dropped idle, restarted): again from what it holds
            delta = self.tokens[reply.known :]
            reply = self.ask(ProposeDraft(self.key, reply.known, delta, k), timeout_of(len(delta)))
        self.calls += 1
        self.seconds += time.perf_counter() - start
        self.sent = len(self.tokens)
        return list(reply.tokens[:k])

    def close(self) -> None:
        """The request ended or left speculation: the draft instance drops its cache (no answer awaited)."""
        if self.sent and self.tell is not None:
            self.tell(ProposeDraft(self.key, 0, [], 0, done=True))

    @property
    def mean_ms(self) -> float | None:
        return round(1000 * self.seconds / self.calls, 2) if self.calls else None


def timeout_of(new_tokens: int) -> float:
    return PROPOSE_TIMEOUT_S + PREFILL_TIMEOUT_S_PER_TOKEN * new_tokens


class MlxWork:
    """Work for the runner's MLX thread that is run meanwhile when that thread waits for a draft of its own: two
    runners drafting for each other's requests (the same model placed twice, a speculating request on each) would
    otherwise each wait for the other's thread until both time out. Run on the thread's executor otherwise."""

    def __init__(self, executor: concurrent.futures.Executor) -> None:
        self.executor = executor
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future]] = queue.SimpleQueue()
        self._wake = threading.Event()

    def submit(self, job: Callable[[], Any]) -> concurrent.futures.Future:
        done: concurrent.futures.Future = concurrent.futures.Future()
        self._jobs.put((job, done))
        self._wake.set()
        self.executor.submit(self.run_pending)
        return done

    def run_pending(self) -> None:
        while True:
            try:
                job, done = self._jobs.get_nowait()
            except queue.Empty:
                return
            if done.set_running_or_notify_cancel():
                try:
                    done.set_result(job())
                except BaseException as exc:  # noqa: BLE001 - the submitter gets it
                    done.set_exception(exc)

    def wait(self, future: concurrent.futures.Future, timeout: float) -> Any:  # noqa: ANN401 - the future's
        """On the MLX thread: the future's result, running the jobs that come meanwhile."""
        deadline = time.monotonic() + timeout
        future.add_done_callback(lambda _: self._wake.set())
        while not future.done():
            self.run_pending()
            left = deadline - time.monotonic()
            if left <= 0 or future.done():
                break
            self._wake.wait(left)
            self._wake.clear()
        return future.result(timeout=0)


def bridge(nc: NATS, loop: asyncio.AbstractEventLoop, subject: str, work: MlxWork | None = None) -> tuple[Ask, Tell]:
    """Ask and tell `subject` from a thread other than the loop's (the MLX thread of `work`, which runs its jobs
    while it waits)."""

    def ask(request: ProposeDraft, timeout: float) -> DraftProposal:
        call = asyncio.run_coroutine_threadsafe(nc.request(subject, msgspec.json.encode(request), timeout=timeout), loop)
        try:
            msg = work.wait(call, timeout + 1.0) if work is not None else call.result(timeout + 1.0)
        except NoRespondersError:
            raise DraftUnavailable(f"no draft runner answers on {subject}") from None
        except (NatsTimeout, concurrent.futures.TimeoutError):
            call.cancel()
            raise DraftUnavailable(f"the draft instance did not answer within {timeout:.1f} s") from None
        except Exception as exc:  # noqa: BLE001 - the bus closed, a reconnect: no draft this time
            raise DraftUnavailable(f"asking the draft instance failed: {type(exc).__name__}: {exc}") from None
        if msg.headers and ERROR_HEADER in msg.headers:
            raise DraftUnavailable(f"the draft instance refused: {msg.headers[ERROR_HEADER]}")
        try:
            return msgspec.json.decode(msg.data, type=DraftProposal)
        except msgspec.DecodeError as exc:
            raise DraftUnavailable(f"unreadable draft proposal: {exc}") from None

    def tell(request: ProposeDraft) -> None:
        asyncio.run_coroutine_threadsafe(nc.publish(subject, msgspec.json.encode(request)), loop)

    return ask, tell
