"""1,000 simulated agents heartbeating every 10 s: the controller's CPU, and whether it keeps up.

A real ``chiffon controller`` process (the console script: leader election,
then ``Controller.lead``, whose heartbeat consumer stores into the database)
runs against RabbitMQ under a queue prefix of this run's own, with
PostgreSQL (a database of its own, ``chiffon_bench_<hex>``, dropped
afterwards) or a SQLite file, an empty local intents repo and a state
directory in a temp dir. The bench process plays the agents: 1,000 agent
ids, each heartbeating every 10 s, spread evenly — one ``Heartbeat`` every
10 ms, 100 per second, on ``chiffon.heartbeats`` — for the window. Each
carries a capacity that moves from beat to beat (CPU load, free memory, and
free VRAM on the quarter of the agents that have a GPU), so some beats
"improve capacity" and wake the controller's capacity waiters, as real ones do.

Measured:

* **CPU** of the controller process (user + system, all threads, psutil)
  over the window, as % of one core; also over a quiet baseline before it
  (what the idle controller costs: approvals polling, liveness checks…).
* **Keeping up.** Every 0.5 s the bench reads ``agents.last_seen`` of all
  agents (a connection of its own). A heartbeat counts as *stored* at the
  first read that shows its agent's ``last_seen`` at or after its
  ``sent_at`` (the consumer stamps ``last_seen`` when it receives a beat, and
  a later beat supersedes an earlier one). *Stored lag* = that read's time -
  ``sent_at`` (an upper bound, to the read interval); *receipt lag* =
  ``last_seen`` - ``sent_at`` of the newest beat stored (bus and queue
  time). The queue's depth (ready messages, a passive declare) is sampled
  every second. After the window the bench waits up to 15 s for the last
  beats to be stored.

It keeps up when every heartbeat was stored, the stored lag's p99 is at most
:data:`MAX_LAG_P99` seconds and the queue never held more than
:data:`MAX_QUEUE` ready messages (two seconds' worth).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import shutil
import tempfile
import time
import uuid
from collections import deque
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import make_url

from bench.agent_support import (
    BIN,
    MB,
    ProcessMeter,
    QueueDepth,
    broker_shared,
    clean_environment,
    delete_named_queues,
    failed,
    log_tail,
    median,
    row,
    start_process,
    stop_process,
)
from bench.common import AMQP_URL, POSTGRES_URL, ROOT, observed, percentile
from chiffon.bus import DEAD_LETTER_QUEUE, HEARTBEATS_QUEUE, RESULTS_QUEUE, open_bus
from chiffon.gitrepo import GitRepo
from chiffon.resources.agent import AgentKind, Capacity, GpuInfo
from chiffon.resources.messages import Heartbeat, make_envelope
from chiffon.store import Store
from chiffon.store.tables import AgentRow

FIGURE = "1,000 agents' heartbeats"
AGENTS = 1000
INTERVAL = 10.0
RATE = AGENTS / INTERVAL
TARGET_CPU_PERCENT = 20.0
TARGET = f"≤{TARGET_CPU_PERCENT:g}% core, keeps up"
WINDOW, QUICK_WINDOW = 40.0, 12.0
BASELINE, QUICK_BASELINE = 5.0, 3.0
POLL = 0.5
DRAIN = 15.0
MAX_LAG_P99 = 3.0
MAX_QUEUE = int(2 * RATE)
START_TIMEOUT = 90.0
DATABASES = {"postgres": "PostgreSQL", "sqlite": "SQLite"}


class Fleet:
    """The simulated agents: who beats next, with what capacity, and what was sent when."""

    def __init__(self, tag: str, seed: int = 7) -> None:
        self.ids = [f"bench-agent-{tag}-{index:04d}" for index in range(AGENTS)]
        self.random = random.Random(seed)
        self.gpu = [index % 4 == 0 for index in range(AGENTS)]
        self.pending: dict[str, deque[datetime]] = {agent: deque() for agent in self.ids}
        self.sent = 0

    def heartbeat(self, index: int) -> Heartbeat:
        draw = self.random
        gpus = []
        if self.gpu[index]:
            gpus = [
                GpuInfo(
                    index=0, name="RTX 4090", memory_total_mib=24564, memory_free_mib=draw.randrange(0, 24564)
                )
            ]
        capacity = Capacity(
            cpu_load_percent=round(draw.uniform(0, 60), 1),
            cpu_cores=16,
            memory_total_mib=65536,
            memory_available_mib=draw.randrange(8192, 49152),
            gpus=gpus,
        )
        return Heartbeat(
            agent_id=self.ids[index],
            kind=AgentKind.DESKTOP,
            labels={"role": "desktop", "gpu": "true" if gpus else "false"},
            capacity=capacity,
            interval_seconds=INTERVAL,
            version="bench",
        )


class LagMeter:
    """From reads of ``agents.last_seen``: when each heartbeat was first seen stored."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.stored_lag: list[float] = []
        self.receipt_lag: list[float] = []
        self.reads = 0
        self.read_seconds: list[float] = []

    async def read(self, store: Store) -> None:
        started = time.monotonic()
        async with store.engine.connect() as connection:
            rows = (await connection.execute(select(AgentRow.id, AgentRow.last_seen))).all()
        now = time.time()
        self.read_seconds.append(time.monotonic() - started)
        self.reads += 1
        for agent_id, last_seen in rows:
            pending = self.fleet.pending.get(agent_id)
            if not pending or last_seen is None:
                continue
            newest: datetime | None = None
            while pending and pending[0] <= last_seen:
                sent_at = pending.popleft()
                self.stored_lag.append(now - sent_at.timestamp())
                newest = sent_at
            if newest is not None:
                self.receipt_lag.append((last_seen - newest).total_seconds())

    def unstored(self) -> int:
        return sum(len(pending) for pending in self.fleet.pending.values())


