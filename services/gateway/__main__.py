"""`python -m services.gateway` (or `exo service gateway`): the OpenAI API of this node."""

from __future__ import annotations

import argparse
import os
import signal

import uvicorn

from shared.config import DEFAULT_API_PORT, add_common_args, common_from_args
from shared.identity import load_or_create_node_id
from shared.logging import setup_logging
from shared.process_lifetime import EXIT_GRACE_S, exit_if_still_running, watch_the_node

from services.gateway.app import create_app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="exo service gateway", description=__doc__)
    add_common_args(parser)
    parser.add_argument("--host", default=os.environ.get("EXO_HOST", "127.0.0.1"), help="bind address (env EXO_HOST)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("EXO_PORT", DEFAULT_API_PORT)))
    ns = parser.parse_args(argv)
    config = common_from_args(ns)
    setup_logging("gateway", config.log_dir, config.log_level, config.console_logs)
    node_id = load_or_create_node_id(config.state_dir)
    app = create_app(config.nats_url, node_id, on_stopped=lambda: exit_if_still_running(
        EXIT_GRACE_S, "the gateway stopped but its event loop did not end", 0))  # fmt: skip
    # uvicorn stops gracefully on SIGTERM: the same when the node's supervisor is gone
    watch_the_node(lambda: os.kill(os.getpid(), signal.SIGTERM))
    uvicorn.run(app, host=ns.host, port=ns.port, log_level="warning", access_log=False, log_config=None)


if __name__ == "__main__":
    main()
