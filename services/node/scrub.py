"""Overwrite a secret in this process's own command line and environment as other users see them.

On Linux /proc/<pid>/cmdline (world-readable) and /proc/<pid>/environ are read from the process's memory,
between the addresses /proc/self/stat gives (arg_start..arg_end, env_start..env_end); Python keeps copies
of both, so overwriting the original bytes in place hides the secret without disturbing the interpreter.
Elsewhere nothing is done and the caller says so. Someone who read the command line in the first
milliseconds, before this ran, has seen it: hence the warning that comes with --cluster-secret.
"""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path

# Fields of /proc/self/stat, counted after the ")" that ends the command name (field 3 is index 0).
ARG_START, ARG_END, ENV_START, ENV_END = 48 - 3, 49 - 3, 50 - 3, 51 - 3


def offsets(haystack: bytes, needle: bytes) -> list[int]:
    """Where `needle` starts in `haystack`, every occurrence."""
    found, at = [], haystack.find(needle)
    while needle and at >= 0:
        found.append(at)
        at = haystack.find(needle, at + len(needle))
    return found


def memory_ranges(stat_text: str) -> tuple[tuple[int, int], tuple[int, int]]:
    fields = stat_text.rsplit(")", 1)[1].split()
    return (int(fields[ARG_START]), int(fields[ARG_END])), (int(fields[ENV_START]), int(fields[ENV_END]))


def scrub_own_process(*texts: str) -> bool:
    """Replace every copy of each text (the secret as given, and normalised) in the visible command line and
    environment with '*'. False when this platform offers no way to (the caller warns)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        ranges = memory_ranges(Path("/proc/self/stat").read_text())
    except (OSError, IndexError, ValueError):
        return False
    needles = {text.encode() for text in texts if text} | {text.strip().encode() for text in texts if text.strip()}
    for start, end in ranges:
        if end <= start:
            continue
        visible = ctypes.string_at(start, end - start)
        for needle in needles:
            for at in offsets(visible, needle):
                ctypes.memset(start + at, ord("*"), len(needle))
    return True


def flag_values(argv: list[str], flag: str) -> list[str]:
    """The values given to `flag` in argv, as `flag VALUE` or `flag=VALUE`."""
    values = [arg.split("=", 1)[1] for arg in argv if arg.startswith(flag + "=")]
    return values + [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == flag]


def scrub_secret_flags(argv: list[str]) -> None:
    """Run first thing in `exo`, before imports that take most of a second: the secret of --cluster-secret
    and the password of a --nats-url are overwritten in the process list at once."""
    from urllib.parse import urlsplit

    values = flag_values(argv, "--cluster-secret")
    values += [urlsplit(url).password or "" for url in flag_values(argv, "--nats-url")]
    if any(values):
        scrub_own_process(*(v for v in values if v))
