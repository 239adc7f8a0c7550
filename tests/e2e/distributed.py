"""The distributed mode as real processes: ``chiffon controller``, ``chiffon api`` and
``chiffon agent infra`` on a throwaway PostgreSQL database and RabbitMQ (under a queue
prefix of their own), each checked with ``chiffonctl`` as a person would.

Shared by the end-to-end scenarios that need the real services
(``test_desktop_placement.py``, ``test_seed_scenario.py``).
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from chiffon.bus import DEAD_LETTER_QUEUE, HEARTBEATS_QUEUE, RESULTS_QUEUE, runs_queue
from chiffon.gitrepo import GitRepo
from chiffon.store import Store
from tests.contract.support import BusFactory, sweep_leftover_queues, unique_prefix
from tests.helpers import throwaway_database

from .conftest import ROOT, Result, free_port

BIN = Path(sys.executable).parent
INFRA = "infra-e2e"
DESKTOP = "desk-sim"
INTERVAL = "1"  # seconds between heartbeats: a silent agent is offline after 3 s


@dataclass
class Lab:
    tmp: Path
    env: dict[str, str]
    server: str
    store: Store
    repo: GitRepo
    subject: str = "gpu-job"  # the intent intent(), condition() and runs() look at
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    killed: set[str] = field(default_factory=set)  # stopped on purpose: until() does not complain

    def spawn(self, name: str, *command: str) -> subprocess.Popen[bytes]:
        log = self.tmp / f"{name}.log"
        process = subprocess.Popen(
            list(command), env=self.env, cwd=ROOT, stdout=log.open("ab"), stderr=subprocess.STDOUT
        )
        self.processes[name] = process
        return process

    def kill(self, name: str) -> None:
        """SIGKILL one of the lab's processes: no clean stop, no goodbye message."""
        process = self.processes[name]
        self.killed.add(name)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)

    def respawn(self, name: str) -> subprocess.Popen[bytes]:
        """Start a process again with the command it was started with."""
        self.killed.discard(name)
        return self.spawn(name, *[str(arg) for arg in self.processes[name].args])  # type: ignore[union-attr]

    def start_desktop(self) -> subprocess.Popen[bytes]:
        return self.spawn(
            "desktop", sys.executable, "-m", "tests.agentsim", "desktop", "--id", DESKTOP,
            "--gpu-free-mib", "24576", "--heartbeat-interval", INTERVAL,
        )  # fmt: skip

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.name}:\n{path.read_text()[-3000:]}" for path in sorted(self.tmp.glob("*.log"))
        )

    def ctl(self, *args: str, timeout: float = 60) -> Result:
        env = {**self.env, "CHIFFON_SERVER": self.server, "CHIFFON_USER": "Erin Tester <erin@example.com>"}
        done = subprocess.run(
            [str(BIN / "chiffonctl"), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            check=False,
        )
        return Result(done.returncode, done.stdout, done.stderr)

    def intent(self) -> dict[str, Any]:
        result = self.ctl("get", "intents", "-o", "json")
        assert result.code == 0, result.stderr
        items: list[dict[str, Any]] = result.json()["items"]
        return next((item for item in items if item["metadata"]["name"] == self.subject), {})

    def condition(self, kind: str) -> tuple[str, str, str] | None:
        for condition in (self.intent().get("status") or {}).get("conditions", []):
            if condition["type"] == kind:
                return condition["status"], condition["reason"], condition["message"]
        return None

    def runs(self) -> list[dict[str, Any]]:
        result = self.ctl("get", "runs", "--intent", self.subject, "-o", "json")
        assert result.code == 0, result.stderr
        return sorted(result.json()["items"], key=lambda run: run["stepIndex"])

    def agent(self, agent_id: str) -> dict[str, Any] | None:
        result = self.ctl("get", "agents", "-o", "json")
        if result.code != 0:
            return None
        return next((item for item in result.json()["items"] if item["id"] == agent_id), None)

    async def until(self, predicate: Callable[[], Any], what: str, within: float = 30.0) -> Any:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            for name, process in self.processes.items():
                if name != "desktop" and name not in self.killed and process.poll() is not None:
                    raise AssertionError(f"{name} exited with {process.returncode}:\n{self.logs()}")
            await asyncio.sleep(0.2)
        raise AssertionError(
            f"timed out after {within}s waiting for {what}; the intent: "
            f"{self.intent() if 'api' in self.processes else '(no API in this lab)'}\n{self.logs()}"
        )

    async def actions(self) -> list[str]:
        events = await self.store.list_audit(resource=f"DeploymentIntent/{self.subject}", limit=1000)
        return [event.action for event in reversed(events)]


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module", autouse=True)
def sweep_queues() -> Iterator[None]:
    """After each module, delete the queues its labs left on the broker."""
    yield
    sweep_leftover_queues()


@contextlib.asynccontextmanager
async def open_lab(
    tmp_path: Path, *, api: bool = True, share_broker: bool = True, **settings: str
) -> AsyncIterator[Lab]:
    """Controller, API and infra agent on a throwaway PostgreSQL database (the processes cannot
    share a test's schema) and RabbitMQ, with a copy of the example
    homelab-infra at ``tmp_path/homelab-infra`` (written before this is entered, if the
    caller wants to add to it) and the lab root at ``tmp_path/lab``. ``settings`` are more
    ``CHIFFON_*`` variables for every process."""
    infra = tmp_path / "homelab-infra"
    if not infra.exists():
        shutil.copytree(ROOT / "examples/homelab-infra", infra)
    with throwaway_database("e2e") as database:
        async with _lab_on(
            tmp_path, database, infra, settings, api=api, share_broker=share_broker
        ) as running:
            yield running


@contextlib.asynccontextmanager
async def _lab_on(
    tmp_path: Path, database: str, infra: Path, settings: dict[str, str], *, api: bool, share_broker: bool
) -> AsyncIterator[Lab]:
    repo = await GitRepo.init(tmp_path / "intents")
    # share_broker=False only inside broker_alone(): a lab that restarts the broker holds it whole.
    factory = BusFactory("amqp", unique_prefix(), share_broker=share_broker)
    bus = await factory.open()  # holds the broker for the test; declares what cleanup deletes
    for queue in (HEARTBEATS_QUEUE, RESULTS_QUEUE, DEAD_LETTER_QUEUE, runs_queue(INFRA)):
        await bus.declare(queue)
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("CHIFFON_")}
    assert factory.url is not None
    env.update(
        CHIFFON_HOME=str(tmp_path / "home"),
        CHIFFON_DATABASE_URL=database,
        CHIFFON_BROKER_URL=factory.url,
        CHIFFON_BUS_PREFIX=factory.prefix,
        CHIFFON_INTENTS_REPO=str(repo.path),
        CHIFFON_INFRA_REPO=str(infra),
        CHIFFON_LAB_ROOT=str(tmp_path / "lab"),
        CHIFFON_LIVENESS_CHECK_INTERVAL="1",
        **{f"CHIFFON_{key.upper()}": value for key, value in settings.items()},
    )
    store = Store.from_url(database)
    await store.migrate()
    running = Lab(tmp_path, env, f"http://127.0.0.1:{port}", store, repo)
    try:
        running.spawn("controller", str(BIN / "chiffon"), "controller")
        if api:  # chiffonctl needs it; the chaos suite reads the database and spares the CPU
            running.spawn("api", str(BIN / "chiffon"), "api", "--port", str(port))
        running.spawn(
            "infra", str(BIN / "chiffon"), "agent", "infra", "--id", INFRA, "--heartbeat-interval", INTERVAL
        )
        yield running
    finally:
        for process in running.processes.values():
            stop(process)
        await store.close()
        await factory.cleanup()
