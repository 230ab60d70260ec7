"""The cluster state that replaying the event log produces."""

from __future__ import annotations

import msgspec

from shared.events import Instance, InstanceAwaitingNodes, RunnerStatusChanged
from shared.facts import NodeFacts
from shared.ids import InstanceId, NodeId
from shared.models import ModelCard


def runner_key(instance_id: str, rank: int) -> str:
    return f"{instance_id}/{rank}"


class ClusterState(msgspec.Struct, frozen=True):
    nodes: dict[NodeId, NodeFacts] = {}
    instances: dict[InstanceId, Instance] = {}
    runners: dict[str, RunnerStatusChanged] = {}  # runner_key -> latest status
    # runner_key -> log sequence of its latest "failed" status, kept when later statuses replace it: a worker's
    # plan stops its own rank of a group that lost one (services/worker/plan.py), once per failure
    failures: dict[str, int] = {}
    waiting: dict[InstanceId, InstanceAwaitingNodes] = {}  # old instance id -> its model, waiting to fit again
    leader_node_id: NodeId | None = None  # the master that may write (see LeaderElected)
    leader_term: int = 0  # its lease term; 0 before any leader was elected
    last_seq: int = 0
    models: dict[str, ModelCard] = {}  # derived cards (ModelCardRecorded) by model id; built-in ones are not here

    def runner_status(self, instance_id: InstanceId, rank: int) -> RunnerStatusChanged | None:
        return self.runners.get(runner_key(instance_id, rank))

    def instance_runners(self, instance_id: InstanceId) -> list[RunnerStatusChanged | None]:
        instance = self.instances[instance_id]
        return [self.runner_status(instance_id, s.rank) for s in instance.shards]

    def instance_ready(self, instance_id: InstanceId) -> bool:
        return all(r is not None and r.phase == "ready" for r in self.instance_runners(instance_id))

    def instances_of(self, model_id: str) -> list[Instance]:
        return [i for i in self.instances.values() if i.model_id == model_id]

    def group_members(self, main_id: InstanceId) -> dict[str, list[InstanceId]]:
        """A trifurcated group's instances by role (docs/trifurcated.md): the main and those that name it."""
        members: dict[str, list[InstanceId]] = {"main": [main_id]} if main_id in self.instances else {}
        for iid in sorted(self.instances):
            group = self.instances[iid].group
            if group is not None and group.main == main_id:
                members.setdefault(group.role, []).append(iid)
        return members
