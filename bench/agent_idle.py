"""Desktop agent idle cost: CPU (% of one core) and RSS of a real ``chiffon agent desktop`` process.

Two agents run as the product runs them: the ``chiffon`` console script,
``chiffon agent desktop --id … [--heartbeat-interval 1]``, against RabbitMQ
(``CHIFFON_BROKER_URL``) under a queue prefix of this run's own
(``CHIFFON_BUS_PREFIX``), with a state directory in a temp dir — one with a
heartbeat every second (the smallest interval the command accepts: the
worst case) and one with the default interval (15 s). The bench consumes
``chiffon.heartbeats`` to see them start and to count their heartbeats.

Measured per process, with psutil, after its first heartbeat and a settling
pause (start-up's imports are not idle time): CPU = (user + system time, all
threads) over wall time across the window; RSS sampled every second (the
figure is the largest sample); VmHWM (the peak since start, start-up
included) and USS/PSS are reported beside it. At the end each agent gets
SIGTERM and must say ``AgentOffline`` and exit 0.

The window runs while the other agent figures are measured (``bench.agents``
starts it first and collects it last): CPU time is the agent's own, so the
others' load does not count towards it, and the bench takes one minute less.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench.agent_support import (
    BIN,
    MB,
    MIB,
    ProcessMeter,
    broker_shared,
    clean_environment,
    delete_named_queues,
    failed,
    log_tail,
    row,
    start_process,
    stop_process,
)
from bench.common import AMQP_URL
from chiffon.bus import DEAD_LETTER_QUEUE, HEARTBEATS_QUEUE, RESULTS_QUEUE, Bus, Delivery, open_bus
from chiffon.resources.messages import AgentOffline, Heartbeat

FIGURE = "desktop agent idle"
TARGET_CPU_PERCENT = 1.0
TARGET_RSS_MB = 60.0
TARGET = f"≤{TARGET_CPU_PERCENT:g}% core, ≤{TARGET_RSS_MB:g} MB"
WINDOW, QUICK_WINDOW = 60.0, 20.0
SETTLE = 3.0
START_TIMEOUT = 60.0
INTERVALS: tuple[float | None, ...] = (1.0, None)  # None: the command's default (15 s)


@dataclass
class IdleAgent:
    interval: float | None
    agent_id: str
    log: Path
    process: Any = None
    meter: ProcessMeter | None = None
    heartbeats: list[float] = field(default_factory=list)
    offline: bool = False
    exit_status: int | None = None

    @property
    def setup(self) -> str:
        return f"heartbeat {self.interval:g}s" if self.interval else "heartbeat 15s (default)"


class IdleRun:
    """Start the agents (:meth:`start`), let other work happen, then :meth:`finish` for the rows."""

    def __init__(self, *, quick: bool, window: float | None = None) -> None:
        self.window = window or (QUICK_WINDOW if quick else WINDOW)
        self.tag = uuid.uuid4().hex[:8]
        self.prefix = f"chiffon-bench-{self.tag}."
        self.tmp = Path(tempfile.mkdtemp(prefix=f"chiffon-bench-{self.tag}-"))
        self.agents = [
            IdleAgent(interval, f"bench-desktop-{index}-{self.tag}", self.tmp / f"agent-{index}.log")
            for index, interval in enumerate(INTERVALS)
        ]
        self.bus: Bus | None = None
        self.started_at = 0.0
        self._sampler: asyncio.Task[None] | None = None
        self._lease: contextlib.AbstractAsyncContextManager[None] | None = None
        self.error: str | None = None

    async def _on_heartbeat(self, delivery: Delivery) -> None:
        payload = delivery.envelope.payload
        for agent in self.agents:
            if isinstance(payload, Heartbeat) and payload.agent_id == agent.agent_id:
                agent.heartbeats.append(time.monotonic())
            elif isinstance(payload, AgentOffline) and payload.agent_id == agent.agent_id:
                agent.offline = True
        await delivery.ack()

    async def start(self) -> None:
        try:
            self._lease = broker_shared()
            await self._lease.__aenter__()
            self.bus = open_bus(AMQP_URL, prefix=self.prefix)
            await self.bus.connect()
            await self.bus.consume(HEARTBEATS_QUEUE, self._on_heartbeat)
            for index, agent in enumerate(self.agents):
                env = clean_environment(
                    CHIFFON_HOME=str(self.tmp / f"home-{index}"),
                    CHIFFON_BROKER_URL=AMQP_URL,
                    CHIFFON_BUS_PREFIX=self.prefix,
                )
                command = [str(BIN / "chiffon"), "agent", "desktop", "--id", agent.agent_id]
                if agent.interval is not None:
                    command += ["--heartbeat-interval", f"{agent.interval:g}"]
                agent.process = start_process(command, env, agent.log)
            deadline = time.monotonic() + START_TIMEOUT
            while not all(agent.heartbeats for agent in self.agents):
                for agent in self.agents:
                    if agent.process.poll() is not None:
                        raise RuntimeError(
                            f"agent {agent.agent_id} exited with status {agent.process.returncode}: "
                            f"{log_tail(agent.log, 5)}"
                        )
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no heartbeat from the desktop agents within {START_TIMEOUT:g}s")
                await asyncio.sleep(0.05)
            await asyncio.sleep(SETTLE)
            for agent in self.agents:
                agent.meter = ProcessMeter(agent.process.pid)
                agent.meter.start()
            self.started_at = time.monotonic()
            self._sampler = asyncio.create_task(self._sample(), name="idle agents' RSS")
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"

    async def _sample(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            for agent in self.agents:
                if agent.meter is not None:
                    with contextlib.suppress(psutil.Error):
                        agent.meter.sample()

    async def finish(self) -> list[dict[str, Any]]:
        """Wait out the rest of the window, stop the agents, clean up; one row per agent."""
        try:
            if self.error is None:
                remaining = self.started_at + self.window - time.monotonic()
                if remaining > 0:
                    await asyncio.sleep(remaining)
                return self._rows(await self._stop())
            return [failed(FIGURE, agent.setup, TARGET, self.error) for agent in self.agents]
        except Exception as exc:
            return [
                failed(FIGURE, agent.setup, TARGET, f"{type(exc).__name__}: {exc}") for agent in self.agents
            ]
        finally:
            await self._cleanup()

    async def _stop(self) -> dict[str, dict[str, Any]]:
        extra: dict[str, dict[str, Any]] = {}
        if self._sampler is not None:
            self._sampler.cancel()
            await asyncio.gather(self._sampler, return_exceptions=True)
        for agent in self.agents:
            assert agent.meter is not None
            agent.meter.stop()
            memory: dict[str, Any] = {}
            with contextlib.suppress(psutil.Error):
                full = agent.meter.process.memory_full_info()
                memory = {"uss_mib": round(full.uss / MIB, 1), "pss_mib": round(full.pss / MIB, 1)}
            hwm = agent.meter.status_kib("VmHWM")
            memory["vm_hwm_mb"] = round(hwm * 1024 / MB, 1) if hwm is not None else None
            extra[agent.agent_id] = memory
        for agent in self.agents:
            agent.exit_status = await stop_process(agent.process)
        deadline = time.monotonic() + 5
        while not all(agent.offline for agent in self.agents):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        return extra

    def _rows(self, extra: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        rows = []
        for agent in self.agents:
            meter = agent.meter
            assert meter is not None
            window_beats = [
                t for t in agent.heartbeats if self.started_at <= t <= self.started_at + meter.wall_seconds
            ]
            rss_mb = max(meter.rss_samples) / MB
            cpu = meter.cpu_percent
            clean_exit = agent.exit_status == 0 and agent.offline
            passed = cpu <= TARGET_CPU_PERCENT and rss_mb <= TARGET_RSS_MB and clean_exit
            summary = (
                f"CPU {cpu:.2f}% of a core, RSS {rss_mb:.1f} MB, "
                f"{len(window_beats)} heartbeats in {meter.wall_seconds:.0f}s"
            )
            if not clean_exit:
                summary += f" (stop: exit {agent.exit_status}, offline said: {agent.offline})"
            rows.append(
                row(
                    FIGURE,
                    agent.setup,
                    measured=round(cpu, 3),
                    summary=summary,
                    target=TARGET,
                    passed=passed,
                    details={
                        "cpu_percent_of_one_core": round(cpu, 3),
                        "cpu_seconds": round(meter.cpu_seconds, 3),
                        "window_s": round(meter.wall_seconds, 1),
                        "rss_max_mb": round(rss_mb, 1),
                        "rss_last_mb": round(meter.rss_samples[-1] / MB, 1),
                        "rss_max_mib": round(max(meter.rss_samples) / MIB, 1),
                        "rss_samples": len(meter.rss_samples),
                        **extra.get(agent.agent_id, {}),
                        "heartbeats_in_window": len(window_beats),
                        "exit_status": agent.exit_status,
                        "said_offline": agent.offline,
                        "command": "chiffon agent desktop --id …"
                        + (f" --heartbeat-interval {agent.interval:g}" if agent.interval else ""),
                        "notes": [
                            "CPU: the process's user+system time over the window / the window's wall time; "
                            "RSS: the largest of the samples taken every second",
                        ],
                    },
                )
            )
        return rows

    async def _cleanup(self) -> None:
        for agent in self.agents:
            if agent.process is not None and agent.process.poll() is None:
                await stop_process(agent.process, within=5)
        if self.bus is not None:
            with contextlib.suppress(Exception):
                await self.bus.close()
        names = [self.prefix + queue for queue in (HEARTBEATS_QUEUE, RESULTS_QUEUE, DEAD_LETTER_QUEUE)]
        await delete_named_queues(names, self.prefix)
        if self._lease is not None:
            await self._lease.__aexit__(None, None, None)
        shutil.rmtree(self.tmp, ignore_errors=True)
