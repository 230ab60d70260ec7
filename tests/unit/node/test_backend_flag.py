"""`exo --backend jaccl|ring|auto`: the backend of the instance the node places at start."""

from __future__ import annotations

import pytest

from services.master.placement import NoPlacement, place
from services.node.cli import main, node_parser
from shared.commands import PlaceInstance
from shared.models import get_card
from shared.state import ClusterState
from tests.unit.factories import facts


@pytest.mark.parametrize("backend", ["jaccl", "ring", "auto"])
def test_backend_flag_is_parsed(backend: str) -> None:
    assert node_parser().parse_args(["--backend", backend]).backend == backend


def test_backend_defaults_to_auto() -> None:
    assert node_parser().parse_args([]).backend == "auto"


def test_unknown_backend_is_a_usage_error_naming_the_choices(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--backend", "mpi"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--backend" in err and "jaccl" in err and "ring" in err


def test_the_flag_reaches_the_start_up_placement_command() -> None:
    """What bootstrap sends for `--backend jaccl` on a machine without RDMA is refused with the reason."""
    one_node = ClusterState(nodes={"a": facts("a")})  # type: ignore[dict-item]
    request = PlaceInstance("smollm2-135m", backend="jaccl", if_absent=True)
    refused = place(one_node, request, get_card("smollm2-135m"), "i")
    assert isinstance(refused, NoPlacement)
    assert "jaccl needs RDMA" in refused.reason and "0 worker node(s) report RDMA" in refused.reason
    ring = place(one_node, PlaceInstance("smollm2-135m", backend="ring"), get_card("smollm2-135m"), "i")
    assert not isinstance(ring, NoPlacement) and ring.backend == "ring"