async def create_database(name: str) -> str:
    """``CREATE DATABASE name`` on the bench's PostgreSQL server; its URL."""
    import asyncpg

    url = make_url(POSTGRES_URL)
    connection = await asyncpg.connect(
        host=url.host, port=url.port or 5432, user=url.username, password=url.password, database=url.database
    )
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return url.set(database=name).render_as_string(hide_password=False)


async def drop_database(name: str) -> None:
    import asyncpg

    url = make_url(POSTGRES_URL)
    connection = await asyncpg.connect(
        host=url.host, port=url.port or 5432, user=url.username, password=url.password, database=url.database
    )
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


async def measure(database: str, *, quick: bool, window: float | None = None) -> dict[str, Any]:
    setup = DATABASES[database]
    try:
        async with broker_shared():
            return await _measure(database, quick=quick, window=window)
    except Exception as exc:
        return failed(FIGURE, setup, TARGET, f"{type(exc).__name__}: {exc}")


async def _measure(database: str, *, quick: bool, window: float | None) -> dict[str, Any]:
    setup = DATABASES[database]
    window = window or (QUICK_WINDOW if quick else WINDOW)
    baseline = QUICK_BASELINE if quick else BASELINE
    tag = uuid.uuid4().hex[:8]
    prefix = f"chiffon-bench-{tag}."
    tmp = Path(tempfile.mkdtemp(prefix=f"chiffon-bench-{tag}-"))
    db_name = f"chiffon_bench_{tag}"
    created_db = False
    controller = None
    store: Store | None = None
    bus = open_bus(AMQP_URL, prefix=prefix)
    depth = QueueDepth(AMQP_URL, prefix + HEARTBEATS_QUEUE)
    log = tmp / "controller.log"
    try:
        if database == "postgres":
            url = await create_database(db_name)
            created_db = True
        else:
            (tmp / "state").mkdir()
            url = f"sqlite+aiosqlite:///{tmp / 'state' / 'chiffon.db'}"
        intents = await GitRepo.init(tmp / "intents", initial_files={"README.md": b"# bench intents\n"})
        env = clean_environment(
            CHIFFON_HOME=str(tmp / "home"),
            CHIFFON_DATABASE_URL=url,
            CHIFFON_BROKER_URL=AMQP_URL,
            CHIFFON_BUS_PREFIX=prefix,
            CHIFFON_INTENTS_REPO=str(intents.path),
            CHIFFON_INFRA_REPO=str(ROOT / "examples" / "homelab-infra"),
        )
        controller = start_process([str(BIN / "chiffon"), "controller"], env, log)
        await bus.connect()
        await _wait_until_consuming(controller, log, prefix)
        store = Store.from_url(url)
        fleet = Fleet(tag)
        lag = LagMeter(fleet)
        meter = ProcessMeter(controller.pid)

        meter.start()
        await asyncio.sleep(baseline)
        meter.stop()
        baseline_cpu = meter.cpu_percent

        with observed() as seen:
            meter.start()
            behind = await _publish(bus, fleet, lag, store, depth, meter, window)
            meter.stop()
            drain_started = time.monotonic()
            drain_meter = ProcessMeter(controller.pid)
            drain_meter.start()
            while lag.unstored() and time.monotonic() - drain_started < DRAIN:
                await asyncio.sleep(POLL)
                await lag.read(store)
                await depth.sample()
            drain_meter.stop()
            drained_s = time.monotonic() - drain_started

        cpu = meter.cpu_percent
        unstored = lag.unstored()
        lag_p50 = percentile(lag.stored_lag, 50)
        lag_p99 = percentile(lag.stored_lag, 99)
        depths = [count for _, count in depth.samples]
        max_depth = max(depths) if depths else None
        keeps_up = (
            unstored == 0 and lag_p99 <= MAX_LAG_P99 and max_depth is not None and max_depth <= MAX_QUEUE
        )
        passed = cpu <= TARGET_CPU_PERCENT and keeps_up
        verdict = "keeps up" if keeps_up else "FALLS BEHIND"
        result = row(
            FIGURE,
            setup,
            measured=round(cpu, 2),
            summary=(
                f"CPU {cpu:.1f}% of a core (idle {baseline_cpu:.1f}%), {verdict}: lag p50 {lag_p50:.2f}s "
                f"p99 {lag_p99:.2f}s, queue ≤{max_depth}"
            ),
            target=TARGET,
            passed=passed,
            details={
                "agents": AGENTS,
                "interval_s": INTERVAL,
                "rate_per_s": RATE,
                "window_s": round(meter.wall_seconds, 1),
                "heartbeats_sent": fleet.sent,
                "publisher_behind_schedule_max_s": round(behind, 3),
                "controller_cpu_percent": round(cpu, 2),
                "controller_cpu_seconds": round(meter.cpu_seconds, 2),
                "controller_idle_cpu_percent_before": round(baseline_cpu, 2),
                "controller_cpu_percent_while_draining": round(drain_meter.cpu_percent, 2),
                "controller_rss_max_mb": round(max(meter.rss_samples) / MB, 1),
                "stored_lag_s": {
                    "p50": round(lag_p50, 3),
                    "p95": round(percentile(lag.stored_lag, 95), 3),
                    "p99": round(lag_p99, 3),
                    "max": round(max(lag.stored_lag, default=math.nan), 3),
                    "resolution_s": POLL,
                },
                "receipt_lag_s": {
                    "p50": round(percentile(lag.receipt_lag, 50), 3),
                    "p99": round(percentile(lag.receipt_lag, 99), 3),
                    "max": round(max(lag.receipt_lag, default=math.nan), 3),
                },
                "unstored_after_drain": unstored,
                "drain_s": round(drained_s, 2),
                "queue_depth": {
                    "max": max_depth,
                    "median": median(depths) if depths else None,
                    "last": depths[-1] if depths else None,
                    "samples": len(depths),
                    "limit": MAX_QUEUE,
                },
                "db_reads": lag.reads,
                "db_read_median_ms": round(1000 * median(lag.read_seconds), 1) if lag.read_seconds else None,
                "keeps_up": keeps_up,
                "notes": [
                    "CPU: the chiffon controller process's user+system time over the publishing window / "
                    "its wall time; the baseline is the same process idle just before",
                ],
            },
        )
        return seen.annotate(result)
    finally:
        await depth.close()
        if controller is not None:
            status = await stop_process(controller)
            if status not in (0, None):
                print(f"bench: the controller exited with status {status}:\n{log_tail(log)}")
        with contextlib.suppress(Exception):
            await bus.close()
        if store is not None:
            await store.close()
        names = [prefix + queue for queue in (HEARTBEATS_QUEUE, RESULTS_QUEUE, DEAD_LETTER_QUEUE)]
        await delete_named_queues(names, prefix)
        if created_db:
            try:
                await drop_database(db_name)
            except Exception as exc:
                print(f"bench: could not drop database {db_name}: {exc}")
        shutil.rmtree(tmp, ignore_errors=True)


