"""Configuration common to every service, and the one reader of the `EXO_*` variables (`environment`).

A service started by the node's supervisor gets its spec (shared/specs.py) as `--spec JSON`; one started alone
builds the same spec from its flags, whose defaults come from the variables of shared/env_names.py.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Mapping, MutableMapping
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import structlog

from shared import env_names
from shared.cluster_secret import BadSecret, remember, stored

DEFAULT_NATS_PORT = 4222
DEFAULT_API_PORT = 8080
DEFAULT_DISCOVERY_PORT = 52416  # UDP beacons
DEFAULT_ROUTE_PORT = 6222  # NATS cluster routes between the nodes' buses

Spec = TypeVar("Spec", bound=msgspec.Struct)


def _rows() -> tuple[env_names.EnvName, ...]:
    from shared.specs import runner_setting_fields

    runner = tuple(env_names.EnvName(f"EXO_{f.name.upper()}", f.name, "runner setting") for f in runner_setting_fields())
    return env_names.TABLE + runner


def env_table() -> tuple[env_names.EnvName, ...]:
    """Every EXO_* variable read (the runner settings' rows included) and the native ones."""
    return _rows() + env_names.NATIVE


def environment(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """dest -> value of each EXO_* variable set: the one place they are read. The secret ones are taken out
    of the environment, so that the processes this one starts do not inherit them."""
    env = os.environ if environ is None else environ
    found: dict[str, str] = {}
    for row in _rows():
        if row.name in env:
            found[row.dest] = env.pop(row.name) if row.secret or row.name == env_names.API_KEY_FILE else env[row.name]
    return found


def without_exo_variables(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment a child of the node gets: none of the EXO_* variables (its spec says what it needs),
    but those that native code reads itself (env_names.NATIVE)."""
    native = {row.name for row in env_names.NATIVE}
    return {k: v for k, v in environ.items() if not k.startswith("EXO_") or k in native}


def default_state_dir() -> Path:
    return Path(environment().get("state_dir") or Path.home() / ".exo")


def parse_with_environment(
    parser: argparse.ArgumentParser, argv: list[str] | None, ignore: frozenset[str] = frozenset(),
    only: frozenset[str] | None = None,
) -> tuple[argparse.Namespace, dict[str, str]]:  # fmt: skip
    """Flags over variables over the parser's own defaults (`ignore`: dests no variable sets; `only`: the
    only ones it sets). A string default goes through the flag's `type`, so a bad variable is a usage error."""
    found = environment()
    for each in _with_subparsers(parser):
        # never the default of a flag: `--cluster-secret` warns that it is visible, the variable is not
        known = {action.dest for action in each._actions} - ignore - {"cluster_secret"}
        if only is not None:
            known &= only
        each.set_defaults(**{dest: value for dest, value in found.items() if dest in known})
    return parser.parse_args(argv), found


def _with_subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return [parser] + [p for action in subs for p in action.choices.values()]


class CommonConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    nats_url: str
    state_dir: Path
    log_level: str
    console_logs: bool
    supervisor_pid: int | None = None  # the node's supervisor, which this process never outlives; None: alone

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nats-url", default=f"nats://127.0.0.1:{DEFAULT_NATS_PORT}",
                        help="NATS server to use (env EXO_NATS_URL)")  # fmt: skip
    parser.add_argument("--state-dir", type=Path, default=Path.home() / ".exo",
                        help="where this node keeps its id, models, logs and NATS data (env EXO_STATE_DIR, default ~/.exo)")  # fmt: skip
    parser.add_argument("--log-level", default="info")


def common_from_args(ns: argparse.Namespace, found: dict[str, str]) -> CommonConfig:
    return CommonConfig(
        nats_url=ns.nats_url,
        state_dir=Path(ns.state_dir).expanduser(),
        log_level=ns.log_level,
        console_logs=found.get("console_logs", "1") != "0",
    )


def remember_secret(state_dir: Path, given: str | None) -> None:
    """The secret of a service: the one given to a service started alone, else the node's stored one. Runners
    read it from the state dir too; it never travels in a spec."""
    try:
        remember(given or stored(state_dir))
    except BadSecret as exc:  # said where it matters too: discovery sends no beacons, the bus refuses us
        structlog.get_logger().error("cluster secret unusable", error=str(exc))
        remember(stored(state_dir))


def service_spec(
    argv: list[str] | None, kind: type[Spec], parser: argparse.ArgumentParser,
    from_flags: Callable[[argparse.Namespace, dict[str, str]], Any],
) -> Spec:  # fmt: skip
    """The spec of a service: decoded from `--spec JSON` (the supervisor's), else built by `from_flags` from the
    flags and the environment (a service started alone). Either way its secret is remembered."""
    from shared.specs import convert_spec, decode_spec

    args = list(sys.argv[1:] if argv is None else argv)
    parser.add_argument("--spec", default=None, metavar="JSON",
                        help="the whole spec, as the node's supervisor passes it; no other flag then")  # fmt: skip
    if args[:1] == ["--spec"] and len(args) == 2:
        try:
            spec = decode_spec(args[1], kind)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            parser.error(f"--spec: {exc}")
        remember_secret(spec.common.state_dir, None)  # type: ignore[attr-defined]
        return spec
    ns, found = parse_with_environment(parser, args)
    if ns.spec is not None:
        parser.error("--spec comes alone")
    try:
        spec = convert_spec(msgspec.to_builtins(from_flags(ns, found), enc_hook=str), kind)
    except msgspec.ValidationError as exc:
        parser.error(str(exc))
    given = getattr(ns, "cluster_secret", None) or found.get("cluster_secret")
    remember_secret(spec.common.state_dir, given)  # type: ignore[attr-defined]
    return spec


def add_runner_args(parser: argparse.ArgumentParser) -> None:
    """A flag for each runner setting (shared.specs.RunnerSettings) the parser does not have yet."""
    from shared.specs import runner_setting_help

    known = {action.dest for action in parser._actions}
    for name, text in runner_setting_help().items():
        if name not in known:
            parser.add_argument(f"--{name.replace('_', '-')}", default=None, help=f"{text} (env EXO_{name.upper()})")


def runner_values(ns: argparse.Namespace) -> dict[str, Any]:
    """The runner settings given by flag or variable; the others keep RunnerSettings' defaults."""
    from shared.specs import runner_setting_help

    return {name: getattr(ns, name) for name in runner_setting_help() if getattr(ns, name, None) is not None}


def parse_bytes(text: str) -> int:
    """'1GB', '512MiB', '2g', '1000000' -> bytes. Decimal units are 1000-based, IEC ones 1024-based."""
    units = {
        "": 1, "b": 1,
        "k": 1024, "kb": 1000, "kib": 1024,
        "m": 1024**2, "mb": 1000**2, "mib": 1024**2,
        "g": 1024**3, "gb": 1000**3, "gib": 1024**3,
        "t": 1024**4, "tb": 1000**4, "tib": 1024**4,
    }  # fmt: skip
    cleaned = text.strip().lower().replace(" ", "")
    number = cleaned.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = cleaned[len(number):]
    hint = f"not a size: {text!r} (try 512MB, 1GB, 2GiB)"
    if not number or unit not in units:
        raise ValueError(hint)
    try:
        value = float(number) * units[unit]
    except ValueError:
        raise ValueError(hint) from None
    if not math.isfinite(value):
        raise ValueError(hint)
    result = int(value)
    if result <= 0:
        raise ValueError(f"size must be positive (at least one byte): {text!r}")
    return result
