"""The cluster secret and what is derived from it: the key that signs discovery beacons, the key that signs
events, and the NATS bus credentials of each role (client connections) and of routes between buses.

The secret is 32 random bytes written as hex. A node generates it on first start (`<state-dir>/cluster.secret`,
mode 0600) and prints it once; other machines get it with `exo join` (pasted once, stored 0600), a file
(`--cluster-secret-file`, mode checked) or the environment (EXO_CLUSTER_SECRET). The processes a node starts
read it from the state dir: it is never put on a command line nor into os.environ (children would inherit it).
Everything else is derived with HMAC-SHA256 under a purpose label, so no derived value reveals another.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

SECRET_FILE = "cluster.secret"
SECRET_ENV = "EXO_CLUSTER_SECRET"
SECRET_BYTES = 32


class BadSecret(ValueError):
    pass


def normalise(text: str) -> str:
    cleaned = text.strip().lower()
    try:
        raw = bytes.fromhex(cleaned)
    except ValueError:
        raise BadSecret("a cluster secret is 64 hexadecimal characters (copy it from the first node)") from None
    if len(raw) < 16:
        raise BadSecret(f"a cluster secret has at least 32 hexadecimal characters, not {len(cleaned)}")
    return cleaned


def generate() -> str:
    return secrets.token_hex(SECRET_BYTES)


def secret_path(state_dir: Path) -> Path:
    return state_dir / SECRET_FILE


def exposure_problem(path: Path, mode: int) -> str | None:
    """Why a secret file with this st_mode must not be used: one that others can read is no secret."""
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return (f"{path} is readable by other users (mode {stat.S_IMODE(mode):04o}): "
                f"run `chmod 600 {path}` and start again")  # fmt: skip
    return None


def read_secret_file(path: Path) -> str:
    """The secret in a file the operator gave us, refused when group or others may read it."""
    try:
        mode = path.stat().st_mode
        text = path.read_text()
    except OSError as exc:
        raise BadSecret(f"cannot read the secret file {path}: {exc.strerror or exc}") from None
    if problem := exposure_problem(path, mode):
        raise BadSecret(problem)
    return normalise(text)


def stored(state_dir: Path) -> str | None:
    """The secret this node keeps in its state dir, if any."""
    try:
        return normalise(secret_path(state_dir).read_text())
    except (OSError, BadSecret):
        return None


def load_or_create(state_dir: Path, given: str | None) -> tuple[str, bool]:
    """(secret, created): the given one (kept for the next start), the stored one, or a new one."""
    path = secret_path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    if given:
        secret = normalise(given)
        if not path.exists() or path.read_text().strip() != secret:
            write_private(path, secret)
        return secret, False
    if path.exists():
        return normalise(path.read_text()), False
    secret = generate()
    write_private(path, secret)
    return secret, True


def write_private(path: Path, secret: str) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    os.chmod(tmp, 0o600)  # O_CREAT's mode does not apply to a .tmp left behind by an earlier run
    tmp.replace(path)


# The secret this process uses, in memory only: os.environ would hand it to every child we start.
_remembered: str | None = None


def remember(secret: str | None) -> None:
    global _remembered
    _remembered = normalise(secret) if secret else None


def remembered() -> str | None:
    return _remembered


def derive(secret: str, purpose: str) -> bytes:
    return hmac.new(bytes.fromhex(secret), purpose.encode(), hashlib.sha256).digest()


def beacon_key(secret: str) -> bytes:
    return derive(secret, "exo discovery beacon v1")


def event_key(secret: str) -> bytes:
    return derive(secret, "exo event signing v1")


def nats_credentials(secret: str, role: str) -> tuple[str, str]:
    """A role's bus user and password (roles and their rights: shared/bus_roles.py). One label per role, so a
    leaked gateway password tells nothing about the master's."""
    return f"exo-{role}", derive(secret, f"exo nats {role} v1").hex()


def nats_client_credentials(secret: str) -> tuple[str, str]:
    """The operator's credentials: what tools (and the tests) use to look at the bus and send commands."""
    return nats_credentials(secret, "operator")


def nats_route_credentials(secret: str) -> tuple[str, str]:
    return "exo-route", derive(secret, "exo nats route v1").hex()


def url_with_credentials(url: str, user: str, password: str) -> str:
    """nats://host:port -> nats://user:password@host:port (a URL that carries credentials is kept)."""
    parts = urlsplit(url)
    if parts.username:
        return url
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{parts.netloc}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def without_credentials(url: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def redact(url: str) -> str:
    """For logs: the URL without its password."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, f"{parts.username}:***@{host}", parts.path, parts.query, parts.fragment))
