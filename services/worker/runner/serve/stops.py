"""Stop strings over streamed text: hold back only what could still become a stop string. Pure."""

from __future__ import annotations


class StopMatcher:
    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = tuple(s for s in stops if s)
        self._pending = ""
        self.hit: str | None = None  # the stop string reached, once one is

    def feed(self, text: str) -> tuple[str, bool]:
        """Returns (text safe to emit now, whether a stop string was reached)."""
        if not self.stops:
            return text, False
        buffer = self._pending + text
        hits = [(buffer.find(s), s) for s in self.stops if s in buffer]
        if hits:
            cut, self.hit = min(hits)
            self._pending = ""
            return buffer[:cut], True
        keep = self._longest_partial_suffix(buffer)
        self._pending = buffer[len(buffer) - keep :] if keep else ""
        return buffer[: len(buffer) - keep], False

    def flush(self) -> str:
        rest, self._pending = self._pending, ""
        return rest

    def _longest_partial_suffix(self, buffer: str) -> int:
        best = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(buffer)), best, -1):
                if stop.startswith(buffer[-n:]):
                    best = n
                    break
        return best
