"""The capacity gate: which agent has room for a run, decided by pure functions.

Two roles can be played by one agent or by two:

* the **capacity agent** is the machine the run needs room on — an online agent
  whose labels match ``placement.agentSelector`` and whose last heartbeat shows
  enough free GPU memory, CPU and memory, and that is not marked busy;
* the **executor** is the infra agent that runs ansible-playbook. When the
  capacity agent is itself an infra agent it runs the playbook; when it is a
  desktop agent (it only reports capacity), the least-loaded online infra agent
  runs the playbook against it.

An agent is online while its last heartbeat is younger than 90 s (three missed
15-second heartbeats, with margin).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from chiffon.resources import Agent, AgentKind, Capacity, Reason
from chiffon.resources.intent import Placement, ResourceRequirements

OFFLINE_AFTER = timedelta(seconds=90)


@dataclass(frozen=True)
class Decision:
    reason: str
    message: str
    capacity_agent: Agent | None = None
    executor: Agent | None = None

    @property
    def scheduled(self) -> bool:
        return self.executor is not None


def is_online(agent: Agent, now: datetime) -> bool:
    return agent.online and agent.last_seen is not None and now - agent.last_seen <= OFFLINE_AFTER


def matches(agent: Agent, selector: Mapping[str, str]) -> bool:
    return all(agent.labels.get(key) == value for key, value in selector.items())


def free_cores(capacity: Capacity) -> float:
    return capacity.cpu_cores * (1 - capacity.cpu_load_percent / 100)


def best_gpu_free(capacity: Capacity) -> int:
    return max((gpu.memory_free_mib for gpu in capacity.gpus), default=0)


def shortfall(capacity: Capacity | None, needs: ResourceRequirements) -> str | None:
    """Why the run does not fit, in words; None when it fits."""
    if capacity is None:
        return "has not reported its capacity yet"
    if capacity.busy:
        return f"is busy ({capacity.busy_reason or 'marked busy'})"
    if needs.gpu_memory_mib and best_gpu_free(capacity) < needs.gpu_memory_mib:
        return f"has {best_gpu_free(capacity)} MiB GPU memory free, {needs.gpu_memory_mib} MiB needed"
    if needs.cpu_cores and free_cores(capacity) < needs.cpu_cores:
        return f"has {free_cores(capacity):.1f} cores free, {needs.cpu_cores:g} needed"
    if needs.memory_mib and capacity.memory_available_mib < needs.memory_mib:
        return f"has {capacity.memory_available_mib} MiB memory free, {needs.memory_mib} MiB needed"
    return None


def _roominess(agent: Agent) -> tuple[int, int, float]:
    """Sort key: infra agents first, then most GPU memory free, then least loaded."""
    capacity = agent.capacity
    assert capacity is not None
    return (0 if agent.kind is AgentKind.INFRA else 1, -best_gpu_free(capacity), capacity.cpu_load_percent)


def _describe_selector(selector: Mapping[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in sorted(selector.items())) or "any labels"


def choose(
    agents: Sequence[Agent], needs: ResourceRequirements, placement: Placement, now: datetime
) -> Decision:
    """Pick the capacity agent and the executor for one run, or say why none fits."""
    selector = placement.agent_selector
    matching = [agent for agent in agents if matches(agent, selector)]
    online = [agent for agent in matching if is_online(agent, now)]
    if not online:
        offline = ", ".join(sorted(agent.id for agent in matching))
        detail = f" (offline: {offline})" if offline else ""
        return Decision(
            Reason.NO_MATCHING_AGENT, f"no online agent matches {_describe_selector(selector)}{detail}"
        )
    fitting = sorted((a for a in online if shortfall(a.capacity, needs) is None), key=_roominess)
    if not fitting:
        reasons = "; ".join(
            f"{a.id} {shortfall(a.capacity, needs)}" for a in sorted(online, key=lambda a: a.id)
        )
        return Decision(Reason.INSUFFICIENT_CAPACITY, f"no agent has room for this run: {reasons}")
    chosen = fitting[0]
    executor = chosen if chosen.kind is AgentKind.INFRA else _least_loaded_infra(agents, now)
    if executor is None:
        return Decision(
            Reason.NO_MATCHING_AGENT,
            f"{chosen.id} has room, but no infra agent is online to run the playbook",
            capacity_agent=chosen,
        )
    where = chosen.id if executor is chosen else f"{chosen.id}, run by {executor.id}"
    return Decision(Reason.AGENT_SELECTED, f"scheduled on {where}", capacity_agent=chosen, executor=executor)


def _least_loaded_infra(agents: Sequence[Agent], now: datetime) -> Agent | None:
    infra = [a for a in agents if a.kind is AgentKind.INFRA and is_online(a, now) and a.capacity is not None]
    return min(
        infra, key=lambda a: (a.capacity.cpu_load_percent if a.capacity else 100.0, a.id), default=None
    )
