"""Helpers for the bus tests: isolated buses on a shared broker, sample messages, waiting.

RabbitMQ is the real server at ``$CHIFFON_TEST_AMQP_URL`` (default
``amqp://guest:guest@127.0.0.1:5672/``), shared with other people's tests, so:

* every test uses its own queue prefix, ``chiffon-test-<session>-<test>.``;
* every queue a test's buses declared is deleted when the test ends, and a
  sweep at the end of the session deletes any queue still carrying this
  session's prefix (a crashed test); nobody else's queue is ever touched;
* an unreachable broker makes the RabbitMQ tests fail with the reason; they
  are skipped only when ``CHIFFON_TEST_SKIP_RABBITMQ=1`` says so;
* a test that restarts the broker runs alone: see :func:`share_broker`.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from chiffon.bus import Bus, BusError, Delivery, open_bus
from chiffon.resources.agent import AgentKind, Capacity, GpuInfo
from chiffon.resources.messages import (
    AgentOffline,
    AnsibleEvent,
    CancelRun,
    Envelope,
    ErrorPayload,
    Heartbeat,
    Payload,
    RunAccepted,
    RunEvent,
    RunRequest,
    RunResult,
    make_envelope,
)
from chiffon.resources.run import HostStats, ResourceUsage, run_id

AMQP_URL_ENV = "CHIFFON_TEST_AMQP_URL"
SKIP_RABBITMQ_ENV = "CHIFFON_TEST_SKIP_RABBITMQ"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
SESSION_PREFIX = f"chiffon-test-{uuid.uuid4().hex[:6]}-"

# Prefixes whose queues live on RabbitMQ; the session sweep runs only if any did.
RABBITMQ_PREFIXES: list[str] = []

# Long enough for a message on its way over localhost AMQP to have arrived.
QUIET = 0.4


def amqp_url() -> str:
    if os.environ.get(SKIP_RABBITMQ_ENV) == "1":
        pytest.skip(f"{SKIP_RABBITMQ_ENV}=1: RabbitMQ tests skipped on request")
    return os.environ.get(AMQP_URL_ENV) or DEFAULT_AMQP_URL


def unique_prefix() -> str:
    return f"{SESSION_PREFIX}{uuid.uuid4().hex[:6]}."


_GATE = Path(tempfile.gettempdir()) / "chiffon-test-rabbitmq.gate"
_IN_USE = Path(tempfile.gettempdir()) / "chiffon-test-rabbitmq.lock"
LOCK_PATIENCE = 240.0


async def _flock(path: Path, mode: int) -> int:
    """A file descriptor holding ``mode`` on ``path``; polled, so waiting stays cancellable."""
    descriptor = os.open(path, os.O_CREAT | os.O_RDWR, 0o666)
    deadline = time.monotonic() + LOCK_PATIENCE
    try:
        while True:
            try:
                fcntl.flock(descriptor, mode | fcntl.LOCK_NB)
                return descriptor
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"waited {LOCK_PATIENCE:g} s for {path}: is a broker restart stuck?")
                await asyncio.sleep(0.01)
    except BaseException:
        os.close(descriptor)
        raise


async def share_broker() -> int:
    """Held (a descriptor) while a test uses RabbitMQ, by every test run on this machine.

    A test that restarts the broker takes it exclusively through
    :func:`broker_alone`, so it waits for running tests to finish and tests wait
    for the restart, instead of failing on each other. The gate gives the restart
    priority: new tests queue behind it rather than starving it.
    """
    gate = await _flock(_GATE, fcntl.LOCK_SH)
    try:
        return await _flock(_IN_USE, fcntl.LOCK_SH)
    finally:
        os.close(gate)


@asynccontextmanager
async def broker_alone() -> AsyncIterator[None]:
    """No other test (of any run on this machine) uses RabbitMQ inside this block."""
    gate = await _flock(_GATE, fcntl.LOCK_EX)
    try:
        in_use = await _flock(_IN_USE, fcntl.LOCK_EX)
        try:
            yield
        finally:
            os.close(in_use)
    finally:
        os.close(gate)


class BusFactory:
    """Opens connected buses of one kind that share a test's prefix, and cleans up after them.

    On RabbitMQ it holds :func:`share_broker` from the first ``open()`` to the
    end of ``cleanup()``; pass ``share_broker=False`` only inside :func:`broker_alone`.
    """

    def __init__(self, kind: str, prefix: str, *, share_broker: bool = True) -> None:
        self.kind = kind
        self.prefix = prefix
        self.url = amqp_url() if kind == "amqp" else None
        self.opened: list[Bus] = []
        self._share = share_broker and self.url is not None
        self._lease: int | None = None
        if self.url is not None:
            RABBITMQ_PREFIXES.append(prefix)

    async def open(self, *, prefix: str | None = None) -> Bus:
        """A connected bus; ``prefix`` (default: the test's) must start with the test's prefix."""
        chosen = self.prefix if prefix is None else prefix
        assert chosen.startswith(self.prefix), "tests may only use queues under their own prefix"
        if self._share and self._lease is None:
            self._lease = await share_broker()
        bus = open_bus(self.url, prefix=chosen)
        self.opened.append(bus)
        try:
            await (connect_patiently(bus) if self.url is not None else bus.connect())
        except BusError as exc:
            pytest.fail(
                f"RabbitMQ is required for this test and is not usable: {exc}. Start it, point "
                f"{AMQP_URL_ENV} at it, or set {SKIP_RABBITMQ_ENV}=1 to skip.",
                pytrace=False,
            )
        return bus

    async def cleanup(self) -> None:
        """Close every bus, then delete every queue they declared (and nothing else)."""
        try:
            await self._cleanup()
        finally:
            if self._lease is not None:
                os.close(self._lease)
                self._lease = None

    async def _cleanup(self) -> None:
        names: set[str] = set()
        for bus in self.opened:
            names |= bus._declared  # type: ignore[attr-defined]
            await bus.close()
        if not names:
            return
        cleaner = open_bus(self.url, prefix=self.prefix)
        await (connect_patiently(cleaner) if self.url is not None else cleaner.connect())
        try:
            for name in sorted(names):
                assert name.startswith(SESSION_PREFIX)
                await cleaner._delete_queue(name)  # type: ignore[attr-defined]
        finally:
            await cleaner.close()


# Whether RabbitMQ answered earlier in this session: then a refused connection
# is most likely a restart in progress (another test's, or a person's) and worth
# waiting for; a broker that never answered fails every test at once instead.
_BROKER_ANSWERED: list[bool] = []
RESTART_PATIENCE = 60.0


async def connect_patiently(bus: Bus) -> None:
    """Connect a RabbitMQ bus, waiting out a restart if the broker answered before."""
    deadline = time.monotonic() + RESTART_PATIENCE
    while True:
        try:
            await bus.connect()
        except BusError:
            if not _BROKER_ANSWERED or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)
            continue
        _BROKER_ANSWERED.append(True)
        return


def sweep_leftover_queues() -> None:
    """Delete queues of this session that a crashed test left behind (best effort)."""
    rabbitmqctl = shutil.which("rabbitmqctl")
    if rabbitmqctl is None or not RABBITMQ_PREFIXES:
        return
    listed = subprocess.run(
        [rabbitmqctl, "list_queues", "--quiet", "--no-table-headers", "name"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    for name in listed.stdout.split():
        if name.startswith(SESSION_PREFIX):
            subprocess.run([rabbitmqctl, "delete_queue", name], capture_output=True, timeout=60, check=False)


async def eventually(condition: Callable[[], bool], *, within: float = 10.0, what: str = "condition") -> None:
    """Wait until ``condition()`` is true; fail the test after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within:g} s waiting for {what}")
        await asyncio.sleep(0.01)


