"""The whole controller on the real store and a real bus: commit → plan → dispatch → result → Ready.

Runs on SQLite and PostgreSQL, each with the in-process bus and real RabbitMQ,
against a recording agent that speaks the protocol.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chiffon.controllers.controller import Controller
from chiffon.controllers.planner import Planner
from chiffon.controllers.source import GitSource, SourceConfig
from chiffon.gitrepo import GitRepo
from chiffon.resources import ConditionType, is_condition_true
from chiffon.store import Store
from tests.agentsim import RecordingAgent
from tests.contract.support import BusFactory, unique_prefix
from tests.helpers import ALICE

ROOT = Path(__file__).resolve().parents[2]


def auto_intent(name: str, *, steps: int = 1, depends: str = "") -> bytes:
    playbooks = ["ansible/playbooks/kuma-deployment.yml", "ansible/playbooks/kuma-config-update.yml"]
    step_lines = "".join(f"    - name: s{i}\n      playbook: {playbooks[i % 2]}\n" for i in range(steps))
    text = (
        f"apiVersion: chiffon.dev/v1alpha1\nkind: DeploymentIntent\nmetadata:\n  name: {name}\nspec:\n"
        f"  steps:\n{step_lines}  limit: localhost\n  approval: Auto\n"
        f"  placement: {{agentSelector: {{role: infra}}}}\n"
        + (f"  dependsOn: [{depends}]\n" if depends else "")
    )
    return text.encode()


@pytest.fixture(params=["memory", "amqp"])
async def bus_factory(request: pytest.FixtureRequest) -> AsyncIterator[BusFactory]:
    factory = BusFactory(request.param, unique_prefix())
    yield factory
    await factory.cleanup()


async def ready(store: Store, name: str) -> bool:
    intent = await store.get_intent(name)
    return intent is not None and is_condition_true(
        intent.status.conditions if intent.status else [], ConditionType.READY
    )


async def eventually(check, what: str, within: float = 20.0) -> float:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    while time.monotonic() - started < within:
        if await check():
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {within}s waiting for {what}")


async def test_commit_to_ready_through_the_bus(store: Store, bus_factory: BusFactory, tmp_path: Path) -> None:
    infra = tmp_path / "homelab-infra"
    shutil.copytree(ROOT / "examples/homelab-infra", infra)
    repo = await GitRepo.init(tmp_path / "intents")
    bus = await bus_factory.open()
    source = GitSource(SourceConfig(str(repo.path), tmp_path / "co"), store)
    controller = Controller(store, bus, source, Planner(infra, syntax_check=False))
    agent = RecordingAgent(bus)
    lost = asyncio.Event()
    leading = asyncio.create_task(controller.lead(3, lost))
    try:
        await agent.start()
        await eventually(lambda: _agent_known(store), "the heartbeat to register the agent")
        await repo.commit(
            {"proxy.yaml": auto_intent("proxy"), "kuma.yaml": auto_intent("kuma", steps=2, depends="proxy")},
            "two intents",
            ALICE,
        )
        seconds = await eventually(lambda: ready(store, "kuma"), "kuma to be Ready")
        assert await ready(store, "proxy")
        assert len(agent.executed) == 3 and agent.duplicates() == []
        assert agent.highest_epoch == 3
        runs = await store.list_runs(limit=10)
        assert sorted(run.status.value for run in runs) == ["successful"] * 3
        assert await store.pending_outbox() == []
        print(f"commit to Ready for 3 runs over {bus_factory.kind}: {seconds:.2f}s")
    finally:
        lost.set()
        await asyncio.wait_for(leading, 30)
        await agent.stop()


async def _agent_known(store: Store) -> bool:
    return any(agent.id == "infra-1" for agent in await store.list_agents())
