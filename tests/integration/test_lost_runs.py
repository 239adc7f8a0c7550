"""kill -9 the infra agent mid-run: the run goes Unknown, then Failed, and the intent retries.

Real parts all the way: a ``chiffon agent infra`` process heartbeating every
second over RabbitMQ (its own queue prefix), a real ``ansible-playbook`` run on
localhost that takes a while, and the controller (leading in this process, on
PostgreSQL) with its real liveness check. The agent advertises a 1 s heartbeat
interval, so it is offline after 3 s of silence and a lost run fails 3 s after
that; the retry waits the usual 10 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import psutil
import pytest

from chiffon.controllers.controller import Controller
from chiffon.controllers.liveness import LivenessConfig
from chiffon.controllers.planner import Planner
from chiffon.controllers.source import GitSource, SourceConfig
from chiffon.gitrepo import GitRepo
from chiffon.resources import ConditionType, Run, RunStatus, is_condition_true
from chiffon.store import Store
from tests.contract.support import BusFactory, sweep_leftover_queues, unique_prefix
from tests.helpers import ALICE

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
AGENT = "infra-lost"

# Slow the first time it runs on a lab root, quick afterwards: the first attempt
# is killed with its agent, the retry finishes.
SLOW_ONCE = """\
---
- name: Take a while, once
  hosts: lab
  gather_facts: false
  become: false
  tasks:
    - name: Create the lab root
      ansible.builtin.file:
        path: "{{ homelab_root }}"
        state: directory
        mode: "0755"
    - name: Look for an earlier attempt
      ansible.builtin.stat:
        path: "{{ homelab_root }}/slow-once.started"
      register: slow_once_earlier
    - name: Mark this attempt
      ansible.builtin.file:
        path: "{{ homelab_root }}/slow-once.started"
        state: touch
        mode: "0644"
    - name: Take a while the first time
      ansible.builtin.command: sleep 120
      changed_when: false
      when: not slow_once_earlier.stat.exists
    - name: Say it finished
      ansible.builtin.copy:
        dest: "{{ homelab_root }}/slow-once.done"
        content: "done\\n"
        mode: "0644"
"""

INTENT = b"""\
apiVersion: chiffon.dev/v1alpha1
kind: DeploymentIntent
metadata:
  name: slow
spec:
  steps:
    - name: deploy
      playbook: ansible/playbooks/slow-once.yml
  inventory: ansible/inventory/hosts.yml
  limit: localhost
  approval: Auto
  placement: {agentSelector: {role: infra}}
