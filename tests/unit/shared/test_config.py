"""shared/config.py parse_bytes and shared/identity.py load_or_create_node_id."""

from __future__ import annotations

import multiprocessing
import re
import threading
from pathlib import Path

import pytest

from shared.config import parse_bytes
from shared.identity import load_or_create_node_id, node_id_path

# --- parse_bytes --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,expected",
    [
        ("1GB", 1000**3),
        ("1gb", 1000**3),
        ("512MiB", 512 * 1024**2),
        ("512MB", 512 * 1000**2),
        ("2g", 2 * 1024**3),
        ("2G", 2 * 1024**3),
        ("2GiB", 2 * 1024**3),
        ("1000000", 1_000_000),
        ("100b", 100),
        ("1.5GiB", 3 * 1024**3 // 2),
        ("  8 GB ", 8 * 1000**3),
        ("1TB", 1000**4),
        ("1t", 1024**4),
        ("4k", 4096),
        ("4kb", 4000),
    ],
)
def test_parse_bytes_accepts(text, expected):
    assert parse_bytes(text) == expected
    assert isinstance(parse_bytes(text), int)


@pytest.mark.parametrize("text", ["", "GB", "abc", "12 parsecs", "5XB", "1e"])
def test_parse_bytes_rejects_with_helpful_message(text):
    with pytest.raises(ValueError) as info:
        parse_bytes(text)
    message = str(info.value)
    assert repr(text) in message  # says what was wrong
    assert re.search(r"\d+\s*(MB|GB|GiB)", message)  # and shows what would do


@pytest.mark.parametrize("text", ["0", "0GB", "-1GB", "-512MiB", "0.0g"])
def test_parse_bytes_rejects_zero_and_negative(text):
    with pytest.raises(ValueError, match="positive"):
        parse_bytes(text)


def test_parse_bytes_rejects_sizes_that_round_to_zero():
    with pytest.raises(ValueError):
        parse_bytes("0.5b")


@pytest.mark.parametrize("text", ["1.2.3GB", "--5GB", "1-2GB", "g1g"])
def test_parse_bytes_malformed_number_has_helpful_message(text):
    with pytest.raises(ValueError) as info:
        parse_bytes(text)
    assert repr(text) in str(info.value)


def test_parse_bytes_huge_number_raises_value_error():
    with pytest.raises(ValueError):
        parse_bytes("1e400")


# --- node identity ------------------------------------------------------------------------------


def test_node_id_created_once_and_stable(tmp_path: Path):
    state_dir = tmp_path / "state"  # does not exist yet
    first = load_or_create_node_id(state_dir)
    assert first.startswith("node-") and len(first) > len("node-")
    assert node_id_path(state_dir).read_text().strip() == first
    for _ in range(3):
        assert load_or_create_node_id(state_dir) == first


def test_node_id_differs_between_state_dirs(tmp_path: Path):
    assert load_or_create_node_id(tmp_path / "a") != load_or_create_node_id(tmp_path / "b")


def test_node_id_read_from_existing_file(tmp_path: Path):
    node_id_path(tmp_path).write_text("node-handmade\n")
    assert load_or_create_node_id(tmp_path) == "node-handmade"


def test_node_id_leaves_no_temporary_files(tmp_path: Path):
    load_or_create_node_id(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["node_id"]


def test_loser_of_a_creation_race_adopts_the_winners_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Another process creates the file between our check and our link: we must return its id, not ours."""
    import shared.identity as identity

    real_link = identity.os.link

    def link(src, dst):  # noqa: ANN001
        Path(dst).write_text("node-winner\n")  # the other creator got there first
        return real_link(src, dst)

    monkeypatch.setattr(identity.os, "link", link)
    assert load_or_create_node_id(tmp_path) == "node-winner"
    monkeypatch.undo()
    assert load_or_create_node_id(tmp_path) == "node-winner"
    assert [p.name for p in tmp_path.iterdir()] == ["node_id"]


def _create_in_process(state_dir: str, barrier, queue) -> None:  # noqa: ANN001
    barrier.wait()
    queue.put(load_or_create_node_id(Path(state_dir)))


def test_concurrent_processes_agree(tmp_path: Path):
    ctx = multiprocessing.get_context("fork")
    n = 6
    barrier, queue = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_create_in_process, args=(str(tmp_path / "s"), barrier, queue)) for _ in range(n)]
    for p in procs:
        p.start()
    ids = [queue.get(timeout=30) for _ in range(n)]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert len(set(ids)) == 1
    assert load_or_create_node_id(tmp_path / "s") == ids[0]


def test_concurrent_threads_agree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Deterministic interleaving: thread A has written its temporary file and is about to link it when
    thread B runs the whole function. Both must end with the same id."""
    import shared.identity as identity

    real_link = identity.os.link
    a_at_link, b_done = threading.Event(), threading.Event()
    thread_a: list[threading.Thread] = []

    def link(src, dst):  # noqa: ANN001
        if thread_a and threading.current_thread() is thread_a[0]:
            a_at_link.set()
            assert b_done.wait(10)
        return real_link(src, dst)

    monkeypatch.setattr(identity.os, "link", link)
    results: dict[str, object] = {}

    def run_a() -> None:
        try:
            results["a"] = load_or_create_node_id(tmp_path)
        except BaseException as exc:  # noqa: BLE001
            results["a"] = exc

    thread_a.append(threading.Thread(target=run_a))
    thread_a[0].start()
    assert a_at_link.wait(10)
    results["b"] = load_or_create_node_id(tmp_path)
    b_done.set()
    thread_a[0].join(10)
    assert not isinstance(results["a"], BaseException), repr(results["a"])
    assert results["a"] == results["b"]


def test_sequential_threads_agree(tmp_path: Path):
    ids: list[str] = []
    for _ in range(4):
        t = threading.Thread(target=lambda: ids.append(load_or_create_node_id(tmp_path)))
        t.start()
        t.join()
    assert len(set(ids)) == 1
