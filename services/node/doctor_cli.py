"""`exo doctor [--json]`: check this node and its cluster against the seed's troubleshooting table; say what to do.

Exit code 0 only when no row fails ("n/a" rows, e.g. RDMA on a machine without it, do not fail)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import msgspec
import structlog

from services.node.doctor_checks import Row, all_pass, diagnose
from services.node.doctor_gather import gather
from shared.config import DEFAULT_NATS_PORT, default_state_dir, parse_with_environment

MARK = {"pass": "ok  ", "fail": "FAIL", "n/a": "n/a "}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="exo doctor", description="Check this node and its cluster; say what to do.")
    p.add_argument("--url", default="http://127.0.0.1:8080", help="the node's gateway (default http://127.0.0.1:8080)")
    p.add_argument("--api-key", default=None, help="the gateway's API key (env EXO_API_KEY)")
    p.add_argument("--nats-url", default=f"nats://127.0.0.1:{DEFAULT_NATS_PORT}", help="the node's bus")
    p.add_argument("--state-dir", type=Path, default=None, help="the node's state dir (default ~/.exo)")
    p.add_argument("--node-name", default=None, help="the node of that name on this machine")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def render(rows: list[Row]) -> str:
    width = max(len(r.check) for r in rows)
    lines = []
    for r in rows:
        lines.append(f"{MARK[r.status]}  {r.check.ljust(width)}  {r.detail}")
        if r.advice and r.status != "pass":
            lines.append(f"      {' ' * width}  -> {r.advice}")
    verdict = "all checks pass" if all_pass(rows) else f"{sum(r.status == 'fail' for r in rows)} check(s) fail"
    return "\n".join(lines + ["", verdict])


def main(argv: list[str]) -> int:
    args, _ = parse_with_environment(parser(), argv, only=frozenset({"api_key"}))  # EXO_API_KEY
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))  # stdout is the answer
    default = default_state_dir() / "nodes" / args.node_name if args.node_name else default_state_dir()
    state_dir = (args.state_dir or default).expanduser()
    rows = diagnose(gather(args.url.rstrip("/"), args.api_key, args.nats_url, state_dir))
    if args.json:
        print(json.dumps({"ok": all_pass(rows), "checks": msgspec.to_builtins(rows)}, indent=2))
    else:
        print(render(rows))
    return 0 if all_pass(rows) else 1
