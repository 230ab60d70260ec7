"""The test command, `python -m tests`: the type check, the fast tier, then the slow tier, each in a process of its own.

The type check (mypy, configured in pyproject.toml) runs first: a wrong id or an unhandled event fails before any test.
The fast tier (tests/unit: pure logic on plain data, no processes, no real model) stops at its first failure and
the run stops with it: a broken contract shows in seconds, before the slow tier spends minutes on real nodes.
The slow tier (tests/integration) runs every test: two files at a time (pytest-xdist), then alone the files whose
tests judge time (ONE_AT_A_TIME in tests/conftest.py). Per-test timeouts come from tests/conftest.py, and
--durations names the slowest tests, so a hang or a slowdown names itself. Extra arguments go to both tiers
(e.g. `python -m tests -k bus`).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

NO_TESTS_COLLECTED = 5  # pytest's exit code when a -k or -m given here selects nothing in a tier
DURATIONS = "--durations=15"
# Most slow-tier tests wait on processes (a node starting, a runner restarting, a timeout), so two files at a time
# fill the machine's two cores better; the tests that judge time run alone afterwards (ONE_AT_A_TIME in conftest.py).
PARALLEL_WORKERS = 2


def steps(extra: list[str], reports: Path) -> list[tuple[str, list[str]]]:
    pytest = [sys.executable, "-m", "pytest", DURATIONS]
    return [
        ("types: mypy", [sys.executable, "-m", "mypy"]),
        ("fast tier: tests/unit", [*pytest, "tests/unit", "-x", f"--junitxml={reports / 'fast.xml'}", *extra]),
        ("slow tier, two files at a time: tests/integration", [
            *pytest, "tests/integration", "-m", "not one_at_a_time", "-n", str(PARALLEL_WORKERS), "--dist", "loadfile",
            f"--junitxml={reports / 'slow-parallel.xml'}", *extra]),
        ("slow tier, one at a time: tests/integration", [
            *pytest, "tests/integration", "-m", "one_at_a_time", f"--junitxml={reports / 'slow-serial.xml'}", *extra]),
    ]


def tally(reports: Path) -> str:
    """Both tiers' counts as one plain closing line: 'N passed, N failed, N skipped'."""
    total = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for report in sorted(reports.glob("*.xml")):
        for suite in ET.parse(report).getroot().iter("testsuite"):
            for key in total:
                total[key] += int(suite.get(key, 0))
    failed = total["failures"] + total["errors"]
    passed = total["tests"] - failed - total["skipped"]
    return f"{passed} passed, {failed} failed, {total['skipped']} skipped"


def main(extra: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="exo-test-reports-") as tmp:
        code = run_steps(extra, Path(tmp))
        print(tally(Path(tmp)), flush=True)
    return code


def run_steps(extra: list[str], reports: Path) -> int:
    took = []
    for name, argv in steps(extra, reports):
        print(f"\n===== {name} =====", flush=True)
        started = time.monotonic()
        code = subprocess.run(argv, cwd=REPO_ROOT).returncode
        took.append(f"{name.split(':')[0]} {time.monotonic() - started:.0f} s")
        if code == NO_TESTS_COLLECTED and extra:
            continue
        if code != 0:
            print(f"===== stopped: {name} failed (exit code {code}); {', '.join(took)} =====", flush=True)
            return code
    print(f"===== all passed: {', '.join(took)} =====", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
