"""Who may do what on the bus: one NATS user per role, each with the least rights its services need.

Only masters write the event log (publish on its subject, any JetStream API: the event stream, the leader
lease bucket); every other role reads the log through its own consumers and uses only its own subjects. So a
leaked gateway (or worker, discovery, operator) password cannot write state. A role's password is derived
from the cluster secret under the role's label (shared/cluster_secret.py).

Replies to requests (micro endpoints, a runner accepting a generation) go out by `allow_responses`, not by a
right to publish on every inbox. Adding a subject that a service publishes or serves means adding it here.
"""

from __future__ import annotations

import msgspec

from shared import subjects
from shared.subjects import EVENTS_STREAM, LEADER_BUCKET

MASTER = "master"
GATEWAY = "gateway"
WORKER = "worker"  # the worker and its runners
DISCOVERY = "discovery"
OPERATOR = "operator"  # tools and people: `exo peers`, the node's start-up placement, `nats sub`, tests
ROLES = (MASTER, GATEWAY, WORKER, DISCOVERY, OPERATOR)


class Permissions(msgspec.Struct, frozen=True):
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    responses: bool = True  # may answer requests it received


# Reading the event log: stream info, an ordered consumer (create, and delete when it is replaced) and its
# flow-control replies. No stream create/update/purge/delete, no message delete, no KV.
READ_LOG = (
    "$JS.API.INFO",
    "$JS.API.STREAM.NAMES",  # js.subscribe looks the stream up by its subject
    f"$JS.API.STREAM.INFO.{EVENTS_STREAM}",
    f"$JS.API.STREAM.MSG.GET.{EVENTS_STREAM}",
    f"$JS.API.DIRECT.GET.{EVENTS_STREAM}",
    f"$JS.API.DIRECT.GET.{EVENTS_STREAM}.>",
    f"$JS.API.CONSUMER.CREATE.{EVENTS_STREAM}",
    f"$JS.API.CONSUMER.CREATE.{EVENTS_STREAM}.>",
    f"$JS.API.CONSUMER.DELETE.{EVENTS_STREAM}.*",
    f"$JS.API.CONSUMER.INFO.{EVENTS_STREAM}.*",
    "$JS.FC.>",
)
# Being a micro service (`nats micro ls`): PING/INFO/STATS requests come on $SRV.
MICRO = ("$SRV.>",)
INBOXES = ("_INBOX.>",)
OPERATOR_COMMANDS = (subjects.CMD_PLACE_INSTANCE, subjects.CMD_DELETE_INSTANCE, subjects.CMD_PREVIEW,
                     subjects.CMD_PREVIEW_GROUP, subjects.INFERENCES_QUERY)  # fmt: skip
# The gateway records each finished request in the inference log's stream (the leader writes it into DuckLake).
RECORD_INFERENCES = (subjects.INFERENCES_SUBJECT,)
RUNNER_REQUESTS = (subjects.runner_generate("*"), subjects.runner_cancel("*"), subjects.runner_count("*"))
# a runner asks a draft model's instance (another worker's runner, or one of its own) for proposals
DRAFT_PROPOSALS = (subjects.runner_propose("*"),)
NODE_ENDPOINTS = ("exo.node.*.>",)
UPLOADS = (f"{subjects.UPLOAD_PREFIX}.>",)  # the gateway serves a big request's pieces; runners fetch them
# each worker publishes its model cache and answers the scatter-gather `exo models` / GET /models ask for it
MODEL_CACHE = (subjects.models_wildcard(),)
ASK_MODELS = (subjects.MODELS_LIST,)
READ_LEASE = (f"$JS.API.STREAM.INFO.KV_{LEADER_BUCKET}", f"$JS.API.DIRECT.GET.KV_{LEADER_BUCKET}.>",
              f"$JS.API.STREAM.MSG.GET.KV_{LEADER_BUCKET}")  # fmt: skip

PERMISSIONS: dict[str, Permissions] = {
    MASTER: Permissions(publish=(">",), subscribe=(">",)),
    GATEWAY: Permissions(
        publish=(*READ_LOG, *OPERATOR_COMMANDS, *RUNNER_REQUESTS, *NODE_ENDPOINTS, *MICRO, *RECORD_INFERENCES,
                 *ASK_MODELS),
        # node facts: the dashboard shows each node's live memory and links between the log's records
        subscribe=(*INBOXES, *MICRO, f"{subjects.TOKENS_PREFIX}.>", *UPLOADS, subjects.facts_wildcard(),
                   *MODEL_CACHE),
    ),
    WORKER: Permissions(
        publish=(*READ_LOG, subjects.CMD_REPORT_RUNNER, subjects.CMD_WORKER_STARTED, f"{subjects.TOKENS_PREFIX}.>",
                 *UPLOADS, *MODEL_CACHE, *DRAFT_PROPOSALS),
        subscribe=(*INBOXES, *MICRO, *RUNNER_REQUESTS, *NODE_ENDPOINTS, *ASK_MODELS, *DRAFT_PROPOSALS),
    ),
    DISCOVERY: Permissions(
        publish=(*READ_LOG, subjects.facts("*")),
        subscribe=(*INBOXES, *MICRO, *NODE_ENDPOINTS),
    ),
    # Looks at everything, asks what the gateway's API may ask, writes nothing.
    OPERATOR: Permissions(
        publish=(*READ_LOG, *READ_LEASE, *OPERATOR_COMMANDS, *NODE_ENDPOINTS, *MICRO, *ASK_MODELS),
        subscribe=(">",),
    ),
}
