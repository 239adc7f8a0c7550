"""Table tests for the capacity gate."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from chiffon.controllers.scheduler import choose, is_online, shortfall
from chiffon.resources import Agent, AgentKind, Capacity, GpuInfo, Reason
from chiffon.resources.intent import Placement, ResourceRequirements

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def capacity(
    load: float = 10, cores: int = 8, mem: int = 16000, gpu_free: list[int] | None = None, busy: bool = False
) -> Capacity:
    gpus = [GpuInfo(index=i, memory_total_mib=24000, memory_free_mib=f) for i, f in enumerate(gpu_free or [])]
    return Capacity(
        cpu_load_percent=load,
        cpu_cores=cores,
        memory_total_mib=32000,
        memory_available_mib=mem,
        gpus=gpus,
        busy=busy,
        busy_reason="game running" if busy else None,
    )


def agent(
    name: str,
    kind: AgentKind = AgentKind.INFRA,
    *,
    seen: float = 5,
    online: bool = True,
    labels: dict[str, str] | None = None,
    cap: Capacity | None = None,
) -> Agent:
    return Agent(
        id=name,
        kind=kind,
        labels=labels or {},
        online=online,
        last_seen=NOW - timedelta(seconds=seen),
        capacity=cap if cap is not None else capacity(),
    )


def needs(gpu: int = 0, cpu: float = 0, mem: int = 0) -> ResourceRequirements:
    return ResourceRequirements(gpu_memory_mib=gpu, cpu_cores=cpu, memory_mib=mem)


CASES = [
    # case, agents, needs, selector, want reason, want capacity agent, want executor
    (
        "one infra agent, nothing needed",
        [agent("infra-1")],
        needs(),
        {},
        Reason.AGENT_SELECTED,
        "infra-1",
        "infra-1",
    ),
    ("no agents at all", [], needs(), {}, Reason.NO_MATCHING_AGENT, None, None),
    (
        "silent for 91 s is offline",
        [agent("infra-1", seen=91)],
        needs(),
        {},
        Reason.NO_MATCHING_AGENT,
        None,
        None,
    ),
    (
        "clean shutdown is offline",
        [agent("infra-1", online=False)],
        needs(),
        {},
        Reason.NO_MATCHING_AGENT,
        None,
        None,
    ),
    (
        "selector filters",
        [agent("a", labels={"role": "nas"}), agent("b", labels={"role": "infra"})],
        needs(),
        {"role": "infra"},
        Reason.AGENT_SELECTED,
        "b",
        "b",
    ),
    (
        "gpu on a desktop, run by infra",
        [
            agent("infra-1"),
            agent("desk", AgentKind.DESKTOP, labels={"gpu": "true"}, cap=capacity(gpu_free=[9000])),
        ],
        needs(gpu=8192),
        {"gpu": "true"},
        Reason.AGENT_SELECTED,
        "desk",
        "infra-1",
    ),
    (
        "not enough vram",
        [agent("infra-1"), agent("desk", AgentKind.DESKTOP, cap=capacity(gpu_free=[4096]))],
        needs(gpu=8192),
        {},
        Reason.INSUFFICIENT_CAPACITY,
        None,
        None,
    ),
    (
        "busy desktop does not count",
        [
            agent("infra-1", cap=capacity()),
            agent("desk", AgentKind.DESKTOP, cap=capacity(gpu_free=[20000], busy=True)),
        ],
        needs(gpu=1000),
        {},
        Reason.INSUFFICIENT_CAPACITY,
        None,
        None,
    ),
    (
        "the gpu with most room wins",
        [
            agent("infra-1"),
            agent("d1", AgentKind.DESKTOP, cap=capacity(gpu_free=[9000])),
            agent("d2", AgentKind.DESKTOP, cap=capacity(gpu_free=[1000, 20000])),
        ],
        needs(gpu=8000),
        {},
        Reason.AGENT_SELECTED,
        "d2",
        "infra-1",
    ),
    (
        "desktop fits but no infra agent online",
        [agent("desk", AgentKind.DESKTOP, cap=capacity(gpu_free=[9000]))],
        needs(gpu=8000),
        {},
        Reason.NO_MATCHING_AGENT,
        None,
        None,
    ),
    (
        "cpu: 8 cores at 90% leave 0.8",
        [agent("infra-1", cap=capacity(load=90))],
        needs(cpu=1),
        {},
        Reason.INSUFFICIENT_CAPACITY,
        None,
        None,
    ),
    (
        "memory",
        [agent("infra-1", cap=capacity(mem=256))],
        needs(mem=512),
        {},
        Reason.INSUFFICIENT_CAPACITY,
        None,
        None,
    ),
    (
        "least loaded infra agent when nothing is needed",
        [agent("infra-2", cap=capacity(load=50)), agent("infra-1", cap=capacity(load=5))],
        needs(),
        {},
        Reason.AGENT_SELECTED,
        "infra-1",
        "infra-1",
    ),
]


@pytest.mark.parametrize(
    ("case", "agents", "want_needs", "selector", "reason", "capacity_agent", "executor"),
    CASES,
    ids=[c[0] for c in CASES],
)
def test_choose(
    case: str,
    agents: list[Agent],
    want_needs: ResourceRequirements,
    selector: dict[str, str],
    reason: str,
    capacity_agent: str | None,
    executor: str | None,
) -> None:
    decision = choose(agents, want_needs, Placement(agent_selector=selector), NOW)
    assert decision.reason == reason, decision.message
    if executor is not None:
        assert decision.executor is not None and decision.executor.id == executor
        assert decision.capacity_agent is not None and decision.capacity_agent.id == capacity_agent
    else:
        assert not decision.scheduled


def test_messages_say_why_in_words() -> None:
    decision = choose(
        [agent("desk", AgentKind.DESKTOP, cap=capacity(gpu_free=[4096]))], needs(gpu=8192), Placement(), NOW
    )
    assert (
        decision.message
        == "no agent has room for this run: desk has 4096 MiB GPU memory free, 8192 MiB needed"
    )
    offline = choose(
        [agent("infra-1", seen=300, labels={"role": "infra"})],
        needs(),
        Placement(agent_selector={"role": "infra"}),
        NOW,
    )
    assert offline.message == "no online agent matches role=infra (offline: infra-1)"


def test_shortfall_without_a_report() -> None:
    assert shortfall(None, needs()) == "has not reported its capacity yet"


def test_online_boundary() -> None:
    assert is_online(agent("a", seen=90), NOW) and not is_online(agent("a", seen=90.5), NOW)