async def _wait_until_consuming(controller: Any, log: Path, prefix: str) -> None:
    """Until the controller leads: its heartbeat consumer is on the queue."""
    import aio_pika

    deadline = time.monotonic() + START_TIMEOUT
    connection = await aio_pika.connect(AMQP_URL, timeout=10)
    try:
        while True:
            if controller.poll() is not None:
                raise RuntimeError(
                    f"chiffon controller exited with status {controller.returncode}: {log_tail(log)}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"chiffon controller did not lead within {START_TIMEOUT:g}s: {log_tail(log)}"
                )
            channel = await connection.channel()
            try:
                queue = await channel.declare_queue(prefix + HEARTBEATS_QUEUE, passive=True)
                if (queue.declaration_result.consumer_count or 0) > 0:
                    return
            except Exception:  # not declared yet: the channel is closed by the broker
                pass
            finally:
                with contextlib.suppress(Exception):
                    await channel.close()
            await asyncio.sleep(0.2)
    finally:
        await connection.close()


async def _publish(
    bus: Any, fleet: Fleet, lag: LagMeter, store: Store, depth: QueueDepth, meter: ProcessMeter, window: float
) -> float:
    """Heartbeats at RATE for ``window`` seconds, evenly spaced; reads and samples in between.

    Returns how far (seconds) the publisher ever fell behind its schedule.
    """
    loop = asyncio.get_running_loop()
    start = loop.time()
    total = int(window * RATE)
    behind = 0.0
    next_read = start + POLL
    next_sample = start + 1.0
    for beat in range(total):
        due = start + beat / RATE
        now = loop.time()
        if due > now:
            await asyncio.sleep(due - now)
        else:
            behind = max(behind, now - due)
        index = beat % AGENTS
        envelope = make_envelope(fleet.heartbeat(index))
        fleet.pending[fleet.ids[index]].append(envelope.sent_at)
        await bus.publish(HEARTBEATS_QUEUE, envelope)
        fleet.sent += 1
        now = loop.time()
        if now >= next_read:
            next_read = now + POLL
            await lag.read(store)
        if now >= next_sample:
            next_sample = now + 1.0
            await depth.sample()
            meter.sample()
    return behind