class Recorder:
    """A handler that records deliveries; acks them unless ``ack=False`` (a hand-over)."""

    def __init__(self, *, ack: bool = True) -> None:
        self.ack = ack
        self.deliveries: list[Delivery] = []

    async def __call__(self, delivery: Delivery) -> None:
        self.deliveries.append(delivery)
        if self.ack:
            await delivery.ack()

    @property
    def ids(self) -> list[str]:
        return [delivery.envelope.message_id for delivery in self.deliveries]

    async def wait_for(self, count: int, *, within: float = 10.0) -> None:
        await eventually(lambda: len(self.deliveries) >= count, within=within, what=f"{count} deliveries")


RUN_ID = run_id("uptime-kuma", 3, "sha256:0f3c", "deploy")


def sample_payloads() -> list[Payload]:
    """One realistic payload of every message type."""
    capacity = Capacity(
        cpu_load_percent=12.5,
        cpu_cores=16,
        memory_total_mib=65536,
        memory_available_mib=30000,
        gpus=[GpuInfo(index=0, name="RTX 4090", memory_total_mib=24564, memory_free_mib=20000)],
    )
    return [
        RunRequest(
            run_id=RUN_ID,
            intent="uptime-kuma",
            generation=3,
            plan_digest="sha256:0f3c",
            step="deploy",
            epoch=2,
            playbook="ansible/playbooks/kuma-deployment.yml",
            limit="unraid",
            extra_vars={"kuma_port": 3001, "portals": [{"name": "nas"}]},
            agent_id="infra-1",
            deadline=datetime.now(UTC) + timedelta(minutes=10),
        ),
        RunAccepted(run_id=RUN_ID, agent_id="infra-1"),
        RunEvent(
            run_id=RUN_ID,
            agent_id="infra-1",
            events=[AnsibleEvent(seq=1, event="runner_on_ok", task="Start", host="unraid", status="changed")],
        ),
        RunResult(
            run_id=RUN_ID,
            agent_id="infra-1",
            status="successful",
            rc=0,
            stats={"unraid": HostStats(ok=5, changed=1)},
            duration_seconds=42.5,
            usage=ResourceUsage(cpu_seconds=3.5, peak_memory_mib=180.0),
        ),
        CancelRun(run_id=RUN_ID, reason="superseded by generation 4"),
        Heartbeat(agent_id="desk-1", kind=AgentKind.DESKTOP, labels={"gpu": "nvidia"}, capacity=capacity),
        AgentOffline(agent_id="desk-1"),
        ErrorPayload(code="StaleEpoch", message="epoch 1 is older than 2", related_message_id=RUN_ID),
    ]


def numbered(count: int) -> list[Envelope]:
    """``count`` small distinct envelopes, message ids ``m000``, ``m001``, …"""
    return [
        make_envelope(CancelRun(run_id=f"run-{index}"), message_id=f"m{index:03d}") for index in range(count)
    ]
