"""`exo log` and `exo sql`: read the inference log (`exo_inferences`) of the cluster's leader over the bus.

The lake lives on the leader's disk and its master holds it; asking the leader works from any node and never
blocks its writer. Only read-only queries run (the leader refuses the rest, with the reason).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys

import structlog

from shared.bus import connect, disconnect
from shared.cluster_secret import redact
from shared.config import add_common_args, common_from_args, parse_with_environment, remember_secret
from shared.inference_log import LAST_INFERENCES_SQL, InferenceQuery, InferenceRows, query_inference_log

# what `exo log` shows in its table (--json has every column)
LOG_COLUMNS = (
    ("timestamp", "TIME (UTC)"), ("id", "ID"), ("api", "API"), ("model", "MODEL"), ("status", "STATUS"),
    ("finish_reason", "FINISH"), ("prompt_tokens", "PROMPT"), ("cached_tokens", "CACHED"),
    ("completion_tokens", "COMPLETION"), ("latency_ms", "LATENCY ms"), ("time_to_first_token_ms", "TTFT ms"),
    ("decode_tokens_per_s", "TOK/S"), ("devices", "DEVICES"), ("strategy", "STRATEGY"), ("seed", "SEED"),
)  # fmt: skip


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="exo", description="Read the cluster's inference log (exo_inferences).")
    sub = p.add_subparsers(dest="command", required=True)
    log_p = sub.add_parser("log", help="the last inferences, newest first")
    log_p.add_argument("-n", type=int, default=20, help="how many (default 20)")
    sql_p = sub.add_parser("sql", help="run one read-only SQL query on exo_inferences")
    sql_p.add_argument("query", help='e.g. "SELECT model, AVG(latency_ms) FROM exo_inferences GROUP BY model"')
    sql_p.add_argument("--max-rows", type=int, default=10_000)
    for each in (log_p, sql_p):
        each.add_argument("--json", action="store_true", help="machine-readable output")
        add_common_args(each)
    return p


def cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3g}"
    if isinstance(value, str) and len(value) == 26 and value[10:11] == "T":
        return value[:19].replace("T", " ")  # an ISO time to the second
    return str(value)


def render_table(headers: list[str], rows: list[list[object]]) -> str:
    """Aligned columns, a header line, then one line per row."""
    text = [headers, *([cell(v) for v in row] for row in rows)]
    widths = [max(len(r[i]) for r in text) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in text)


def render_log(rows: InferenceRows) -> str:
    index = {name: i for i, name in enumerate(rows.columns)}
    shown = [(name, title) for name, title in LOG_COLUMNS if name in index]
    if not rows.rows:
        return "no inference recorded yet"
    table = [[row[index[name]] for name, _ in shown] for row in reversed(rows.rows)]  # oldest first, like a log
    return render_table([title for _, title in shown], table)


def as_json(rows: InferenceRows) -> str:
    return json.dumps([dict(zip(rows.columns, row)) for row in rows.rows], indent=2)


async def ask(nats_url: str, query: InferenceQuery) -> InferenceRows:
    nc = await connect(nats_url, "exo-log-cli", first_connect_timeout=10.0)
    try:
        return await query_inference_log(nc, query)
    finally:
        await disconnect(nc)


def main(argv: list[str]) -> int:
    args, found = parse_with_environment(parser(), argv)
    # the bus helpers log their connection's life (a disconnect at the end, say): not a CLI's business
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    config = common_from_args(args, found)
    remember_secret(config.state_dir, found.get("cluster_secret"))  # for the bus credentials
    if args.command == "log":
        if args.n < 1:
            parser().error(f"-n must be at least 1: {args.n}")
        query = InferenceQuery(LAST_INFERENCES_SQL.format(limit=args.n), max_rows=args.n)
    else:
        query = InferenceQuery(args.query, max_rows=max(1, args.max_rows))
    try:
        rows = asyncio.run(ask(config.nats_url, query))
    except ConnectionError as exc:
        print(f"exo {args.command}: {exc} (is the node running? --nats-url {redact(config.nats_url)})", file=sys.stderr)
        return 2
    if rows.error is not None:
        print(f"exo {args.command}: {rows.error}", file=sys.stderr)
        return 1
    if args.json:
        print(as_json(rows))
    elif args.command == "log":
        print(render_log(rows))
    else:
        print(render_table(list(rows.columns), [list(r) for r in rows.rows]))
    if rows.truncated:
        print(f"(more rows than shown: the first {len(rows.rows)} only)", file=sys.stderr)
    return 0
