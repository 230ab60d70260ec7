"""`python -m services.worker` (or `exo service worker`): run this node's worker alone."""

from __future__ import annotations

import argparse

from shared.config import add_common_args, add_runner_args, common_from_args, runner_values, service_spec
from shared.identity import load_or_create_node_id
from shared.logging import setup_logging
from shared.process_lifetime import run_until_signalled
from shared.specs import WorkerSpec

from services.worker.service import Worker


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="exo service worker", description=__doc__)
    add_common_args(p)
    p.add_argument("--weight-format", choices=["q4", "f32"], default=None,
                   help="weight layout for runners (env EXO_WEIGHT_FORMAT; default: the fastest that fits this device)")  # fmt: skip
    p.add_argument("--blas", choices=["auto", "reference"], default="auto",
                   help="auto: the fastest BLAS installed; reference: MLX's own, batch-invariant (env EXO_BLAS)")  # fmt: skip
    add_runner_args(p)
    return p


def worker_spec(argv: list[str] | None) -> WorkerSpec:
    def from_flags(ns: argparse.Namespace, found: dict[str, str]) -> dict:
        return {"common": common_from_args(ns, found), "weight_format": ns.weight_format or None, "blas": ns.blas,
                "runner": runner_values(ns)}  # fmt: skip

    return service_spec(argv, WorkerSpec, parser(), from_flags)


def main(argv: list[str] | None = None) -> None:
    spec = worker_spec(argv)
    config = spec.common
    setup_logging("worker", config.log_dir, config.log_level, config.console_logs)
    node_id = load_or_create_node_id(config.state_dir)
    run_until_signalled(Worker(spec, node_id).run, supervisor_pid=config.supervisor_pid)


if __name__ == "__main__":
    main()