"""


@pytest.fixture(scope="module", autouse=True)
def _sweep() -> Iterator[None]:
    yield
    sweep_leftover_queues()


class AgentProcess:
    """``chiffon agent infra`` in its own process, heartbeating every second."""

    def __init__(self, factory: BusFactory, home: Path, infra: Path, log: Path) -> None:
        env = {key: value for key, value in os.environ.items() if not key.startswith("CHIFFON_")}
        assert factory.url is not None
        env.update(
            CHIFFON_BROKER_URL=factory.url,
            CHIFFON_BUS_PREFIX=factory.prefix,
            CHIFFON_HOME=str(home),
            CHIFFON_LAB_ROOT=str(home / "lab"),
        )
        home.mkdir(parents=True, exist_ok=True)
        self.log = log
        self.process = subprocess.Popen(
            [str(BIN / "chiffon"), "agent", "infra", "--id", AGENT, "--infra-repo", str(infra),
             "--heartbeat-interval", "1", "--max-concurrent", "1"],
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            env=env,
        )  # fmt: skip

    def kill_like_a_crash(self) -> None:
        """SIGKILL the agent and, as when its machine dies, the playbook it was running."""
        tree = psutil.Process(self.process.pid).children(recursive=True)
        self.process.kill()
        self.process.wait(10)
        for child in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        psutil.wait_procs(tree, timeout=10)

    async def stop(self) -> None:
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(self.process.wait, 60)
        except subprocess.TimeoutExpired:
            self.kill_like_a_crash()
            pytest.fail(f"the agent did not stop on SIGTERM:\n{self.log.read_text()[-3000:]}")
        assert self.process.returncode == 0, self.log.read_text()[-3000:]


async def eventually(check: Callable[[], Awaitable[bool]], what: str, within: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < within:
        if await check():
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {within}s waiting for {what}")


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
async def test_kill_9_mid_run_unknown_then_failed_then_retried_to_ready(store: Store, tmp_path: Path) -> None:
    infra = tmp_path / "homelab-infra"
    shutil.copytree(ROOT / "examples" / "homelab-infra", infra)
    (infra / "ansible" / "playbooks" / "slow-once.yml").write_text(SLOW_ONCE)
    home = tmp_path / "agent-home"
    lab = home / "lab"
    repo = await GitRepo.init(tmp_path / "intents")
    factory = BusFactory("amqp", unique_prefix())
    bus = await factory.open()
    source = GitSource(SourceConfig(str(repo.path), tmp_path / "checkout"), store)
    controller = Controller(store, bus, source, Planner(infra), liveness=LivenessConfig(check_interval=0.5))
    lost = asyncio.Event()
    leading = asyncio.create_task(controller.lead(1, lost))
    log = tmp_path / "agent.log"
    first = AgentProcess(factory, home, infra, log)
    second: AgentProcess | None = None

    async def runs() -> list[Run]:
        return sorted(await store.list_runs(intent="slow"), key=lambda run: run.attempt)

    async def first_run_is(status: RunStatus) -> bool:
        found = await runs()
        return bool(found) and found[0].status is status

    try:
        await eventually(lambda: _online(store), "the agent's first heartbeat", within=60)
        await repo.commit({"slow.yaml": INTENT}, "A slow deployment", ALICE)
        await eventually(lambda: first_run_is(RunStatus.RUNNING), "the first attempt to run", within=60)
        await eventually(
            lambda: _exists(lab / "slow-once.started"), "ansible-playbook to start sleeping", within=60
        )

        first.kill_like_a_crash()
        killed = time.monotonic()
        await eventually(lambda: first_run_is(RunStatus.UNKNOWN), "the run to become unknown", within=15)
        unknown_after = time.monotonic() - killed
        [unknown] = await runs()
        assert unknown.error is not None and f"agent {AGENT} stopped heartbeating" in unknown.error
        assert not await _online(store)
        await eventually(lambda: first_run_is(RunStatus.FAILED), "the run to fail", within=15)
        failed_after = time.monotonic() - killed
        [failed] = await runs()
        assert failed.error is not None
        assert f"agent {AGENT} went silent at " in failed.error
        assert "while running step deploy; no result after" in failed.error

        # The agent comes back (same id, same journal): it reports the interrupted run
        # failed, which changes nothing, and takes the retry, which finishes.
        second = AgentProcess(factory, home, infra, log)
        await eventually(lambda: _ready(store, "slow"), "the retry to make the intent Ready", within=90)
        ready_after = time.monotonic() - killed

        attempt_1, attempt_2 = await runs()
        assert (attempt_1.id, attempt_1.status) == (failed.id, RunStatus.FAILED)
        assert attempt_1.error == failed.error  # the restarted agent's late report did not overwrite it
        assert (attempt_2.attempt, attempt_2.status, attempt_2.agent_id) == (2, RunStatus.SUCCESSFUL, AGENT)
        assert attempt_2.id != attempt_1.id
        assert (lab / "slow-once.done").read_text() == "done\n"
        actions = [event.action for event in await store.list_audit(limit=200)]
        for action in ("agent.offline", "run.unknown", "run.lost", "agent.online"):
            assert action in actions, f"{action} missing from the audit: {actions}"
        assert f"run {failed.id} was interrupted by a restart of agent {AGENT}" in log.read_text()
        print(
            f"killed → unknown {unknown_after:.1f}s → failed {failed_after:.1f}s → Ready {ready_after:.1f}s"
        )
    finally:
        if first.process.poll() is None:
            first.kill_like_a_crash()
        if second is not None:
            await second.stop()
        lost.set()
        await asyncio.wait_for(leading, 30)
        await factory.cleanup()


async def _online(store: Store) -> bool:
    agent = await store.get_agent(AGENT)
    return agent is not None and agent.online


async def _exists(path: Path) -> bool:
    return path.exists()


async def _ready(store: Store, name: str) -> bool:
    intent = await store.get_intent(name)
    return intent is not None and is_condition_true(
        intent.status.conditions if intent.status else [], ConditionType.READY
    )
