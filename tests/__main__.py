"""The test command, `python -m tests`: the type check, the fast tier, then the slow tier, each in a process of its own.

The type check (mypy, configured in pyproject.toml) runs first: a wrong id or an unhandled event fails before any test.
The fast tier (tests/unit: pure logic on plain data, no processes, no real model) stops at its first failure and
the run stops with it: a broken contract shows in seconds, before the slow tier spends minutes on real nodes.
The slow tier (tests/integration) runs every test. Per-test timeouts come from tests/conftest.py, and
--durations names the slowest tests, so a hang or a slowdown names itself. Extra arguments go to both tiers
(e.g. `python -m tests -k bus`).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

NO_TESTS_COLLECTED = 5  # pytest's exit code when a -k or -m given here selects nothing in a tier
DURATIONS = "--durations=15"


def steps(extra: list[str]) -> list[tuple[str, list[str]]]:
    pytest = [sys.executable, "-m", "pytest", DURATIONS]
    return [
        ("types: mypy", [sys.executable, "-m", "mypy"]),
        ("fast tier: tests/unit", [*pytest, "tests/unit", "-x", *extra]),
        ("slow tier: tests/integration", [*pytest, "tests/integration", *extra]),
    ]


def main(extra: list[str]) -> int:
    took = []
    for name, argv in steps(extra):
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
