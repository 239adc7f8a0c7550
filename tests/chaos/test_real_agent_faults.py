"""Faults against the whole distributed stack with real ansible: nothing lost, nothing run twice.

``chiffon controller``, ``chiffon api`` and ``chiffon agent infra`` run as processes on
a throwaway PostgreSQL database and RabbitMQ (``tests/e2e/distributed.py``). Every
intent runs the chaos playbook, which stamps its run id in a ledger on the host
before and after it works (``tests/chaos/checker.py``): the checker compares that
ledger with the runs the database requested. Scenarios:

* the infra agent SIGKILLed mid-playbook, then restarted;
* the controller SIGKILLed at random moments while runs flow, then restarted —
  recovery is the time from the restart to the next run dispatched;
* two controllers, the leader SIGKILLed — failover is the time until the standby
  dispatches;
* RabbitMQ restarted while results are being delivered;
* PostgreSQL restarted while the controller reconciles.

Scale with ``CHIFFON_CHAOS_INTENTS`` (default 10 per scenario; ``scripts/chaos``
runs more). Each scenario adds its row to the report ``scripts/chaos`` prints.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from chiffon.controllers.leader import DEFAULT_ELECTION as CONTROLLER_ELECTION
from chiffon.resources import ConditionType, Run, is_condition_true
from chiffon.store.errors import StoreError
from tests.contract.support import broker_alone
from tests.e2e.distributed import INFRA, Lab, open_lab
from tests.helpers import ALICE

from .checker import LEDGER_PLAYBOOK, Ledger, Verdict, chaos_intent, judge, record

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

# Per scenario; CI keeps it small, scripts/chaos runs more.
INTENTS = int(os.environ.get("CHIFFON_CHAOS_INTENTS", "3"))
RECOVERY_LIMIT = 15.0


@contextlib.asynccontextmanager
async def chaos_lab(tmp_path: Path, *, share_broker: bool = True) -> AsyncIterator[Lab]:
    """The distributed stack without the API, on a copy of the example repo plus the chaos playbook."""
    infra = tmp_path / "homelab-infra"
    shutil.copytree(Path(__file__).resolve().parents[2] / "examples/homelab-infra", infra)
    (infra / "ansible/playbooks/chaos-step.yml").write_text(LEDGER_PLAYBOOK)
    async with open_lab(tmp_path, api=False, share_broker=share_broker) as running:
        await seconds_until(
            running, lambda: _online(running), time.monotonic(), "the infra agent's heartbeat"
        )
        yield running


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[Lab]:
    async with chaos_lab(tmp_path) as running:
        yield running


def names(prefix: str, count: int = INTENTS) -> list[str]:
    return [f"{prefix}-{i:02d}" for i in range(count)]


async def commit(lab: Lab, prefix: str, *, steps: int = 1, work: int = 1) -> tuple[list[str], Ledger]:
    ledger = Ledger(lab.tmp / f"{prefix}.ledger")
    wanted = names(prefix)
    await lab.repo.commit(
        {f"{n}.yaml": chaos_intent(n, ledger.path, steps=steps, work_seconds=work) for n in wanted},
        f"{prefix}: {len(wanted)} intents",
        ALICE,
    )
    return wanted, ledger


async def not_ready(lab: Lab, wanted: list[str]) -> list[str]:
    intents = {i.metadata.name: i for i in await lab.store.list_intents()}
    return [
        name
        for name in wanted
        if name not in intents
        or not is_condition_true(
            intents[name].status.conditions if intents[name].status else [], ConditionType.READY
        )
    ]


async def settle(lab: Lab, wanted: list[str]) -> list[str]:
    # Runs take a few seconds each under load and the agent runs two at a time.
    deadline = time.monotonic() + 120 + 15 * len(wanted)
    while time.monotonic() < deadline:
        try:
            if not await not_ready(lab, wanted):
                return []
        except StoreError:  # the test's own connections, right after a PostgreSQL restart
            pass
        await asyncio.sleep(0.5)
    return await not_ready(lab, wanted)


async def verdict(lab: Lab, scenario: str, wanted: list[str], ledger: Ledger, **extra: object) -> Verdict:
    missing = await settle(lab, wanted)
    runs = [run for run in await lab.store.list_runs(limit=10_000) if run.intent in set(wanted)]
    found = judge(scenario, runs, ledger, not_ready=missing, intents=len(wanted))
    for key, value in extra.items():
        setattr(found, key, value)
    record(found)
    assert found.clean, f"{found}\n{lab.logs()}"
    return found


async def _online(lab: Lab) -> bool:
    return any(agent.id == INFRA and agent.online for agent in await lab.store.list_agents())


def progressed(runs: list[Run], since: datetime) -> bool:
    """Whether any run was dispatched, started or finished after ``since``."""
    return any(
        moment and moment > since
        for run in runs
        for moment in (run.created_at, run.started_at, run.finished_at)
    )


async def seconds_until(
    lab: Lab, predicate: Callable[[], Awaitable[bool]], started: float, what: str
) -> float:
    while time.monotonic() - started < 120:
        with contextlib.suppress(StoreError):
            if await predicate():
                return time.monotonic() - started
        await asyncio.sleep(0.1)
    raise AssertionError(f"no {what} within 120s\n{lab.logs()}")


async def recovery_after(lab: Lab, since: datetime, started: float) -> float:
    """Seconds from ``started`` until the controller moves a run again (dispatch, acceptance or result)."""

    async def moved() -> bool:
        return progressed(await lab.store.list_runs(limit=10_000), since)

    return await seconds_until(lab, moved, started, "run progress")


async def failover_after(lab: Lab, since: datetime, started: float) -> float:
    """Seconds from ``started`` until another controller is elected leader."""

    async def elected() -> bool:
        events = await lab.store.list_audit(
            action="leader.elected", resource=f"Election/{CONTROLLER_ELECTION}", limit=5
        )
        return any(event.time > since for event in events)

    return await seconds_until(lab, elected, started, "new leader")


async def test_infra_agent_killed_mid_playbook(lab: Lab) -> None:
    wanted, ledger = await commit(lab, "agentkill", work=3)
    kills = 0
    for _ in range(3):
        seen = len(ledger.lines())

        def a_new_run_started(seen: int = seen) -> bool:
            lines = ledger.lines()
            return len(lines) > seen and lines[-1][0] == "start"

        mid_playbook = await _within(a_new_run_started, 60)
        if not mid_playbook:
            break  # everything ran before the next kill could land
        lab.kill("infra")
        kills += 1
        await asyncio.sleep(1)
        lab.respawn("infra")
    await verdict(lab, f"infra agent SIGKILL mid-playbook (x{kills})", wanted, ledger)
    interrupted = [run_id for run_id in ledger.started() if run_id not in ledger.ended()]
    assert kills and interrupted, "no run was interrupted: the kills missed the playbooks"
    runs = {run.id: run for run in await lab.store.list_runs(limit=10_000)}
    # Each interrupted run is failed (the agent says so on restart), and its step ran again as a new run.
    assert all(runs[run_id].status.value == "failed" for run_id in interrupted)


async def _within(predicate: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return False


async def test_controller_killed_at_random_moments(lab: Lab) -> None:
    wanted, ledger = await commit(lab, "ctlkill", steps=2)
    recoveries = []
    rng = random.Random(7)
    for _ in range(3):
        await asyncio.sleep(rng.uniform(0.5, 3.0))
        lab.kill("controller")
        await asyncio.sleep(0.5)
        if not await not_ready(lab, wanted):
            lab.respawn("controller")
            break
        restarted_at = datetime.now(UTC)
        started = time.monotonic()
        lab.respawn("controller")
        recoveries.append(await recovery_after(lab, restarted_at, started))
    worst = max(recoveries) if recoveries else None
    await verdict(lab, "controller SIGKILL at random moments (x3)", wanted, ledger, recovery_seconds=worst)
    assert worst is None or worst <= RECOVERY_LIMIT, recoveries


async def test_leader_killed_with_a_standby(lab: Lab) -> None:
    lab.spawn("standby", *[str(arg) for arg in lab.processes["controller"].args])  # type: ignore[union-attr]
    await asyncio.sleep(3)
    wanted, ledger = await commit(lab, "failover", steps=2)
    await lab.until(lambda: len(ledger.lines()) >= 4, "runs under the first leader", within=120)
    leader = await _leader(lab)
    killed_at = datetime.now(UTC)
    started = time.monotonic()
    lab.kill(leader)
    failover = await failover_after(lab, killed_at, started)
    await verdict(lab, "leader SIGKILL, standby takes over", wanted, ledger, recovery_seconds=failover)
    assert failover <= RECOVERY_LIMIT, failover


async def _leader(lab: Lab) -> str:
    """Which of the two controller processes holds the controller election."""
    events = await lab.store.list_audit(
        action="leader.elected", resource=f"Election/{CONTROLLER_ELECTION}", limit=10
    )
    holder = events[0].actor if events else ""  # "host:pid" of the newest leader
    pid = holder.rsplit(":", 1)[-1]
    for name in ("controller", "standby"):
        if str(lab.processes[name].pid) == pid:
            return name
    raise AssertionError(f"no controller process is the leader {holder!r}: {[e.actor for e in events]}")


async def test_rabbitmq_restart_while_results_are_delivered(tmp_path: Path) -> None:
    # The whole scenario holds the broker alone: other tests' buses would fail on the restart.
    async with broker_alone(), chaos_lab(tmp_path, share_broker=False) as lab:
        wanted, ledger = await commit(lab, "brokerkill")
        await lab.until(lambda: len(ledger.ended()) >= 1, "results flowing", within=120)
        _run(["rabbitmqctl", "-q", "stop_app"])
        await asyncio.sleep(2)
        _run(["rabbitmqctl", "-q", "start_app"])
        _wait_for(["rabbitmq-diagnostics", "-q", "ping"])
        await verdict(lab, "RabbitMQ restart during result delivery", wanted, ledger)


async def test_postgresql_restart_while_reconciling(lab: Lab) -> None:
    wanted, ledger = await commit(lab, "pgkill", steps=2)
    await lab.until(lambda: len(ledger.started()) >= 2, "runs flowing", within=120)
    cluster = sorted(path.name for path in Path("/etc/postgresql").iterdir())[0]
    _run(["pg_ctlcluster", "--skip-systemctl-redirect", cluster, "main", "restart"])
    _wait_for(["pg_isready", "-h", "127.0.0.1", "-p", "5432"])
    await verdict(lab, "PostgreSQL restart during reconcile", wanted, ledger)


def _run(command: list[str]) -> None:
    subprocess.run(command, check=False, capture_output=True, timeout=120)


def _wait_for(command: list[str]) -> None:
    for _ in range(60):
        if subprocess.run(command, capture_output=True, check=False).returncode == 0:
            return
        time.sleep(1)
    raise AssertionError(f"{command[0]}: the service did not come back")
