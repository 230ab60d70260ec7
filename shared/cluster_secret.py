"""The cluster secret and what is derived from it: the key that signs discovery beacons and the
credentials of the NATS bus (client and route connections).

The secret is 32 random bytes written as hex. A node generates it on first start (`<state-dir>/cluster.secret`,
mode 0600) and prints it once; the other machines get it with `--cluster-secret` (env EXO_CLUSTER_SECRET).
Everything else is derived with HMAC-SHA256 under a purpose label, so no derived value reveals another.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
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


def load_or_create(state_dir: Path, given: str | None) -> tuple[str, bool]:
    """(secret, created): the given one (kept for the next start), the stored one, or a new one."""
    path = secret_path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    if given:
        secret = normalise(given)
        if not path.exists() or path.read_text().strip() != secret:
            _write_private(path, secret)
        return secret, False
    if path.exists():
        return normalise(path.read_text()), False
    secret = generate()
    _write_private(path, secret)
    return secret, True


def _write_private(path: Path, secret: str) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    tmp.replace(path)


def derive(secret: str, purpose: str) -> bytes:
    return hmac.new(bytes.fromhex(secret), purpose.encode(), hashlib.sha256).digest()


def beacon_key(secret: str) -> bytes:
    return derive(secret, "exo discovery beacon v1")


def nats_client_credentials(secret: str) -> tuple[str, str]:
    return "exo", derive(secret, "exo nats client v1").hex()


def nats_route_credentials(secret: str) -> tuple[str, str]:
    return "exo-route", derive(secret, "exo nats route v1").hex()


def url_with_credentials(url: str, user: str, password: str) -> str:
    """nats://host:port -> nats://user:password@host:port (a URL that carries credentials is kept)."""
    parts = urlsplit(url)
    if parts.username:
        return url
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{parts.netloc}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def redact(url: str) -> str:
    """For logs: the URL without its password."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, f"{parts.username}:***@{host}", parts.path, parts.query, parts.fragment))
