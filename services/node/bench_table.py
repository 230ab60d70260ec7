"""How `exo bench` shows its rows on a terminal: a plain table, and a progress bar while it runs (pure text)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

COLUMNS = (  # (header, row field, digits)
    ("CASE", "case", 0),
    ("TTFT ms", "ttft_ms", 0),
    ("PREFILL tok/s", "prefill_tps", 1),
    ("DECODE tok/s", "decode_tps", 1),
    ("ITL p50 ms", "itl_p50_ms", 1),
    ("ITL p99 ms", "itl_p99_ms", 1),
    ("AGGR tok/s", "aggregate_tps", 1),
    ("ERR", "errors", 0),
)


def cell(value: Any, digits: int = 1) -> str:
    """A table cell: '-' for a missing figure."""
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


def table(rows: Sequence[Mapping[str, Any]], ratios: Mapping[str, Mapping[str, float]] | None = None) -> str:
    """One line per case; a failed case says why; peak memory per node under each case; with a baseline, a line
    of ratios (this run / baseline) under each case found in both."""
    grid = [[h for h, _, _ in COLUMNS]]
    notes: list[tuple[int, str]] = []
    for row in rows:
        grid.append([cell(row.get(f), d) if f != "case" else row["case"] for _, f, d in COLUMNS])
        if row.get("error"):
            notes.append((len(grid) - 1, f"  failed: {row['error']}"))
            continue
        peak = row.get("peak_memory") or {}
        if peak:
            notes.append((len(grid) - 1, "  peak memory: " + ", ".join(f"{n} {mib(b)}" for n, b in sorted(peak.items()))))
        if ratios and row["case"] in ratios:
            parts = ", ".join(f"{k} x{v:.2f}" for k, v in ratios[row["case"]].items())
            notes.append((len(grid) - 1, f"  vs baseline: {parts}"))
    widths = [max(len(r[i]) for r in grid) for i in range(len(COLUMNS))]
    lines = []
    for index, r in enumerate(grid):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip())
        lines.extend(text for at, text in notes if at == index)
    return "\n".join(lines)


def progress_line(done: int, total: int, label: str, width: int = 30) -> str:
    filled = width * done // total if total else width
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {label}"[:100]
