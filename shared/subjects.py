"""Every NATS subject and stream name the services use. Nothing else in the project spells one out."""

from __future__ import annotations

# The event log: a JetStream stream, written only by the master, replayed by everyone.
EVENTS_STREAM = "EXO_EVENTS"
EVENTS_SUBJECT = "exo.events"

# Leader election: a JetStream KV bucket (entries expire) with one key, the master's lease; value = node id,
# revision at creation = the leader's term (see services/master/lease.py). `nats kv get EXO_LEADER master`.
LEADER_BUCKET = "EXO_LEADER"
LEADER_KEY = "master"

# Node facts: discovery publishes them periodically on core NATS; the master turns changes into events.
FACTS_PREFIX = "exo.facts"

# Commands: request/reply to the master's micro service endpoints.
COMMAND_PREFIX = "exo.cmd"
CMD_PLACE_INSTANCE = f"{COMMAND_PREFIX}.place_instance"
CMD_DELETE_INSTANCE = f"{COMMAND_PREFIX}.delete_instance"
CMD_REPORT_RUNNER = f"{COMMAND_PREFIX}.report_runner"
CMD_WORKER_STARTED = f"{COMMAND_PREFIX}.worker_started"
CMD_PREVIEW = f"{COMMAND_PREFIX}.preview"

# Micro service names (listed by `nats micro ls`, answered on $SRV.PING / $SRV.INFO).
SERVICE_MASTER = "exo-master"
SERVICE_DISCOVERY = "exo-discovery"
SERVICE_WORKER = "exo-worker"
SERVICE_GATEWAY = "exo-gateway"
SERVICE_RUNNER = "exo-runner"
SERVICE_INFERENCES = "exo-inferences"  # the leader's inference log: read-only queries

# Generation: the gateway asks an instance's runners (queue group) and reads tokens on a per-request subject.
RUNNER_PREFIX = "exo.runner"
TOKENS_PREFIX = "exo.tokens"


def facts(node_id: str) -> str:
    return f"{FACTS_PREFIX}.{node_id}"


def facts_wildcard() -> str:
    return f"{FACTS_PREFIX}.*"


def runner_generate(instance_id: str) -> str:
    return f"{RUNNER_PREFIX}.{instance_id}.generate"


def runner_cancel(instance_id: str) -> str:
    return f"{RUNNER_PREFIX}.{instance_id}.cancel"


def tokens(request_id: str) -> str:
    return f"{TOKENS_PREFIX}.{request_id}"


def node_service(node_id: str, service: str) -> str:
    """Per-node endpoints of a service (e.g. a worker's status), so one node can be addressed."""
    return f"exo.node.{node_id}.{service}"

# The inference log: the gateway publishes one record per finished request to this stream; the leader master
# (a durable pull consumer) writes them into DuckLake, and answers read-only queries on INFERENCES_QUERY.
INFERENCES_STREAM = "EXO_INFERENCES"
INFERENCES_SUBJECT = "exo.inferences.record"
INFERENCES_QUERY = "exo.inferences.query"
INFERENCES_CONSUMER_PREFIX = "exo-lake-writer"  # one durable per node: <prefix>-<node id>
