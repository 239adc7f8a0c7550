"""Kill the controller (SIGKILL) at the worst moments and restart RabbitMQ: every run happens exactly once.

Real processes and services: a ``chiffon controller`` subprocess on its own
PostgreSQL database and RabbitMQ queue prefix, and a recording agent in the
test process that journals every RunRequest it receives and every run it
executes (deduplicated by run id, as docs/protocol.md requires of agents).
The checker compares what was requested (the runs in the database) with what
ran (the agent's journal): no run lost, none executed twice.
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
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from chiffon.bus import open_bus
from chiffon.gitrepo import GitRepo
from chiffon.resources import ConditionType, is_condition_true
from chiffon.store import Store
from tests.agentsim import RecordingAgent
from tests.contract.support import amqp_url, broker_alone, unique_prefix
from tests.helpers import ALICE, throwaway_database

from .checker import Verdict, record

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
INTENTS = 12  # two steps each: 24 runs per scenario


def intent(name: str) -> bytes:
    return (
        f"apiVersion: chiffon.dev/v1alpha1\nkind: DeploymentIntent\nmetadata:\n  name: {name}\nspec:\n"
        "  steps:\n    - name: deploy\n      playbook: ansible/playbooks/kuma-deployment.yml\n"
        "    - name: portals\n      playbook: ansible/playbooks/kuma-config-update.yml\n"
        "  limit: localhost\n  approval: Auto\n"
    ).encode()


@dataclass
class Lab:
    home: Path
    env: dict[str, str]
    store: Store
    repo: GitRepo
    agent: RecordingAgent
    log: Path

    def start_controller(self, crash_at: str | None = None) -> subprocess.Popen[bytes]:
        env = dict(self.env)
        if crash_at:
            env["CHIFFON_CRASH_AT"] = crash_at
        return subprocess.Popen(
            [str(Path(sys.executable).parent / "chiffon"), "controller"],
            env=env,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )

    async def all_ready(self, names: list[str], within: float = 90.0) -> float:
        started = time.monotonic()
        while time.monotonic() - started < within:
            intents = {i.metadata.name: i for i in await self.store.list_intents()}
            if all(
                name in intents
                and is_condition_true(
                    intents[name].status.conditions,  # type: ignore[union-attr]
                    ConditionType.READY,
                )
                for name in names
            ):
                return time.monotonic() - started
            await asyncio.sleep(0.2)
        raise AssertionError(
            f"not all Ready within {within}s; controller log:\n{self.log.read_text()[-4000:]}"
        )

    async def check_exactly_once(
        self, expected_runs: int, scenario: str, recovery: float | None = None
    ) -> None:
        runs = await self.store.list_runs(limit=10_000)
        requested = {run.id for run in runs}
        executed = self.agent.executed
        lost = requested - set(executed)
        unexpected = set(executed) - requested
        record(
            Verdict(
                scenario=scenario,
                intents=INTENTS,
                runs_requested=len(requested),
                runs_executed=len(executed),
                lost=sorted(lost),
                duplicated=self.agent.duplicates(),
                unexpected=sorted(unexpected),
                recovery_seconds=recovery,
                note="recording agent; requests received "
                f"{len(self.agent.received)} (redeliveries answered from its journal)",
            )
        )
        assert len(requested) == expected_runs, f"{len(requested)} runs requested, {expected_runs} expected"
        assert not lost, f"lost runs: {sorted(lost)}"
        assert not unexpected, f"runs nobody requested: {sorted(unexpected)}"
        assert self.agent.duplicates() == [], f"executed twice: {self.agent.duplicates()}"
        assert all(run.status.value == "successful" for run in runs)


@pytest.fixture
def database() -> Iterator[str]:
    with throwaway_database("chaos") as url:
        yield url


@pytest.fixture
async def lab(tmp_path: Path, database: str) -> AsyncIterator[Lab]:
    infra = tmp_path / "homelab-infra"
    shutil.copytree(ROOT / "examples/homelab-infra", infra)
    repo = await GitRepo.init(tmp_path / "intents")
    prefix = unique_prefix()
    env = {key: value for key, value in os.environ.items() if not key.startswith("CHIFFON_")}
    env.update(
        CHIFFON_HOME=str(tmp_path / "home"),
        CHIFFON_DATABASE_URL=database,
        CHIFFON_BROKER_URL=amqp_url(),
        CHIFFON_BUS_PREFIX=prefix,
        CHIFFON_INTENTS_REPO=str(repo.path),
        CHIFFON_INFRA_REPO=str(infra),
    )
    store = Store.from_url(database)
    await store.migrate()
    bus = open_bus(amqp_url(), prefix=prefix)
    await bus.connect()
    agent = RecordingAgent(bus)
    await agent.start()
    try:
        yield Lab(tmp_path / "home", env, store, repo, agent, tmp_path / "controller.log")
    finally:
        await agent.stop()
        await _delete_queues(bus, prefix)
        await bus.close()
        await store.close()


async def _delete_queues(bus: object, prefix: str) -> None:
    delete = getattr(bus, "_delete_queue", None)
    if delete is None:
        return
    for name in ("chiffon.results", "chiffon.heartbeats", "chiffon.dead-letter", "chiffon.runs.infra-1"):
        with contextlib.suppress(Exception):  # already gone, or the broker is restarting
            await delete(prefix + name)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def until(predicate: Callable[[], bool], within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return predicate()


async def wait_exit(process: subprocess.Popen[bytes], within: float = 60.0) -> int:
    if not await until(lambda: process.poll() is not None, within):
        process.kill()  # never leave a controller behind: it would keep leading other tests' work
        process.wait()
        raise AssertionError("expected a crash at the crash point")
    return process.returncode


@pytest.mark.parametrize("crash_at", ["after-dispatch:3", "after-publish:3", "after-result:3"])
async def test_sigkill_at_each_crash_point_loses_and_repeats_nothing(lab: Lab, crash_at: str) -> None:
    names = [f"app-{i:02d}" for i in range(INTENTS)]
    await lab.repo.commit({f"{n}.yaml": intent(n) for n in names}, "many intents", ALICE)
    crashing = lab.start_controller(crash_at)
    assert await wait_exit(crashing) == -signal.SIGKILL
    await lab.agent.heartbeat()
    restarted = lab.start_controller()
    try:
        recovery = await lab.all_ready(names)
    finally:
        stop(restarted)
    await lab.check_exactly_once(INTENTS * 2, f"controller SIGKILL at {crash_at}", recovery)
    print(
        f"{crash_at}: recovered in {recovery:.1f}s; requests received {len(lab.agent.received)}, "
        f"executed {len(lab.agent.executed)}"
    )


async def test_repeated_crashes_then_recovery(lab: Lab) -> None:
    names = [f"app-{i:02d}" for i in range(INTENTS)]
    await lab.repo.commit({f"{n}.yaml": intent(n) for n in names}, "many intents", ALICE)
    for point in ("after-dispatch:2", "after-publish:2", "after-result:2", "after-dispatch:4"):
        assert await wait_exit(lab.start_controller(point)) == -signal.SIGKILL
        await lab.agent.heartbeat()
    restarted = lab.start_controller()
    try:
        await lab.all_ready(names)
    finally:
        stop(restarted)
    await lab.check_exactly_once(INTENTS * 2, "controller SIGKILL 4 times in a row")


async def test_rabbitmq_restart_during_dispatch(lab: Lab) -> None:
    names = [f"app-{i:02d}" for i in range(INTENTS)]
    controller = lab.start_controller()
    try:
        await asyncio.sleep(2)
        await lab.repo.commit({f"{n}.yaml": intent(n) for n in names}, "many intents", ALICE)
        assert await until(lambda: len(lab.agent.executed) >= 3, 60), "no run started"
        async with broker_alone():  # tests of other runs on this machine wait for the restart
            _rabbitmqctl("stop_app")
            await asyncio.sleep(2)
            _rabbitmqctl("start_app")
            _wait_for_rabbitmq()
        await asyncio.sleep(1)
        await lab.agent.heartbeat()
        await lab.all_ready(names, within=120)
    finally:
        _rabbitmqctl("start_app")
        _wait_for_rabbitmq()
        stop(controller)
    await lab.check_exactly_once(INTENTS * 2, "RabbitMQ restart during dispatch")


def _rabbitmqctl(command: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", command], check=False, capture_output=True, timeout=60)


def _wait_for_rabbitmq() -> None:
    for _ in range(60):
        if (
            subprocess.run(
                ["rabbitmq-diagnostics", "-q", "ping"], capture_output=True, check=False
            ).returncode
            == 0
        ):
            return
        time.sleep(1)
    raise AssertionError("RabbitMQ did not come back")
