"""`exo --api-key/--api-key-file`: a bad key is a usage error; the warnings; only the gateway inherits the key."""

from __future__ import annotations

import argparse
import os

import pytest

from services.node.cli import check_api_key, main
from services.node.node_config import NOT_FROM_ENVIRONMENT, node_parser
from shared.config import parse_with_environment


def checked(argv: list[str]):  # noqa: ANN201 - a Namespace holding the resolved key
    args, _ = parse_with_environment(node_parser(), argv, NOT_FROM_ENVIRONMENT)
    return argparse.Namespace(api_key=check_api_key(args, argv))


@pytest.mark.parametrize("argv", [["--api-key-file", "/nonexistent/key"], ["--api-key", "a", "--api-key-file", "/x"],
                                  ["--api-key", " padded"]])  # fmt: skip
def test_bad_key_is_a_usage_error(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert "API key" in capsys.readouterr().err


def test_no_key_beyond_loopback_warns(capsys: pytest.CaptureFixture) -> None:
    assert checked(["--host", "0.0.0.0"]).api_key is None
    err = capsys.readouterr().err
    assert "warning" in err and "0.0.0.0" in err and "without an API key" in err


def test_loopback_or_a_key_does_not_warn(tmp_path, capsys: pytest.CaptureFixture) -> None:
    key = tmp_path / "key"
    key.write_text("sk-test\n")
    assert checked(["--host", "0.0.0.0", "--api-key-file", str(key)]).api_key == "sk-test"
    assert checked([]).api_key is None
    assert checked(["--host", "0.0.0.0", "--no-gateway"]).api_key is None
    assert capsys.readouterr().err == ""


def test_key_on_the_command_line_warns(capsys: pytest.CaptureFixture) -> None:
    assert checked(["--api-key", "sk-argv"]).api_key == "sk-argv"
    assert "visible to every user" in capsys.readouterr().err


def test_key_from_the_environment_is_not_inherited_by_every_service(monkeypatch, capsys) -> None:
    monkeypatch.setenv("EXO_API_KEY", "sk-env")
    assert checked([]).api_key == "sk-env"
    assert "EXO_API_KEY" not in os.environ  # run_node hands it to the gateway's environment only
    assert capsys.readouterr().err == ""
