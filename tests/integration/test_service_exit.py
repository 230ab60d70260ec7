"""A service process always ends: when told to, when its node's supervisor is gone, and even when its event loop
does not (shared/process_lifetime.py). Each service here is a real child process running run_until_signalled."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

from services.node.nats_server import nats_server_binary
from shared.bus import connect, disconnect
from tests.conftest import free_port, wait_for_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A task that ignores its cancel, as nats-py's reconnect loop can on Python 3.11 (asyncio.wait_for returns the
# result of a connect that failed at the moment of the cancel, and the loop goes on): asyncio.run's cleanup
# would wait for it for ever.
STUBBORN = """
async def stubborn():
    while True:
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            pass
"""


def start_service(body: str, supervisor_pid: int | None = None) -> subprocess.Popen:
    """`SUPERVISOR` in `body`: the pid its spec would name (None: a service started alone)."""
    script = textwrap.dedent("""
        import asyncio, sys, time
        from shared.process_lifetime import run_until_signalled
        SUPERVISOR = int(sys.argv[1]) if len(sys.argv) > 1 else None
    """) + STUBBORN + textwrap.dedent(body)
    pid = [] if supervisor_pid is None else [str(supervisor_pid)]
    return subprocess.Popen([sys.executable, "-c", script, *pid], cwd=ROOT, env=os.environ,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip


def ended_within(proc: subprocess.Popen, seconds: float) -> tuple[int, str, float]:
    started = time.monotonic()
    try:
        out, _ = proc.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"the service was still running {seconds:.0f} s later:\n{out}")
    return proc.returncode, out, time.monotonic() - started


@pytest.mark.parametrize(("ending", "code"), [("return", 0), ("raise RuntimeError('broken')", 1)])
def test_a_service_whose_event_loop_does_not_end_exits_after_the_grace(ending: str, code: int) -> None:
    proc = start_service(f"""
        async def main(stop):
            asyncio.create_task(stubborn())
            await asyncio.sleep(0.2)
            {ending}
        run_until_signalled(main, grace_s=1.0)
    """)
    returncode, out, took = ended_within(proc, 20)
    assert returncode == code, out
    assert "event loop did not end; exiting hard" in out
    assert took < 10


def test_a_service_that_ends_cleanly_does_not_wait_for_the_grace() -> None:
    proc = start_service("""
        async def main(stop):
            await asyncio.sleep(0.2)
        run_until_signalled(main, grace_s=30.0)
    """)
    returncode, out, took = ended_within(proc, 20)
    assert returncode == 0, out
    assert took < 10 and "exiting hard" not in out


@pytest.fixture
def supervisor() -> subprocess.Popen:
    """A stand-in for the node's supervisor: a process older than the service, which the test kills."""
    proc = subprocess.Popen(["sleep", "120"])
    yield proc
    proc.kill()
    proc.wait()


def serve_then_lose_the_node(body: str, supervisor: subprocess.Popen) -> tuple[int, str, float]:
    """Start a service under `supervisor`; once it prints "serving", kill the supervisor; how the service ended."""
    proc = start_service(body, supervisor.pid)
    assert proc.stdout.readline().strip() == "serving"
    supervisor.kill()
    supervisor.wait()
    return ended_within(proc, 20)


def test_a_service_stops_when_its_node_is_gone(supervisor: subprocess.Popen) -> None:
    returncode, out, took = serve_then_lose_the_node("""
        async def main(stop):
            print("serving", flush=True)
            await stop.wait()
            print("stopped cleanly", flush=True)
        run_until_signalled(main, SUPERVISOR, grace_s=30.0)
    """, supervisor)  # fmt: skip
    assert returncode == 0, out
    assert "the node's supervisor is gone; stopping" in out and "stopped cleanly" in out
    assert took < 10


def test_a_service_whose_loop_is_blocked_still_ends_with_its_node(supervisor: subprocess.Popen) -> None:
    """The watch is a thread: a service stuck in a blocking call on its event loop is ended all the same."""
    returncode, out, took = serve_then_lose_the_node("""
        async def main(stop):
            print("serving", flush=True)
            time.sleep(120)  # the event loop never runs again
        run_until_signalled(main, SUPERVISOR, grace_s=1.0)
    """, supervisor)  # fmt: skip
    assert returncode == 1, out
    assert "still running after the node's supervisor went; exiting hard" in out
    assert took < 10


async def test_disconnect_from_a_bus_that_is_gone_neither_raises_nor_hangs() -> None:
    """nats-py's drain raises while the client reconnects; a service's stop must not (it used to end with a
    traceback in every service when the node's bus went first)."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="exo-bus-") as store:
        argv = [str(nats_server_binary()), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", store]
        server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: ASYNC220
        try:
            assert await asyncio.to_thread(wait_for_port, "127.0.0.1", port, 10.0), "nats-server did not start"
            nc = await connect(f"nats://127.0.0.1:{port}", "exit-test")
            live = await connect(f"nats://127.0.0.1:{port}", "exit-test-live")
            await disconnect(live)  # a connected client drains
            assert live.is_closed
        finally:
            server.kill()
            server.wait(10)
        deadline = time.monotonic() + 10
        while nc.is_connected and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not nc.is_connected
        await asyncio.wait_for(disconnect(nc), 10)
        assert nc.is_closed
