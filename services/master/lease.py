"""The leader lease, as pure rules: timings, when to renew, when a holder must assume it lost the lease,
and which writer the event log may accept (fencing). The I/O that applies them is lease_keeper.py.

How election works: the lease is one key in a JetStream KV bucket whose entries expire (the bucket's max
age). Every master campaigns with `create` (succeeds only while the key is absent); the winner renews with
`update(last=revision)` (succeeds only while nobody else replaced it). If the leader dies, its key expires
within LEASE_TTL_S and the next campaign wins. The revision at which a lease was created is its term:
revisions are stream sequences, so a later lease always has a larger term.

A lease alone cannot stop a paused leader from writing after it expired, so the event log is fenced too:
the new leader appends LeaderElected(term), and a writer may append only while the state it decided on
(checked by the stream's expected-last-sequence) names its own term.
"""

from __future__ import annotations

from dataclasses import dataclass

from nats.js import api

from shared.subjects import LEADER_BUCKET

# kill -9 of the leader -> key expired (<= TTL + the server's expiry tick, measured 2.1-2.3 s) -> a follower's
# next campaign (<= CAMPAIGN_EVERY_S) -> LeaderElected appended and endpoints up: about 3 s, under 5 s.
LEASE_TTL_S = 2.0
# Renew often enough that two renewals in a row may be slow or lost to a hiccup of the event loop.
RENEW_EVERY_S = 0.5
CAMPAIGN_EVERY_S = 0.25
# A master that won but could not lead (it could not claim the log, or found another leader's term in it)
# campaigns again only after this long, so that a healthy master wins meanwhile instead of the same one.
SIT_OUT_S = 3.0
# A holder whose last good renewal is this old must assume the key expired (the server's clock and ours
# need not agree to the millisecond, and the renewal that we are about to send may arrive late).
LOCAL_EXPIRY_MARGIN_S = 0.3


def lease_bucket_replicas() -> int:
    """How many JetStream servers keep the lease when the bucket is made: one. On a clustered bus the leader
    raises it to follow the cluster (scale_replicas, services/master/service.py), so the lease survives the loss
    of a server."""
    return 1


def lease_bucket_config() -> api.KeyValueConfig:
    """The one place that says how the lease bucket is made. File storage: the bucket's sequence, which the
    terms come from, must survive a restart of the server, or a new term could be smaller than an old one."""
    return api.KeyValueConfig(
        bucket=LEADER_BUCKET,
        description="exo master leader lease (key: master, value: node id, revision: term)",
        history=1,
        ttl=LEASE_TTL_S,
        storage=api.StorageType.FILE,
        replicas=lease_bucket_replicas(),
    )


@dataclass(frozen=True)
class Lease:
    """A lease this process holds: `term` is fixed at creation, `revision` moves with every renewal."""

    term: int
    revision: int
    renewed_at: float  # monotonic time of the last successful create/update

    def renewed(self, revision: int, now: float) -> Lease:
        return Lease(self.term, revision, now)


def won(revision: int, now: float) -> Lease:
    return Lease(term=revision, revision=revision, renewed_at=now)


def renew_due(lease: Lease, now: float) -> bool:
    return now - lease.renewed_at >= RENEW_EVERY_S


def expired_locally(lease: Lease, now: float) -> bool:
    """True when the key may already have expired on the server: the holder must step down without asking
    (after a long pause a renewal could even succeed against a key that another master re-created)."""
    return now - lease.renewed_at >= LEASE_TTL_S - LOCAL_EXPIRY_MARGIN_S


def seconds_until_renewal(lease: Lease, now: float) -> float:
    return max(0.0, lease.renewed_at + RENEW_EVERY_S - now)


# ---------------------------------------------------------------------------------------------- fencing


def claim_problem(term: int, leader_term: int) -> str | None:
    """Why a new leader with `term` may not append LeaderElected to a log whose leader holds `leader_term`."""
    if term <= leader_term:
        return f"term {term} is not newer than the log's leader term {leader_term}"
    return None


def write_problem(writer_term: int | None, leader_term: int) -> str | None:
    """Why a writer holding `writer_term` may not append to a log whose current leader term is `leader_term`:
    only the latest leader writes, so a master that was replaced (even if it never noticed) cannot."""
    if writer_term is None:
        return "this master is not the leader"
    if writer_term != leader_term:
        return f"this master's term {writer_term} is not the log's leader term {leader_term}"
    return None
