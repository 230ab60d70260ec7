"""What each process of a node is told at its start: one frozen spec per service and one for a runner.

The supervisor hands a service its spec as JSON on its command line (`--spec JSON`), the worker hands a runner
its own the same way; a service started alone builds the same spec from its flags and the environment
(`shared.config.service_spec`). No spec holds a secret: command lines are readable by every user.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin, get_type_hints

import msgspec
from msgspec import Meta

from shared.config import CommonConfig

Spec = TypeVar("Spec")


class RunnerSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A runner's tunables. Adding one is one line here: it becomes the worker's and exo's flag `--<field>`
    (dashes for underscores), the variable `EXO_<FIELD>`, and `spec.settings.<field>` in the runner."""

    max_batch: Annotated[int, Meta(ge=1, description="requests a runner decodes together (default 8)")] | None = None
    max_waiting: Annotated[int, Meta(ge=0, description="requests allowed to wait per batch slot (default 4)")] | None = None  # noqa: E501
    ring_wait: Annotated[Literal["block", "spin"], Meta(description="ring sockets wait in the kernel or spin")] = "block"
    cpu_fusion: Annotated[Literal["on", "off"], Meta(description="fused norms and RoPEs on a CPU")] = "on"
    # auto (the default) takes it where it is built and the CPU has AVX2 or AVX-512 VNNI (docs/cpu-engine.md)
    cpu_kernel: Annotated[Literal["auto", "on", "off"], Meta(
        description="quantized layers through exo's CPU kernel (auto: where built, on a CPU with AVX2 or AVX-512 VNNI)"
    )] = "auto"
    kernel_isa: Annotated[Literal["", "scalar", "avx2", "avx512vnni"], Meta(description="force the CPU kernel's ISA")] = ""  # noqa: E501
    kernel_threads: Annotated[int, Meta(ge=0, description="CPU kernel threads per call (0: its default)")] = 0


def runner_setting_fields() -> tuple[msgspec.structs.FieldInfo, ...]:
    return msgspec.structs.fields(RunnerSettings)


def runner_setting_help() -> dict[str, str]:
    """field -> its description (the Meta of its annotation)."""
    hints = get_type_hints(RunnerSettings, include_extras=True)
    out = {}
    for field in runner_setting_fields():
        metas = [m for arg in _annotated(hints[field.name]) for m in get_args(arg)[1:] if isinstance(m, Meta)]
        out[field.name] = next((m.description for m in metas if m.description), field.name)
    return out


def _annotated(hint: Any) -> list[Any]:
    """`Annotated[...]` itself or the Annotated members of a union (`Annotated[int, ...] | None`)."""
    return [hint] if get_origin(hint) is Annotated else [a for a in get_args(hint) if get_origin(a) is Annotated]


class RunnerSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    instance_id: str
    model_path: str
    node_id: str
    rank: int
    world_size: int
    start_layer: int
    end_layer: int
    context_length: int
    nats_url: str
    state_dir: str  # where the runner reads the cluster secret and writes nothing else
    worker_pid: int  # the worker that started it, until its registry record names another
    strategy: Literal["pipeline", "tensor"] = "pipeline"
    backend: str = "ring"
    log_level: str = "info"
    blas: str = "auto"  # the worker's choice, shown by `exo doctor` (the BLAS itself is LD_PRELOAD's)
    supervisor_pid: int | None = None  # the node: the runner never outlives it
    record_path: str | None = None  # its registry record (services/worker/runners/registry.py)
    settings: RunnerSettings = RunnerSettings()


class DiscoverySpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    common: CommonConfig
    roles: tuple[str, ...]
    memory: int | None  # the budget placement uses instead of the measured free memory
    port: int  # UDP, beacons and probes
    bind: str
    peers: tuple[tuple[str, int], ...]  # (host, port) beaconed to directly
    route_port: int  # this node's NATS cluster port, advertised in beacons; 0: takes no routes
    hostname: str | None  # None: the machine's


class MasterSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    common: CommonConfig


class WorkerSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    common: CommonConfig
    weight_format: Literal["q4", "f32"] | None = None
    blas: Literal["auto", "reference"] = "auto"
    runner: RunnerSettings = RunnerSettings()


class GatewaySpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The API key is not here (a command line is public): the gateway takes it from its own environment."""

    common: CommonConfig
    host: str
    port: int
    max_body_bytes: int
    api_key_file: str | None


def _enc(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    raise NotImplementedError(type(obj))


def _dec(kind: type, obj: Any) -> Any:
    if kind is Path and isinstance(obj, str):
        return Path(obj)
    raise NotImplementedError(kind)


def encode_spec(spec: msgspec.Struct) -> str:
    return msgspec.json.encode(spec, enc_hook=_enc).decode()


def decode_spec(text: str | bytes, kind: type[Spec]) -> Spec:
    """Raises msgspec.ValidationError naming the field (e.g. `$.settings.max_batch`)."""
    return msgspec.json.decode(text, type=kind, dec_hook=_dec)


def convert_spec(values: dict[str, Any], kind: type[Spec]) -> Spec:
    """From flag and environment values (strings where they came from the environment)."""
    return msgspec.convert(values, kind, strict=False, dec_hook=_dec)
