"""The real ``chiffon agent infra`` and ``chiffon agent desktop`` processes on RabbitMQ."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psutil
import pytest

from chiffon.bus import HEARTBEATS_QUEUE, RESULTS_QUEUE, runs_queue
from chiffon.resources.messages import AgentOffline, Heartbeat, RunRequest, RunResult, make_envelope
from tests.contract.support import BusFactory, Recorder, eventually, sweep_leftover_queues, unique_prefix

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module", autouse=True)
def _sweep() -> Iterator[None]:
    yield
    sweep_leftover_queues()


@pytest.fixture
async def factory() -> AsyncIterator[BusFactory]:
    opened = BusFactory("amqp", unique_prefix())
    try:
        yield opened
    finally:
        await opened.cleanup()


def spawn(factory: BusFactory, home: Path, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("CHIFFON_")}
    assert factory.url is not None
    env.update(
        CHIFFON_BROKER_URL=factory.url,
        CHIFFON_BUS_PREFIX=factory.prefix,
        CHIFFON_HOME=str(home),
        CHIFFON_LAB_ROOT=str(home / "lab"),
    )
    log = home.parent / f"{args[0]}.log"
    home.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [str(BIN / "chiffon"), "agent", *args], stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env
    )
    return process, log


async def stop(process: subprocess.Popen[bytes], log: Path) -> None:
    process.send_signal(signal.SIGTERM)
    for _ in range(300):
        if process.poll() is not None:
            break
        await asyncio.sleep(0.1)
    else:
        process.kill()
        pytest.fail(f"the agent did not stop on SIGTERM:\n{log.read_text()}")
    assert process.returncode == 0, log.read_text()


async def test_desktop_agent_process(factory: BusFactory, tmp_path: Path) -> None:
    bus = await factory.open()
    await bus.declare(HEARTBEATS_QUEUE)
    beats = Recorder()
    await bus.consume(HEARTBEATS_QUEUE, beats)
    me = psutil.Process().name()
    process, log = spawn(
        factory, tmp_path / "home", "desktop", "--id", "desk-cli", "--label", "site=attic",
        "--busy-process", me, "--heartbeat-interval", "1",
    )  # fmt: skip
    try:
        await eventually(lambda: len(beats.deliveries) >= 2, within=60, what="two heartbeats")
    finally:
        await stop(process, log)
    await eventually(
        lambda: isinstance(beats.deliveries[-1].envelope.payload, AgentOffline),
        within=10,
        what="AgentOffline",
    )
    beat = beats.deliveries[0].envelope.payload
    assert isinstance(beat, Heartbeat)
    assert (beat.agent_id, beat.kind.value) == ("desk-cli", "desktop")
    assert beat.labels == {"role": "desktop", "gpu": beat.labels["gpu"], "site": "attic"}
    assert beat.labels["gpu"] == ("true" if beat.capacity.gpus else "false")
    assert beat.capacity.busy and beat.capacity.busy_reason == f"{me} running"
    assert beat.capacity.cpu_cores == psutil.cpu_count(logical=True)


async def test_infra_agent_process_runs_a_playbook(factory: BusFactory, tmp_path: Path) -> None:
    infra = tmp_path / "homelab-infra"
    shutil.copytree(ROOT / "examples" / "homelab-infra", infra)
    bus = await factory.open()
    for queue in (HEARTBEATS_QUEUE, RESULTS_QUEUE, runs_queue("infra-cli")):
        await bus.declare(queue)
    beats, results = Recorder(), Recorder()
    await bus.consume(HEARTBEATS_QUEUE, beats)
    await bus.consume(RESULTS_QUEUE, results)
    home = tmp_path / "home"
    process, log = spawn(
        factory, home, "infra", "--id", "infra-cli", "--infra-repo", str(infra), "--max-concurrent", "1"
    )
    try:
        await eventually(lambda: bool(beats.deliveries), within=60, what="the first heartbeat")
        run = RunRequest(
            run_id="cli-run",
            intent="uptime-kuma",
            generation=1,
            plan_digest="sha256:x",
            step="deploy",
            playbook="ansible/playbooks/kuma-deployment.yml",
            inventory="ansible/inventory/hosts.yml",
            limit="localhost",
            agent_id="infra-cli",
        )
        await bus.publish(runs_queue("infra-cli"), make_envelope(run, message_id=run.run_id))
        await eventually(
            lambda: any(isinstance(d.envelope.payload, RunResult) for d in results.deliveries),
            within=90,
            what="the RunResult",
        )
    finally:
        await stop(process, log)
    [result] = [d.envelope.payload for d in results.deliveries if isinstance(d.envelope.payload, RunResult)]
    assert result.status == "successful", result.error
    assert (home / "lab" / "stacks" / "uptime-kuma" / "docker-compose.yml").is_file()
    assert (home / "agents" / "infra-cli" / "journal.jsonl").is_file()
    assert not (infra / "artifacts").exists()
