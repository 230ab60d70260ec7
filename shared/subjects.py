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
# Each command's endpoint name is declared once here; the subject is the group prefix plus that name.
COMMAND_PREFIX = "exo.cmd"
ENDPOINT_PLACE_INSTANCE = "place_instance"
ENDPOINT_DELETE_INSTANCE = "delete_instance"
ENDPOINT_REPORT_RUNNER = "report_runner"
ENDPOINT_WORKER_STARTED = "worker_started"
ENDPOINT_PREVIEW = "preview"
ENDPOINT_PREVIEW_GROUP = "preview_group"
CMD_PLACE_INSTANCE = f"{COMMAND_PREFIX}.{ENDPOINT_PLACE_INSTANCE}"
CMD_DELETE_INSTANCE = f"{COMMAND_PREFIX}.{ENDPOINT_DELETE_INSTANCE}"
CMD_REPORT_RUNNER = f"{COMMAND_PREFIX}.{ENDPOINT_REPORT_RUNNER}"
CMD_WORKER_STARTED = f"{COMMAND_PREFIX}.{ENDPOINT_WORKER_STARTED}"
CMD_PREVIEW = f"{COMMAND_PREFIX}.{ENDPOINT_PREVIEW}"
CMD_PREVIEW_GROUP = f"{COMMAND_PREFIX}.{ENDPOINT_PREVIEW_GROUP}"

# Micro service names (listed by `nats micro ls`, answered on $SRV.PING / $SRV.INFO).
SERVICE_MASTER = "exo-master"
SERVICE_DISCOVERY = "exo-discovery"
SERVICE_WORKER = "exo-worker"
SERVICE_GATEWAY = "exo-gateway"
SERVICE_RUNNER = "exo-runner"
SERVICE_INFERENCES = "exo-inferences"  # the leader's inference log: read-only queries

# Generation: the gateway asks an instance's runners and reads tokens on a per-request subject. A runner (rank 0
# of an instance) is the micro service SERVICE_RUNNER with the group exo.runner.<instance> and its endpoints:
# generate (queue group RUNNER_QUEUE: one runner takes each request) and cancel (every runner of the instance
# hears it: each takes it in a queue group of its own).
RUNNER_PREFIX = "exo.runner"
RUNNER_GENERATE = "generate"
RUNNER_CANCEL = "cancel"
RUNNER_COUNT = "count"  # tokenize a request without generating (Anthropic count_tokens)
# A draft model's instance proposes tokens for another instance's speculating request (its rank 0, one-rank
# instances only; ProposeDraft / DraftProposal in shared/generation.py).
RUNNER_PROPOSE = "propose"
RUNNER_QUEUE = "rank0"
TOKENS_PREFIX = "exo.tokens"
UPLOAD_PREFIX = "exo.upload"  # the gateway serves the pieces of a request too large for one message here


def facts(node_id: str) -> str:
    return f"{FACTS_PREFIX}.{node_id}"


def facts_wildcard() -> str:
    return f"{FACTS_PREFIX}.*"


def runner_group(instance_id: str) -> str:
    return f"{RUNNER_PREFIX}.{instance_id}"


def runner_generate(instance_id: str) -> str:
    return f"{runner_group(instance_id)}.{RUNNER_GENERATE}"


def runner_cancel(instance_id: str) -> str:
    return f"{runner_group(instance_id)}.{RUNNER_CANCEL}"


def runner_count(instance_id: str) -> str:
    return f"{runner_group(instance_id)}.{RUNNER_COUNT}"


def runner_propose(instance_id: str) -> str:
    return f"{runner_group(instance_id)}.{RUNNER_PROPOSE}"


def tokens(request_id: str) -> str:
    return f"{TOKENS_PREFIX}.{request_id}"


def upload(request_id: str) -> str:
    return f"{UPLOAD_PREFIX}.{request_id}"


def node_service(node_id: str, service: str) -> str:
    """Per-node endpoints of a service (e.g. a worker's status), so one node can be addressed."""
    return f"exo.node.{node_id}.{service}"

# The inference log: the gateway publishes one record per finished request to this stream; the leader master
# (a durable pull consumer) writes them into DuckLake, and answers read-only queries on INFERENCES_QUERY.
INFERENCES_STREAM = "EXO_INFERENCES"
INFERENCES_SUBJECT = "exo.inferences.record"
INFERENCES_QUERY = "exo.inferences.query"
INFERENCES_CONSUMER_PREFIX = "exo-lake-writer"  # one durable per node: <prefix>-<node id>

# The model cache of each node: its worker publishes what it holds and what it downloads (NodeModels, from
# shared/downloads.py) on exo.models.<node> every few seconds and at each change; a request on MODELS_LIST is
# answered by every worker (scatter-gather: a client collects the replies for a moment).
MODELS_PREFIX = "exo.models"
MODELS_LIST = "exo.models_list"


def models(node_id: str) -> str:
    return f"{MODELS_PREFIX}.{node_id}"


def models_wildcard() -> str:
    return f"{MODELS_PREFIX}.*"


def models_pull(node_id: str) -> str:
    return node_service(node_id, "worker.models.pull")


def models_remove(node_id: str) -> str:
    return node_service(node_id, "worker.models.rm")
