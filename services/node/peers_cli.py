"""`exo peers` (or `exo --list-peers`): the peers this node's discovery hears, read from `<state-dir>/peers.json`.

It reads the file rather than asking the bus, so it answers while the bus is down or not clustered yet, which is
when one wants to know most what discovery sees. Discovery rewrites the file at least every 2 s; a file much
older than that means discovery is not running.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import msgspec

from shared.config import default_state_dir
from shared.peers import Peer, PeerTable, peers_path, read_table

STALE_AFTER_S = 10.0
COLUMNS = ("NODE", "HOSTNAME", "ADDRESS", "ROUTE", "MEMORY (free/total)", "BACKENDS", "LATENCY", "LAST SEEN")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="exo peers", description="List the peers this node's discovery hears.")
    p.add_argument("--state-dir", type=Path, default=None, help="node state (default ~/.exo, or ~/.exo/nodes/NAME)")
    p.add_argument("--node-name", default=None, help="the node of that name on this machine")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _row(peer: Peer, now: float) -> tuple[str, ...]:
    return (
        peer.node_id,
        peer.hostname,
        f"{peer.address}:{peer.discovery_port}",
        str(peer.route_port) if peer.route_port else "-",
        f"{human_bytes(peer.memory_available)} / {human_bytes(peer.memory_total)}",
        ",".join(peer.backends) or "-",
        f"{peer.latency_ms:.1f} ms" if peer.latency_ms is not None else "-",
        f"{max(0.0, now - peer.last_seen):.1f} s ago",
    )


def render(table: PeerTable, now: float) -> str:
    """The table as aligned text, with a first line that says whose table it is and how fresh."""
    age = now - table.written_at
    lines = [f"peers of {table.node_id} (table written {age:.1f} s ago)"]
    if age > STALE_AFTER_S:
        lines.append(f"warning: the table is stale (older than {STALE_AFTER_S:.0f} s): is discovery running?")
    if not table.peers:
        lines.append("no peers heard (same cluster secret? same network or EXO_PEERS? UDP port open?)")
        return "\n".join(lines)
    rows = [COLUMNS, *(_row(p, now) for p in table.peers)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def as_json(table: PeerTable, now: float) -> str:
    data = msgspec.to_builtins(table)
    age = now - table.written_at
    data.update(age_s=round(age, 3), stale=age > STALE_AFTER_S)
    return json.dumps(data, indent=2)


def main(argv: list[str] | None = None) -> int:
    """Print the table; 0 when there is one (even stale: it says so), 1 when discovery left none."""
    args = parser().parse_args(argv)
    if args.state_dir is not None:
        state_dir = args.state_dir.expanduser()
    else:
        state_dir = default_state_dir() / "nodes" / args.node_name if args.node_name else default_state_dir()
    path = peers_path(state_dir)
    table = read_table(state_dir)
    now = time.time()
    if table is None:
        why = "unreadable" if path.exists() else "missing"
        message = (f"no peer table: {path} is {why}. Discovery writes it while it runs with a cluster secret "
                   "(is the node running? does it have the cluster secret: exo join?)")  # fmt: skip
        if args.json:
            print(json.dumps({"error": message, "path": str(path)}))
        else:
            print(message, file=sys.stderr)
        return 1
    print(as_json(table, now) if args.json else render(table, now))
    return 0


if __name__ == "__main__":
    sys.exit(main())
