"""Events carry the signature of the master that wrote them; followers apply only events signed by the
leader of the term the log is in.

Why an HMAC and not a key pair per master: every master derives the key from the cluster secret that it
holds anyway, so nothing has to be advertised or trusted besides the secret, and verifying is a hash. What
it protects against is anyone without the secret, e.g. a holder of a leaked master bus password (bus
permissions already keep the other roles off the log). What it covers: the term and the writer (an event
signed for an old term or by another master than the term's leader is refused), the stream sequence the
event was appended at (the master knows it: it appends with an expected last sequence; so a signed event
copied back into the log is refused), and the event's bytes.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from shared.events import AnyEvent, LeaderElected
from shared.state import ClusterState

TERM_HEADER = "Exo-Term"
WRITER_HEADER = "Exo-Writer"
SIGNATURE_HEADER = "Exo-Signature"


def signature(key: bytes, term: int, writer: str, seq: int, data: bytes) -> str:
    signed = f"exo event v1\n{term}\n{writer}\n{seq}\n".encode() + data
    return hmac.new(key, signed, hashlib.sha256).hexdigest()


def signed_headers(key: bytes, term: int, writer: str, seq: int, data: bytes) -> dict[str, str]:
    """Headers for the event `data` that `writer` (leader of `term`) appends at stream sequence `seq`."""
    return {TERM_HEADER: str(term), WRITER_HEADER: writer, SIGNATURE_HEADER: signature(key, term, writer, seq, data)}


def refusal(
    key: bytes, headers: Mapping[str, str] | None, seq: int, data: bytes, event: AnyEvent, state: ClusterState
) -> str | None:
    """Why a follower in `state` must not apply `event` (its bytes `data`, at `seq`), or None."""
    headers = headers or {}
    term_text, writer, given = (headers.get(h) for h in (TERM_HEADER, WRITER_HEADER, SIGNATURE_HEADER))
    if not (term_text and writer and given):
        return "unsigned"
    try:
        term = int(term_text)
    except ValueError:
        return f"bad term header {term_text!r}"
    if not hmac.compare_digest(given, signature(key, term, writer, seq, data)):
        return "bad signature (another secret, or signed for another sequence)"
    if isinstance(event, LeaderElected):
        if (event.term, event.node_id) != (term, writer):
            return f"a claim of term {event.term} by {event.node_id} signed as term {term} by {writer}"
        return None  # whether the claim is newer is apply's rule
    if (term, writer) != (state.leader_term, state.leader_node_id):
        leader = f"{state.leader_node_id} (term {state.leader_term})"
        return f"signed by {writer} for term {term}, the log's leader is {leader}"
    return None
