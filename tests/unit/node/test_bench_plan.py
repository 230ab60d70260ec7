"""exo bench's pure core: config -> cases, statistics of a case, peak memory, ratios to a baseline, the table."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from services.node.bench_plan import (
    BadConfig,
    RequestTiming,
    case_stats,
    cases,
    parse_config,
    peak_used,
    percentile,
    ratios,
)
from services.node.bench_table import progress_line, table

REPO = Path(__file__).resolve().parents[3]


def test_the_shipped_example_parses_into_its_cases() -> None:
    config = parse_config(yaml.safe_load((REPO / "bench_simple.yaml").read_text()))
    got = cases(config)
    assert len(got) == 4  # 2 prompt lengths x 2 concurrency levels
    assert [c.key() for c in got][:2] == ["smollm2-135m/auto/auto/1n/p32/g32/c1", "smollm2-135m/auto/auto/1n/p32/g32/c4"]
    assert all(c.repeats == 3 and c.warmup == 1 for c in got)


def test_cases_are_the_product_grouped_by_placement() -> None:
    config = parse_config({"models": ["smollm2-135m"], "placements": [{"strategy": "pipeline", "nodes": 2},
                           {"backend": "ring"}], "concurrency": [1, 2]})  # fmt: skip
    got = cases(config)
    assert [(c.strategy, c.backend, c.nodes, c.concurrency) for c in got] == [
        ("pipeline", "auto", 2, 1), ("pipeline", "auto", 2, 2), ("auto", "ring", 1, 1), ("auto", "ring", 1, 2),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("data", "named"),
    [
        (["smollm2-135m"], "mapping"),
        ({}, "models"),
        ({"models": []}, "empty"),
        ({"models": ["gpt-9"]}, "gpt-9"),
        ({"models": ["smollm2-135m"], "concurrency": [0]}, "concurrency"),
        ({"models": ["smollm2-135m"], "max_tokens": []}, "max_tokens"),
        ({"models": ["smollm2-135m"], "placements": [{"backend": "mpi"}]}, "backend"),
        ({"models": ["smollm2-135m"], "placements": [{"nodes": 0}]}, "nodes"),
        ({"models": ["smollm2-135m"], "repeat": 3}, "repeat"),  # a typo is an error, not a silent default
        ({"models": ["smollm2-135m"], "repeats": 0}, "repeats"),
    ],
)
def test_bad_configs_are_refused_naming_the_field(data: object, named: str) -> None:
    with pytest.raises(BadConfig, match=named):
        parse_config(data)


def test_percentile_interpolates_like_numpy() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0], 99) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile(list(range(101)), 99) == pytest.approx(99.0)
    assert percentile([10.0, 0.0], 100) == 10.0


def test_case_stats_from_plain_timings() -> None:
    # two requests in one round of 2 s: first tokens at 0.5 s and 1.0 s, then one token every 0.1 s
    a = RequestTiming([0.5, 0.6, 0.7, 0.8, 0.9], prompt_tokens=50, completion_tokens=5)
    b = RequestTiming([1.0, 1.1, 1.2], prompt_tokens=100, completion_tokens=3)
    stats = case_stats([(2.0, [a, b])])
    assert stats["ttft_ms"] == pytest.approx(750.0)
    assert stats["prefill_tps"] == pytest.approx((100 + 100) / 2)  # 50/0.5 and 100/1.0
    assert stats["decode_tps"] == pytest.approx(10.0)
    assert stats["itl_p50_ms"] == pytest.approx(100.0) and stats["itl_p99_ms"] == pytest.approx(100.0)
    assert stats["aggregate_tps"] == pytest.approx(4.0)  # 8 tokens in 2 s
    assert stats["requests"] == 2 and stats["errors"] == 0


def test_failed_requests_are_counted_not_averaged() -> None:
    ok = RequestTiming([0.2, 0.4], prompt_tokens=10, completion_tokens=2)
    bad = RequestTiming([], 0, 0, error="503 no instance")
    stats = case_stats([(1.0, [ok, bad])])
    assert stats["errors"] == 1 and stats["ttft_ms"] == pytest.approx(200.0)
    assert stats["aggregate_tps"] == pytest.approx(2.0)
    nothing = case_stats([(1.0, [bad])])
    assert nothing["ttft_ms"] is None and nothing["decode_tps"] is None and nothing["itl_p99_ms"] is None


def test_peak_used_per_node() -> None:
    samples = [{"a": (100, 60), "b": (50, 40)}, {"a": (100, 30)}, {"a": (100, 90), "b": (50, 45)}]
    assert peak_used(samples) == {"a": 70, "b": 10}
    assert peak_used([]) == {}


def test_ratios_match_cases_by_key_and_skip_missing_figures() -> None:
    now = [{"case": "x", "decode_tps": 30.0, "ttft_ms": 100.0, "itl_p99_ms": None}, {"case": "new", "decode_tps": 1.0}]
    before = [{"case": "x", "decode_tps": 20.0, "ttft_ms": 200.0, "itl_p99_ms": 5.0}, {"case": "gone"}]
    assert ratios(now, before) == {"x": {"ttft_ms": 0.5, "decode_tps": 1.5}}


def test_table_shows_figures_failures_memory_and_ratios() -> None:
    rows = [
        {"case": "m/auto/auto/1n/p32/g32/c1", "ttft_ms": 81.25, "decode_tps": 33.3, "errors": 0,
         "peak_memory": {"node-a": 3 * 2**30}},
        {"case": "m/tensor/jaccl/2n/p32/g32/c1", "error": "POST /instances: 409 jaccl needs RDMA"},
    ]  # fmt: skip
    text = table(rows, {"m/auto/auto/1n/p32/g32/c1": {"decode_tps": 1.25}})
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["CASE", "TTFT", "ms"]
    assert "81" in lines[1] and "33.3" in lines[1]
    assert "peak memory: node-a 3072 MiB" in text and "vs baseline: decode_tps x1.25" in text
    assert "failed: POST /instances: 409 jaccl needs RDMA" in text


def test_progress_line() -> None:
    assert progress_line(0, 4, "c").startswith("[" + "." * 30 + "] 0/4")
    assert progress_line(2, 4, "c").startswith("[" + "#" * 15 + "." * 15 + "] 2/4 c")
