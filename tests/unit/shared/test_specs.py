"""One config per process (shared/specs.py, shared/config.py, shared/env_names.py): the specs travel as JSON,
the EXO_* variables are read in one place, and no child of the node inherits them."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest

from shared.config import CommonConfig, env_table, environment, without_exo_variables
from shared.specs import RunnerSettings, RunnerSpec, WorkerSpec, convert_spec, decode_spec, encode_spec

REPO = Path(__file__).resolve().parents[3]


def test_a_spec_survives_its_command_line() -> None:
    spec = WorkerSpec(CommonConfig("nats://127.0.0.1:1", Path("/s"), "info", True, 42), "q4", "reference",
                      RunnerSettings(max_batch=2, ring_wait="spin"))  # fmt: skip
    assert decode_spec(encode_spec(spec), WorkerSpec) == spec
    assert decode_spec(encode_spec(spec), WorkerSpec).common.state_dir == Path("/s")


def test_a_bad_setting_is_refused_naming_its_field() -> None:
    with pytest.raises(msgspec.ValidationError, match="ring_wait"):
        convert_spec({"ring_wait": "poll"}, RunnerSettings)
    with pytest.raises(msgspec.ValidationError, match="max_batch"):
        convert_spec({"max_batch": "0"}, RunnerSettings)
    assert convert_spec({"max_batch": "3", "kernel_threads": "2"}, RunnerSettings) == RunnerSettings(3, kernel_threads=2)
    runner = '{"instance_id":"i","model_path":"m","node_id":"n","rank":0,"world_size":1,"start_layer":0,' \
             '"end_layer":30,"context_length":8192,"nats_url":"u","state_dir":"/s","worker_pid":1,"n_layers":30}'
    with pytest.raises(msgspec.ValidationError, match="n_layers"):  # dropped: nobody read it
        decode_spec(runner, RunnerSpec)


def test_every_runner_setting_is_a_variable_and_a_spec_field() -> None:
    names = {row.name: row.dest for row in env_table()}
    for field in msgspec.structs.fields(RunnerSettings):
        assert names[f"EXO_{field.name.upper()}"] == field.name


def test_the_secret_variables_are_taken_out_of_the_environment() -> None:
    environ = {"EXO_CLUSTER_SECRET": "ab" * 32, "EXO_API_KEY": "sk", "EXO_PORT": "9000", "HOME": "/h"}
    found = environment(environ)
    assert found == {"cluster_secret": "ab" * 32, "api_key": "sk", "port": "9000"}
    assert environ == {"EXO_PORT": "9000", "HOME": "/h"}


def test_a_child_of_the_node_gets_no_exo_variable_but_the_native_ones() -> None:
    environ = {"EXO_RING_WAIT": "spin", "EXO_STATE_DIR": "/s", "EXO_KERNEL_SPIN_US": "50", "MLX_RANK": "1", "PATH": "/b"}
    assert without_exo_variables(environ) == {"EXO_KERNEL_SPIN_US": "50", "MLX_RANK": "1", "PATH": "/b"}


def _sources() -> list[Path]:
    return [p for folder in ("services", "shared") for p in (REPO / folder).rglob("*.py")]


def test_the_variables_are_read_in_one_place_and_never_written() -> None:
    reads = re.compile(r"""(os\.environ(\.get|\.pop)?\s*[\[(]\s*["']EXO_|getenv\(\s*["']EXO_)""")
    writes = re.compile(r"os\.environ\[[^]]+\]\s*=(?!=)|os\.environ\.(update|setdefault)\(|os\.putenv\(")
    for path in _sources():
        text = path.read_text()
        where = path.relative_to(REPO)
        assert not reads.search(text), f"{where} reads an EXO_* variable: use shared.config.environment"
        assert not writes.search(text), f"{where} writes os.environ, which every child inherits"


def test_the_readme_names_every_variable() -> None:
    readme = (REPO / "README.md").read_text()
    missing = [row.name for row in env_table() if row.name not in readme]
    assert not missing, f"README.md does not name {missing}"
