"""The bus takes only connections with the credentials derived from the cluster secret."""

from __future__ import annotations

import subprocess
import sys

import nats
import pytest

from shared.cluster_secret import nats_client_credentials
from tests.conftest import REPO_ROOT, Node

pytestmark = pytest.mark.slow


async def try_connect(url: str, **options: str) -> Exception | None:
    try:
        nc = await nats.connect(url, allow_reconnect=False, connect_timeout=3, max_reconnect_attempts=0, **options)
    except Exception as exc:  # noqa: BLE001 - the refusal is what the test looks at
        return exc
    await nc.close()
    return None


async def test_a_connection_without_credentials_is_refused(node: Node) -> None:
    refused = await try_connect(node.nats_url_without_credentials)
    assert refused is not None and "authorization" in str(refused).lower(), refused


async def test_credentials_of_another_secret_are_refused(node: Node) -> None:
    user, password = nats_client_credentials("cd" * 32)
    refused = await try_connect(node.nats_url_without_credentials, user=user, password=password)
    assert refused is not None and "authorization" in str(refused).lower(), refused


async def test_the_cluster_credentials_are_accepted(node: Node) -> None:
    assert await try_connect(node.nats_url) is None


def test_joining_a_bus_with_the_wrong_secret_fails_at_once_with_the_reason(node: Node, tmp_path) -> None:  # noqa: ANN001
    result = subprocess.run(
        [sys.executable, "-m", "services.node.cli", "--state-dir", str(tmp_path), "--no-model", "--port", "0",
         "--nats-url", node.nats_url_without_credentials, "--cluster-secret", "cd" * 32],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert "--cluster-secret" in result.stderr and "refused our credentials" in result.stderr
