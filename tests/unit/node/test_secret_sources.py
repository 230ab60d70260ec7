"""Where the cluster secret comes from, and that it does not stay visible: file mode checked, argv scrubbed,
the environment emptied, `exo join` storing it privately."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared.cluster_secret import SECRET_ENV, BadSecret, load_or_create, read_secret_file, secret_path, write_private

from services.node.scrub import memory_ranges, offsets
from services.node.secret_source import given_secret

REPO_ROOT = Path(__file__).resolve().parents[3]
SECRET = "7a" * 32


def args(file: str | None = None, argv: str | None = None) -> argparse.Namespace:
    return argparse.Namespace(cluster_secret_file=file, cluster_secret=argv)


def given(ns: argparse.Namespace) -> str | None:
    """As `exo` does: the variable is read (and taken out of the environment) by the one reader."""
    from shared.config import environment

    return given_secret(ns, environment().get("cluster_secret"))


def test_a_secret_file_that_others_can_read_is_refused_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text(SECRET)
    path.chmod(0o644)
    with pytest.raises(BadSecret, match="chmod 600"):
        read_secret_file(path)
    path.chmod(0o600)
    assert read_secret_file(path) == SECRET


def test_a_missing_secret_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(BadSecret, match="cannot read the secret file"):
        read_secret_file(tmp_path / "nope")


def test_the_file_wins_and_the_environment_is_emptied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "secret"
    write_private(path, SECRET)
    monkeypatch.setenv(SECRET_ENV, "5b" * 32)
    assert given(args(file=str(path))) == SECRET
    assert SECRET_ENV not in os.environ  # so that no child inherits it


def test_the_environment_is_used_when_no_flag_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET.upper())
    assert given(args()) == SECRET and SECRET_ENV not in os.environ
    assert given(args()) is None  # nothing given: the node uses the stored one


def test_both_flags_are_refused(tmp_path: Path) -> None:
    with pytest.raises(BadSecret, match="not both"):
        given_secret(args(file=str(tmp_path / "x"), argv=SECRET))


def test_a_secret_on_the_command_line_warns(capsys: pytest.CaptureFixture[str]) -> None:
    assert given_secret(args(argv=SECRET)) == SECRET
    assert "every user of this machine can read" in capsys.readouterr().err


def test_scrubbing_hides_the_secret_from_the_process_list() -> None:
    """A real process: what /proc/self/cmdline and /proc/self/environ show after the scrub."""
    code = ("import sys; from pathlib import Path; from services.node.scrub import scrub_own_process;"
            "assert scrub_own_process(sys.argv[1]); sys.stdout.buffer.write("
            "Path('/proc/self/cmdline').read_bytes() + b'|' + Path('/proc/self/environ').read_bytes())")  # fmt: skip
    env = {**os.environ, SECRET_ENV: SECRET}
    shown = subprocess.run([sys.executable, "-c", code, SECRET, "--other", "flag"], cwd=REPO_ROOT, env=env,
                           capture_output=True, check=True).stdout  # fmt: skip
    assert SECRET.encode() not in shown
    assert b"--other\0flag" in shown and b"*" * 64 in shown  # the rest untouched, the secret overwritten


def test_offsets_and_stat_fields() -> None:
    assert offsets(b"abXXabXab", b"ab") == [0, 4, 7] and offsets(b"abc", b"") == []
    stat = "1 (a b) " + " ".join(str(i) for i in range(3, 53))
    assert memory_ranges(stat) == ((48, 49), (50, 51))


def test_exo_join_stores_the_secret_privately_once(tmp_path: Path) -> None:
    def join(text: str, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "services.node.cli", "join", "--state-dir", str(tmp_path), *extra],
                              input=text, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip

    done = join(SECRET + "\n")
    assert done.returncode == 0, done.stderr
    assert secret_path(tmp_path).stat().st_mode & 0o077 == 0
    assert load_or_create(tmp_path, None) == (SECRET, False)  # what the next `exo` uses
    assert SECRET not in done.stdout + done.stderr
    other = join("5b" * 32 + "\n")
    assert other.returncode == 2 and "--force" in other.stderr
    assert join("not hex\n").returncode == 2
    assert join("5b" * 32 + "\n", "--force").returncode == 0 and load_or_create(tmp_path, None)[0] == "5b" * 32


def test_a_service_takes_the_secret_out_of_its_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.cluster_secret import remember, remembered
    from shared.config import add_common_args, common_from_args, service_spec
    from shared.specs import MasterSpec

    def start_alone() -> None:  # a service started alone builds its spec from its flags and the environment
        parser = argparse.ArgumentParser()
        add_common_args(parser)
        service_spec(["--state-dir", str(tmp_path)], MasterSpec, parser, lambda ns, found: {"common": common_from_args(ns, found)})

    write_private(secret_path(tmp_path), "5b" * 32)
    try:
        monkeypatch.setenv(SECRET_ENV, SECRET)
        start_alone()
        assert remembered() == SECRET and SECRET_ENV not in os.environ  # runners it starts do not inherit it
        start_alone()
        assert remembered() == "5b" * 32  # else the node's stored one
        monkeypatch.setenv(SECRET_ENV, "not hex")
        start_alone()
        assert remembered() == "5b" * 32
    finally:
        remember(None)


def test_the_flags_scrubbed_first_thing() -> None:
    from services.node.scrub import flag_values

    argv = ["exo", "--cluster-secret", "aa", "--cluster-secret=bb", "--nats-url", "nats://u:p@h:1", "--cluster-secret"]
    assert sorted(flag_values(argv, "--cluster-secret")) == ["aa", "bb"]
    assert flag_values(argv, "--nats-url") == ["nats://u:p@h:1"]
