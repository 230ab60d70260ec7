"""services/master/lease.py: lease timings, when a holder renews or must assume it lost, and the fencing rules
the event log applies. The same rules against a real nats-server: tests/integration/test_lease_bus.py."""

from __future__ import annotations

import pytest

from services.master.lease import (
    LEASE_TTL_S,
    RENEW_EVERY_S,
    claim_problem,
    expired_locally,
    lease_bucket_config,
    lease_bucket_replicas,
    renew_due,
    seconds_until_renewal,
    won,
    write_problem,
)
from shared.subjects import LEADER_BUCKET


def test_a_won_lease_has_its_creation_revision_as_term_for_good():
    lease = won(revision=7, now=100.0)
    assert (lease.term, lease.revision) == (7, 7)
    renewed = lease.renewed(9, now=100.5).renewed(12, now=101.0)
    assert (renewed.term, renewed.revision, renewed.renewed_at) == (7, 12, 101.0)


def test_renewal_is_due_every_renew_period_and_not_before():
    lease = won(1, now=100.0)
    assert not renew_due(lease, 100.0 + RENEW_EVERY_S - 0.01)
    assert renew_due(lease, 100.0 + RENEW_EVERY_S)
    assert seconds_until_renewal(lease, 100.2) == pytest.approx(RENEW_EVERY_S - 0.2)
    assert seconds_until_renewal(lease, 200.0) == 0.0


def test_timings_leave_room_for_missed_renewals_and_fast_failover():
    assert RENEW_EVERY_S * 3 <= LEASE_TTL_S  # two renewals may be late or lost before the lease is at risk
    assert LEASE_TTL_S <= 2.5  # kill -9 of the leader -> new leader within 5 s (expiry tick + campaign + claim)


def test_a_holder_that_was_paused_past_the_ttl_must_assume_it_lost_the_lease():
    lease = won(1, now=100.0)
    assert not expired_locally(lease, 100.0 + RENEW_EVERY_S * 2)
    assert expired_locally(lease, 100.0 + LEASE_TTL_S)
    assert expired_locally(lease, 100.0 + LEASE_TTL_S - 0.3)  # before the server's clock says so


def test_bucket_config_expires_entries_and_keeps_its_sequence_on_disk():
    config = lease_bucket_config()
    assert config.bucket == LEADER_BUCKET
    assert config.ttl == LEASE_TTL_S and config.history == 1
    assert config.storage.value == "file"
    assert config.replicas == lease_bucket_replicas() == 1


# --- fencing --------------------------------------------------------------------------------------


def test_a_claim_needs_a_term_newer_than_the_logs():
    assert claim_problem(5, leader_term=0) is None
    assert claim_problem(5, leader_term=4) is None
    assert "not newer" in claim_problem(5, leader_term=5)
    assert "not newer" in claim_problem(3, leader_term=5)


def test_only_the_holder_of_the_logs_term_may_write():
    assert write_problem(5, leader_term=5) is None
    assert "not the leader" in write_problem(None, leader_term=5)
    assert "not the log's leader term" in write_problem(4, leader_term=5)  # replaced while paused
    assert write_problem(6, leader_term=5) is not None  # its claim is not in the log yet
