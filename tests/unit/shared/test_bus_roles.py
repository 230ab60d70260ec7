"""The bus rights of each role (shared/bus_roles.py), read as nats-server reads subject permissions."""

from __future__ import annotations

import pytest

from shared import subjects
from shared.bus_roles import MASTER, PERMISSIONS, ROLES
from shared.cluster_secret import nats_credentials


def matches(pattern: str, subject: str) -> bool:
    """NATS wildcards: '*' one token, '>' one or more tokens at the end."""
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(p) == len(s)


def may_publish(role: str, subject: str) -> bool:
    return any(matches(p, subject) for p in PERMISSIONS[role].publish)


def may_subscribe(role: str, subject: str) -> bool:
    return any(matches(p, subject) for p in PERMISSIONS[role].subscribe)


WRITES = [
    subjects.EVENTS_SUBJECT,
    "$JS.API.STREAM.CREATE.EXO_EVENTS", "$JS.API.STREAM.UPDATE.EXO_EVENTS", "$JS.API.STREAM.DELETE.EXO_EVENTS",
    "$JS.API.STREAM.PURGE.EXO_EVENTS", "$JS.API.STREAM.MSG.DELETE.EXO_EVENTS", "$JS.API.STREAM.PURGE.KV_EXO_LEADER",
    "$KV.EXO_LEADER.master", "$JS.API.STREAM.CREATE.KV_EXO_LEADER", "$JS.API.ACCOUNT.PURGE.x",
]  # fmt: skip


@pytest.mark.parametrize("role", [r for r in ROLES if r != MASTER])
def test_only_the_master_may_write_the_log_or_the_lease(role: str) -> None:
    assert [s for s in WRITES if may_publish(role, s)] == []
    assert all(may_publish(MASTER, s) for s in WRITES)


@pytest.mark.parametrize("role", [r for r in ROLES if r != MASTER])
def test_every_role_may_read_the_log(role: str) -> None:
    for subject in ("$JS.API.STREAM.INFO.EXO_EVENTS", "$JS.API.CONSUMER.CREATE.EXO_EVENTS", "$JS.API.STREAM.NAMES"):
        assert may_publish(role, subject), subject
    assert may_subscribe(role, "_INBOX.abc.def")


def test_each_role_has_what_its_service_does() -> None:
    assert may_publish("gateway", subjects.runner_generate("inst-1")) and may_subscribe("gateway", subjects.tokens("r1"))
    assert may_publish("gateway", subjects.CMD_PLACE_INSTANCE) and not may_publish("gateway", subjects.CMD_REPORT_RUNNER)
    assert may_subscribe("worker", subjects.runner_generate("inst-1")) and may_publish("worker", subjects.tokens("r1"))
    assert may_publish("worker", subjects.CMD_REPORT_RUNNER) and not may_publish("worker", subjects.CMD_PLACE_INSTANCE)
    assert may_publish("discovery", subjects.facts("node-a")) and not may_publish("gateway", subjects.facts("node-a"))
    assert may_subscribe("gateway", subjects.facts("node-a")) and not may_publish("gateway", subjects.facts("node-a"))
    assert may_publish("gateway", subjects.runner_count("inst-1")) and may_subscribe("worker", subjects.runner_count("i"))
    # the inference log: the gateway records, the operator (exo sql) and the gateway ask the leader; only masters write
    assert may_publish("gateway", subjects.INFERENCES_SUBJECT) and not may_publish("worker", subjects.INFERENCES_SUBJECT)
    assert may_publish("operator", subjects.INFERENCES_QUERY) and not may_subscribe("gateway", subjects.INFERENCES_QUERY)
    # a request too big for one message: the gateway serves its pieces, a runner asks for them
    assert may_subscribe("gateway", subjects.upload("r1")) and may_publish("worker", subjects.upload("r1"))
    assert not may_subscribe("worker", subjects.upload("r1")) and not may_subscribe("discovery", subjects.upload("r1"))
    # nobody but the master may serve the master's commands (a queue subscriber could answer in its name)
    for role in ("gateway", "worker", "discovery"):
        assert not may_subscribe(role, subjects.CMD_PLACE_INSTANCE)
        assert not may_publish(role, "exo.tokens.r1") or role == "worker"


def test_each_role_has_its_own_password() -> None:
    passwords = {nats_credentials("ab" * 32, role)[1] for role in ROLES}
    assert len(passwords) == len(ROLES)
    assert nats_credentials("ab" * 32, "gateway") != nats_credentials("cd" * 32, "gateway")


def test_wildcards() -> None:
    assert matches("exo.runner.*.generate", "exo.runner.i.generate") and not matches("exo.runner.*.generate", "exo.runner.i")
    assert matches("$KV.EXO_LEADER.>", "$KV.EXO_LEADER.master") and not matches("a.>", "a")
