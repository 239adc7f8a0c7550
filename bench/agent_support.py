"""What the agent benchmarks (``bench.agents``) share: rows, the table, the broker, process meters.

A row is the same dictionary the reconcile benchmarks write (``figure``,
``setup``, ``measured``, ``summary``, ``target``, ``pass``, ``details``), so
:func:`bench.common.exit_status` reads both; ``measured`` is None when a
figure could not be measured, and ``disturbed`` is True when the shared
RabbitMQ went away while it was measured (another suite restarting it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench.common import AMQP_URL, ROOT, percentile
from chiffon.bus import Bus, open_bus

BIN = Path(sys.executable).parent
MB = 1_000_000  # targets in MB are 10^6 bytes, as in bench.resync
MIB = 1024 * 1024


# Rows and the table ----------------------------------------------------------------------------


def row(
    figure: str,
    setup: str,
    *,
    measured: float | None,
    summary: str,
    target: str,
    passed: bool,
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "figure": figure,
        "setup": setup,
        "measured": measured,
        "summary": summary,
        "target": target,
        "pass": passed,
        "disturbed": False,
        "details": details or {},
    }


def failed(figure: str, setup: str, target: str, why: str) -> dict[str, Any]:
    return row(figure, setup, measured=None, summary=f"FAILED: {why}", target=target, passed=False)


def verdict(result: dict[str, Any]) -> str:
    if result["measured"] is None:
        return "FAILED"
    return "PASS" if result["pass"] else "MISSED"


HEADER = f"│ {'figure':<24} {'setup':<24} {'measured':<72} {'target':<24} result"


def format_row(result: dict[str, Any]) -> str:
    # bench.common.Observation.annotate has already appended DISTURBED to a disturbed row's summary.
    return (
        f"│ {result['figure']:<24} {result['setup']:<24} {result['summary']:<72} {result['target']:<24} "
        f"{verdict(result)}"
    )


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


def rounded(values: Iterable[float], digits: int = 3) -> list[float]:
    return [round(value, digits) for value in values]


# RabbitMQ ----------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def broker_shared() -> AsyncIterator[None]:
    """Hold the machine-wide shared lock on RabbitMQ that the test suites hold while they use it.

    A suite that restarts the broker (tests/chaos, test_amqp_reconnect) takes
    it exclusively, so it waits for this benchmark and this benchmark waits
    for the restart, instead of measuring across one.
    """
    from tests.contract.support import share_broker

    lease = await share_broker()
    try:
        yield
    finally:
        os.close(lease)


async def delete_queues(buses: Sequence[Bus], prefix: str, url: str | None = AMQP_URL) -> None:
    """Close ``buses``, then delete exactly the queues they declared (all under ``prefix``)."""
    declared: set[str] = set()
    for bus in buses:
        declared |= set(getattr(bus, "_declared", set()))
        with contextlib.suppress(Exception):
            await bus.close()
    await delete_named_queues(declared, prefix, url)


async def delete_named_queues(names: Iterable[str], prefix: str, url: str | None = AMQP_URL) -> None:
    names = sorted(set(names))
    if not names:
        return
    cleaner = open_bus(url, prefix=prefix)
    try:
        await cleaner.connect()
        for name in names:
            assert name.startswith(prefix), name
            await cleaner._delete_queue(name)  # type: ignore[attr-defined]
    except Exception as exc:
        print(f"bench: could not delete queues {names}: {exc}", file=sys.stderr)
    finally:
        with contextlib.suppress(Exception):
            await cleaner.close()


async def queue_depth(url: str, queue: str) -> int | None:
    """Messages ready on ``queue`` (a passive declare); None if it cannot be read."""
    import aio_pika

    try:
        connection = await aio_pika.connect(url, timeout=5)
    except Exception:
        return None
    try:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        count = declared.declaration_result.message_count
        return int(count) if count is not None else None
    except Exception:
        return None
    finally:
        await connection.close()


class QueueDepth:
    """Samples one queue's depth over one connection (cheap enough to do every second)."""

    def __init__(self, url: str, queue: str) -> None:
        self.url = url
        self.queue = queue
        self.samples: list[tuple[float, int]] = []
        self._connection: Any = None
        self._channel: Any = None

    async def sample(self) -> int | None:
        import aio_pika

        try:
            if self._connection is None:
                self._connection = await aio_pika.connect(self.url, timeout=5)
                self._channel = await self._connection.channel()
            declared = await self._channel.declare_queue(self.queue, passive=True)
            count = int(declared.declaration_result.message_count or 0)
        except Exception:
            await self.close()
            return None
        self.samples.append((time.monotonic(), count))
        return count

    async def close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close()


# Processes --------------------------------------------------------------------------------------


@dataclass
class ProcessMeter:
    """CPU time (user + system, all threads) and RSS of one process over a window."""

    pid: int
    process: psutil.Process = field(init=False)
    cpu_start: float = 0.0
    wall_start: float = 0.0
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    rss_samples: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.process = psutil.Process(self.pid)

    def _cpu(self) -> float:
        times = self.process.cpu_times()
        return float(times.user + times.system)

    def start(self) -> None:
        self.cpu_start = self._cpu()
        self.wall_start = time.monotonic()
        self.rss_samples.clear()
        self.sample()

    def sample(self) -> int:
        rss = int(self.process.memory_info().rss)
        self.rss_samples.append(rss)
        return rss

    def stop(self) -> None:
        self.sample()
        self.cpu_seconds = self._cpu() - self.cpu_start
        self.wall_seconds = time.monotonic() - self.wall_start

    @property
    def cpu_percent(self) -> float:
        """CPU time over wall time, in % of one core."""
        return 100.0 * self.cpu_seconds / self.wall_seconds if self.wall_seconds > 0 else float("nan")

    def status_kib(self, name: str) -> int | None:
        """A ``kB`` field of /proc/<pid>/status (VmHWM: the peak RSS since start)."""
        with contextlib.suppress(OSError), open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith(name + ":"):
                    return int(line.split()[1])
        return None


def clean_environment(**overrides: str) -> dict[str, str]:
    """This environment without any CHIFFON_* setting, plus ``overrides``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("CHIFFON_")}
    env.update(overrides)
    return env


def start_process(command: Sequence[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """A child in a session of its own (Ctrl-C on the bench reaches only the bench), output to ``log``."""
    with log.open("wb") as output:
        return subprocess.Popen(
            list(command), cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )


async def stop_process(child: subprocess.Popen[bytes], *, within: float = 30.0) -> int | None:
    """SIGTERM, wait up to ``within`` seconds, then SIGKILL; the exit status (None if killed)."""
    if child.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + within
    while child.poll() is None:
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    if child.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        return None
    return child.returncode


def log_tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
