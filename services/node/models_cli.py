"""`exo models`: what each node has in its Hugging Face cache (and downloads now); `exo models pull ID`,
`exo models rm ID` on this node (or --node)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys

import msgspec
import structlog

from shared import subjects
from shared.bus import connect, disconnect
from shared.config import add_common_args, common_from_args, parse_with_environment, remember_secret
from shared.downloads import ModelsReply, NodeModels, PullModel, RemoveModel, gather_node_models
from shared.identity import load_or_create_node_id
from shared.models import HubRepo

from services.gateway.model_lookup import ModelLookupError, resolve_card
from services.node.log_cli import render_table

PULL_TIMEOUT_S = 24 * 3600.0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="exo models", description="The model cache of each node.")
    sub = p.add_subparsers(dest="command")
    pull = sub.add_parser("pull", help="download a model (a Hugging Face repo id or a built-in name)")
    rm = sub.add_parser("rm", help="remove a model from a node's cache")
    for each in (pull, rm):
        each.add_argument("model")
        each.add_argument("--node", help="node id (default: this node, from its state dir)")
    for each in (p, pull, rm):
        each.add_argument("--json", action="store_true", help="machine-readable output")
        add_common_args(each)
    return p


def render(nodes: list[NodeModels]) -> str:
    rows: list[list[object]] = []
    for node in nodes:
        for c in node.cached:
            rows.append([node.node_id, c.repo_id, c.revision[:12], f"{c.size_bytes / 1e6:.1f} MB", c.n_files,
                         "yes" if c.complete else "partial"])  # fmt: skip
    lines = [render_table(["NODE", "MODEL", "REVISION", "SIZE", "FILES", "COMPLETE"], rows) if rows else "no model cached"]
    for node in nodes:
        lines.append(f"{node.node_id}: {node.disk_free / 1e9:.1f} GB free in {node.cache_dir}")
        for d in node.downloads:
            eta = f", ETA {d.eta_s:.0f} s" if d.eta_s else ""
            lines.append(f"  {d.state} {d.repo_id}: {d.bytes_done / 1e6:.1f}/{d.bytes_total / 1e6:.1f} MB, "
                         f"{d.bytes_per_s / 1e6:.2f} MB/s{eta}{(' ' + d.error) if d.error else ''}")  # fmt: skip
    return "\n".join(lines)


async def _run(args: argparse.Namespace, nats_url: str, node_id: str) -> tuple[int, str]:
    nc = await connect(nats_url, "exo-models-cli", first_connect_timeout=10.0)
    try:
        if args.command is None:
            nodes = await gather_node_models(nc, wait_s=1.5)
            return 0, json.dumps(msgspec.to_builtins(nodes), indent=2) if args.json else render(nodes)
        if args.command == "pull":
            card = await asyncio.to_thread(resolve_card, args.model, {})
            if not isinstance(card.source, HubRepo):
                return 1, f"{args.model} is not a hub model (nothing to pull)"
            msg = await nc.request(subjects.models_pull(node_id), msgspec.json.encode(PullModel(card)), timeout=PULL_TIMEOUT_S)
        else:
            alias = await asyncio.to_thread(resolve_card, args.model, {}) if "/" not in args.model else None
            repo = alias.source.repo_id if alias is not None and isinstance(alias.source, HubRepo) else args.model
            msg = await nc.request(subjects.models_remove(node_id), msgspec.json.encode(RemoveModel(repo)), timeout=60)
        reply = msgspec.json.decode(msg.data, type=ModelsReply)
        if not reply.ok:
            return 1, reply.error or "failed"
        shown = [reply.models] if reply.models else []
        return 0, json.dumps(msgspec.to_builtins(shown), indent=2) if args.json else render(shown)
    finally:
        await disconnect(nc)


def main(argv: list[str]) -> int:
    args, found = parse_with_environment(parser(), argv)  # EXO_NATS_URL, EXO_STATE_DIR
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    config = common_from_args(args, found)
    remember_secret(config.state_dir, found.get("cluster_secret"))  # this node's bus credentials, not ~/.exo's
    node_id = args.node if getattr(args, "node", None) else load_or_create_node_id(config.state_dir)
    try:
        code, text = asyncio.run(_run(args, config.nats_url, node_id))
    except ModelLookupError as exc:
        code, text = 1, exc.reason
    except ConnectionError as exc:
        code, text = 2, f"{exc} (is the node running?)"
    except Exception as exc:  # noqa: BLE001 - no responder, timeout: said plainly
        code, text = 2, f"{type(exc).__name__}: {exc} (is that node's worker running?)"
    print(text, file=sys.stderr if code else sys.stdout)
    return code
