"""`exo bench`'s pure core: the YAML config as a list of cases, the statistics of a case, and ratios to a baseline.

No I/O here: the runner (bench_cli.py) measures requests and hands plain numbers to these functions.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import msgspec

from shared.models import MODEL_CARDS

Strategy = Literal["auto", "pipeline", "tensor"]
Backend = Literal["auto", "ring", "jaccl"]


class BadConfig(ValueError):
    """The bench config cannot be run; the message says which field and why."""


class Placement(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    strategy: Strategy = "auto"
    backend: Backend = "auto"
    nodes: int = 1


class BenchConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    models: list[str]
    placements: list[Placement] = msgspec.field(default_factory=lambda: [Placement()])
    prompt_tokens: list[int] = msgspec.field(default_factory=lambda: [64])
    max_tokens: list[int] = msgspec.field(default_factory=lambda: [32])
    concurrency: list[int] = msgspec.field(default_factory=lambda: [1])
    repeats: int = 3  # measured rounds per case; a round sends `concurrency` requests at once
    warmup: int = 1  # unmeasured requests per case before its rounds (loads caches, compiles kernels)


class Case(msgspec.Struct, frozen=True):
    model: str
    strategy: Strategy
    backend: Backend
    nodes: int
    prompt_tokens: int
    max_tokens: int
    concurrency: int
    repeats: int
    warmup: int

    def key(self) -> str:
        """Names the case across runs (what a baseline is matched on)."""
        return (f"{self.model}/{self.strategy}/{self.backend}/{self.nodes}n/p{self.prompt_tokens}"
                f"/g{self.max_tokens}/c{self.concurrency}")  # fmt: skip


class RequestTiming(msgspec.Struct, frozen=True):
    """One measured request: seconds since it was sent for its first and every later token, and the usage."""

    token_times: list[float]
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None


def parse_config(data: Any) -> BenchConfig:
    """The loaded YAML (plain data) as a checked config; BadConfig names what is wrong."""
    if not isinstance(data, dict):
        raise BadConfig("the config must be a mapping with at least `models`")
    try:
        config = msgspec.convert(data, BenchConfig)
    except msgspec.ValidationError as exc:
        raise BadConfig(f"invalid bench config: {exc}") from None
    if not config.models:
        raise BadConfig("`models` is empty: name at least one")
    unknown = [m for m in config.models if m not in MODEL_CARDS]
    if unknown:
        raise BadConfig(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(MODEL_CARDS)}")
    for field in ("prompt_tokens", "max_tokens", "concurrency"):
        values = getattr(config, field)
        if not values or any(v < 1 for v in values):
            raise BadConfig(f"`{field}` needs one or more values >= 1, got {values}")
    if not config.placements or any(p.nodes < 1 for p in config.placements):
        raise BadConfig("`placements` needs one or more entries with nodes >= 1")
    if config.repeats < 1 or config.warmup < 0:
        raise BadConfig(f"need repeats >= 1 and warmup >= 0, got {config.repeats} and {config.warmup}")
    return config


def cases(config: BenchConfig) -> list[Case]:
    """Every combination, grouped by placement so the runner places each instance once."""
    return [
        Case(model, p.strategy, p.backend, p.nodes, prompt, gen, conc, config.repeats, config.warmup)
        for model, p, prompt, gen, conc in itertools.product(
            config.models, config.placements, config.prompt_tokens, config.max_tokens, config.concurrency
        )
    ]


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def case_stats(rounds: Sequence[tuple[float, Sequence[RequestTiming]]]) -> dict[str, float | int | None]:
    """The figures of one case from its rounds (wall seconds of the round, its requests).

    Prefill tokens/s: prompt tokens over time to first token. Decode tokens/s: the tokens after the first over the
    time between the first and the last chunk. Aggregate tokens/s: all completion tokens of a round over its wall time."""
    done = [r for _, reqs in rounds for r in reqs if r.error is None and r.token_times]
    ttft = [r.token_times[0] for r in done]
    prefill = [r.prompt_tokens / r.token_times[0] for r in done if r.token_times[0] > 0]
    # the usage's count, not the chunks': a chunk may carry several tokens (a multi-byte character completed)
    decode = [(r.completion_tokens - 1) / (r.token_times[-1] - r.token_times[0])
              for r in done if len(r.token_times) > 1 and r.token_times[-1] > r.token_times[0]]  # fmt: skip
    gaps = [b - a for r in done for a, b in itertools.pairwise(r.token_times)]
    aggregate = [sum(r.completion_tokens for r in reqs if r.error is None) / wall for wall, reqs in rounds if wall > 0]
    errors = sum(1 for _, reqs in rounds for r in reqs if r.error is not None)
    p50, p99 = percentile(gaps, 50), percentile(gaps, 99)
    return {
        "requests": sum(len(reqs) for _, reqs in rounds),
        "errors": errors,
        "ttft_ms": _ms(_mean(ttft)),
        "prefill_tps": _mean(prefill),
        "decode_tps": _mean(decode),
        "itl_p50_ms": _ms(p50),
        "itl_p99_ms": _ms(p99),
        "aggregate_tps": _mean(aggregate),
        "prompt_tokens": round(_mean([r.prompt_tokens for r in done]) or 0),
        "completion_tokens": round(_mean([r.completion_tokens for r in done]) or 0),
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def peak_used(samples: Sequence[Mapping[str, tuple[int, int]]]) -> dict[str, int]:
    """Per node, the most memory in use (total - available) over samples of {node: (total, available)}."""
    peak: dict[str, int] = {}
    for sample in samples:
        for node, (total, available) in sample.items():
            peak[node] = max(peak.get(node, 0), total - available)
    return peak


# Figures where more is better; for the others (times) a ratio below 1 is the improvement.
HIGHER_IS_BETTER = ("prefill_tps", "decode_tps", "aggregate_tps")
COMPARED = ("ttft_ms", "prefill_tps", "decode_tps", "itl_p50_ms", "itl_p99_ms", "aggregate_tps")


def ratios(rows: Sequence[Mapping[str, Any]], baseline: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Per case key present in both runs: this run's figure over the baseline's (1.0 = unchanged)."""
    before = {row["case"]: row for row in baseline}
    out: dict[str, dict[str, float]] = {}
    for row in rows:
        old = before.get(row["case"])
        if old is None:
            continue
        out[row["case"]] = {
            name: row[name] / old[name]
            for name in COMPARED
            if isinstance(row.get(name), (int, float)) and isinstance(old.get(name), (int, float)) and old[name]
        }
    return out

