"""`exo` refuses bad cluster flags with a usage error that names the flag, before it starts anything."""

from __future__ import annotations

import pytest

from services.node.cli import main


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--route-port", "-5"], "--route-port"),
        (["--discovery-port", "70000"], "--discovery-port"),
        (["--port", "x"], "--port"),
        (["--peers", "a:b:c"], "--peers"),
        (["--peers", "host:0"], "--peers"),
    ],
)
def test_bad_cluster_flags_are_usage_errors(argv: list[str], named: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert named in capsys.readouterr().err
