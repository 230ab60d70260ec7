"""What the gateway measures about the requests it serves, for the dashboard's charts: a ring of one-second
buckets over the last few minutes (tokens, time to first token), and the requests waiting or in flight now.

Pure: every method takes the time, so tests drive it with plain numbers. The inference recorder
(services/gateway/inference_recorder.py), which sees every request, feeds it; one event loop, so no lock.
"""

from __future__ import annotations

from dataclasses import dataclass

WINDOW_S = 300  # what the charts show: the last five minutes


@dataclass
class Bucket:
    second: int
    tokens: int = 0
    first_tokens: int = 0  # requests whose first token came in this second
    ttft_total_s: float = 0.0
    finished: int = 0
    peak_waiting: int = 0  # the most requests waiting at once in this second
    peak_in_flight: int = 0
    waiting_after: int = 0  # the gauges when the second's last change was made: carried into quiet seconds
    in_flight_after: int = 0


class Meter:
    def __init__(self, window_s: int = WINDOW_S) -> None:
        self.window_s = window_s
        self._ring: list[Bucket | None] = [None] * window_s
        self.waiting = 0  # submitted, no token yet (queued on a runner, or prefilling)
        self.in_flight = 0  # generating: the first token came, the last not yet
        self.completed = 0  # requests ended, since the gateway started

    def _bucket(self, now: float) -> Bucket:
        second = int(now)
        slot = second % self.window_s
        bucket = self._ring[slot]
        if bucket is None or bucket.second != second:
            # a new second starts with the gauges as they are: a bucket made for tokens alone carries them on
            bucket = self._ring[slot] = Bucket(second, waiting_after=self.waiting, in_flight_after=self.in_flight)
        return bucket

    def _gauges_changed(self, now: float) -> None:
        bucket = self._bucket(now)
        bucket.peak_waiting = max(bucket.peak_waiting, self.waiting)
        bucket.peak_in_flight = max(bucket.peak_in_flight, self.in_flight)
        bucket.waiting_after, bucket.in_flight_after = self.waiting, self.in_flight

    def started(self, now: float) -> None:
        self.waiting += 1
        self._gauges_changed(now)

    def first_token(self, now: float, ttft_s: float) -> None:
        self.waiting -= 1
        self.in_flight += 1
        bucket = self._bucket(now)
        bucket.first_tokens += 1
        bucket.ttft_total_s += ttft_s
        self._gauges_changed(now)

    def tokens(self, now: float, count: int) -> None:
        if count > 0:
            self._bucket(now).tokens += count

    def ended(self, now: float, had_first_token: bool) -> None:
        """A request ends once, finished, failed or cancelled: before its first token or after it."""
        if had_first_token:
            self.in_flight -= 1
        else:
            self.waiting -= 1
        self.completed += 1
        self._bucket(now).finished += 1
        self._gauges_changed(now)

    def series(self, now: float, step_s: int = 5) -> dict:
        """The last window in steps of `step_s` seconds, oldest first (the current, partial second left out):
        tokens/s, mean time to first token (None in a step where no request began to answer), and the most
        requests waiting and in flight at once (a quiet step keeps the gauges the last change left)."""
        end = int(now)
        start = end - self.window_s + 1
        tokens_per_s: list[float] = []
        ttft_ms: list[float | None] = []
        waiting: list[int] = []
        in_flight: list[int] = []
        carried = (0, 0)  # (waiting, in flight) after the last change seen so far; before the window: unknown, 0
        for step_start in range(start - (start % step_s), end, step_s):
            seconds = [s for s in range(step_start, step_start + step_s) if start <= s < end]
            buckets = [b for s in seconds if (b := self._ring[s % self.window_s]) is not None and b.second == s]
            tokens = sum(b.tokens for b in buckets)
            firsts = sum(b.first_tokens for b in buckets)
            tokens_per_s.append(round(tokens / max(1, len(seconds)), 2))
            ttft_ms.append(round(1000 * sum(b.ttft_total_s for b in buckets) / firsts, 1) if firsts else None)
            waiting.append(max([carried[0], *(b.peak_waiting for b in buckets)]))
            in_flight.append(max([carried[1], *(b.peak_in_flight for b in buckets)]))
            if buckets:
                carried = (buckets[-1].waiting_after, buckets[-1].in_flight_after)
        return {
            "step_s": step_s,
            "window_s": self.window_s,
            "tokens_per_s": tokens_per_s,
            "ttft_ms": ttft_ms,
            "waiting_series": waiting,
            "in_flight_series": in_flight,
            "waiting": self.waiting,
            "in_flight": self.in_flight,
            "completed": self.completed,
        }
