"""`python -m services.gateway` (or `exo service gateway`): the OpenAI API of this node."""

from __future__ import annotations

import argparse
import os
import signal

import structlog
import uvicorn

from shared.config import DEFAULT_API_PORT, add_common_args, common_from_args, environment, parse_bytes, service_spec
from shared.specs import GatewaySpec
from shared.identity import load_or_create_node_id
from shared.logging import setup_logging
from shared.process_lifetime import EXIT_GRACE_S, exit_if_still_running, watch_the_node

from services.gateway.api_key import API_KEY_ENV, API_KEY_FILE_ENV, BadApiKey, exposure_warning, resolve_api_key
from services.gateway.app import create_app
from services.gateway.middleware import DEFAULT_MAX_BODY_BYTES

log = structlog.get_logger()


def body_limit(text: str) -> int:
    try:
        return parse_bytes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def gateway_spec(argv: list[str] | None) -> tuple[GatewaySpec, str | None]:
    """The spec and the API key given in the environment: by the node to this gateway alone, or to a
    gateway started alone (taken out of the environment once read)."""
    parser = argparse.ArgumentParser(prog="exo service gateway", description=__doc__)
    add_common_args(parser)
    parser.add_argument("--host", default="127.0.0.1", help="bind address (env EXO_HOST)")
    parser.add_argument("--port", type=int, default=DEFAULT_API_PORT, help="API port (env EXO_PORT)")
    parser.add_argument("--max-body-bytes", type=body_limit, default=str(DEFAULT_MAX_BODY_BYTES),  # type= parses it
                        help="largest request body, e.g. 8MiB; larger ones get 413 (env EXO_MAX_BODY_BYTES)")  # fmt: skip
    parser.add_argument("--api-key-file", default=None,
                        help=f"require this file's key on every API route (env {API_KEY_FILE_ENV}, or the key in {API_KEY_ENV})")  # fmt: skip

    key: list[str | None] = []

    def from_flags(ns: argparse.Namespace, found: dict[str, str]) -> dict:
        key.append(found.get("api_key"))
        return {"common": common_from_args(ns, found), "host": ns.host, "port": ns.port,
                "max_body_bytes": ns.max_body_bytes, "api_key_file": ns.api_key_file}  # fmt: skip

    spec = service_spec(argv, GatewaySpec, parser, from_flags)
    return spec, key[0] if key else environment().get("api_key")


def main(argv: list[str] | None = None) -> None:
    spec, given_key = gateway_spec(argv)
    try:
        api_key = resolve_api_key(given_key, spec.api_key_file)
    except BadApiKey as exc:
        raise SystemExit(f"exo service gateway: {exc}") from None
    config = spec.common
    setup_logging("gateway", config.log_dir, config.log_level, config.console_logs)
    if warning := exposure_warning(spec.host, api_key is not None):
        log.warning(warning)
    node_id = load_or_create_node_id(config.state_dir)
    app = create_app(config.nats_url, node_id, on_stopped=lambda: exit_if_still_running(
        EXIT_GRACE_S, "the gateway stopped but its event loop did not end", 0),
        max_body_bytes=spec.max_body_bytes, api_key=api_key)  # fmt: skip
    # uvicorn stops gracefully on SIGTERM: the same when the node's supervisor is gone
    watch_the_node(lambda: os.kill(os.getpid(), signal.SIGTERM), config.supervisor_pid)
    uvicorn.run(app, host=spec.host, port=spec.port, log_level="warning", access_log=False, log_config=None)


if __name__ == "__main__":
    main()
