"""Controller and a real infra agent on the in-process bus, with a real Ansible run.

A commit of an Auto intent becomes a plan, a dispatch, a RunRequest, a real
``ansible-playbook`` run on localhost, a RunResult, and finally Ready=True —
with the rendered compose file under the lab root to show for it. This is the
embedded mode of ``chiffon up`` minus the API.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from chiffon.agents.infra import InfraAgent
from chiffon.controllers.controller import Controller
from chiffon.controllers.planner import Planner
from chiffon.controllers.source import GitSource, SourceConfig
from chiffon.gitrepo import GitRepo
from chiffon.resources import ConditionType, RunStatus, is_condition_true
from chiffon.store import Store
from tests.contract.support import BusFactory, unique_prefix
from tests.helpers import ALICE

ROOT = Path(__file__).resolve().parents[2]

KUMA_INTENT = b"""\
apiVersion: chiffon.dev/v1alpha1
kind: DeploymentIntent
metadata:
  name: uptime-kuma
spec:
  service: uptime-kuma
  steps:
    - name: deploy
      playbook: ansible/playbooks/kuma-deployment.yml
  inventory: ansible/inventory/hosts.yml
  limit: localhost
  vars: {kuma_port: 3011}
  approval: Auto
  placement: {agentSelector: {role: infra}}
"""


async def eventually(check: Callable[[], Awaitable[bool]], what: str, within: float = 90.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < within:
        if await check():
            return time.monotonic() - started
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {within}s waiting for {what}")


async def test_an_auto_intent_is_deployed_by_the_real_agent(store: Store, tmp_path: Path) -> None:
    infra = tmp_path / "homelab-infra"
    shutil.copytree(ROOT / "examples" / "homelab-infra", infra)
    lab = tmp_path / "lab"
    repo = await GitRepo.init(tmp_path / "intents")
    factory = BusFactory("memory", unique_prefix())
    bus = await factory.open()
    source = GitSource(SourceConfig(str(repo.path), tmp_path / "checkout"), store)
    controller = Controller(store, bus, source, Planner(infra))
    agent = InfraAgent(
        bus,
        repo=infra,
        work_dir=tmp_path / "agent",
        agent_id="infra-e2e",
        env={"CHIFFON_LAB_ROOT": str(lab)},
    )
    lost = asyncio.Event()
    stop = asyncio.Event()
    leading = asyncio.create_task(controller.lead(1, lost))
    serving = asyncio.create_task(agent.run(stop))
    try:
        await eventually(
            lambda: _agent_known(store, "infra-e2e"), "the agent's heartbeat to register it", within=30
        )
        await repo.commit({"uptime-kuma.yaml": KUMA_INTENT}, "Deploy Uptime Kuma", ALICE)

        seconds = await eventually(lambda: _ready(store, "uptime-kuma"), "uptime-kuma to be Ready")

        compose = lab / "stacks" / "uptime-kuma" / "docker-compose.yml"
        assert compose.is_file() and "3011:3001" in compose.read_text()
        [run] = await store.list_runs(limit=10)
        assert (run.status, run.rc, run.agent_id) == (RunStatus.SUCCESSFUL, 0, "infra-e2e")
        assert run.stats["localhost"].changed > 0
        assert agent.executed == [run.id]
        print(f"commit to Ready with a real ansible run: {seconds:.1f}s")
    finally:
        stop.set()
        await asyncio.wait_for(serving, 60)
        lost.set()
        await asyncio.wait_for(leading, 30)
        await factory.cleanup()


async def _agent_known(store: Store, agent_id: str) -> bool:
    return any(agent.id == agent_id for agent in await store.list_agents())


async def _ready(store: Store, name: str) -> bool:
    intent = await store.get_intent(name)
    return intent is not None and is_condition_true(
        intent.status.conditions if intent.status else [], ConditionType.READY
    )
