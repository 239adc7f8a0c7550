"""What every reconcile benchmark shares: setups, the timed agent, the controller harness, results.

* **Setups.** ``embedded`` is a SQLite file in a temp dir and the in-process
  bus; ``distributed`` is PostgreSQL (a schema of its own, ``chiffon_bench_<hex>``)
  and RabbitMQ (a queue prefix of its own, ``chiffon-bench-<hex>.``). Both are
  torn down in ``finally`` blocks: the schema is dropped, exactly the queues
  this run declared are deleted, the temp dir is removed — on success,
  failure, Ctrl-C (asyncio cancels the main task) and SIGTERM alike.
* **The agent** is ``tests.agentsim.RecordingAgent`` (the protocol-speaking
  stand-in), subclassed only to note when each RunRequest arrived.
* **The controller** runs in process with ``Controller(...).lead(epoch, lost)``,
  which is what ``chiffon up`` / ``chiffon controller`` run once they lead; the
  intents repo is a local git repo in the temp dir, so commits reach it through
  the watch loop (watchfiles), as they do for a person committing locally.
* **Isolation.** With ``--setup both`` a figure runs each setup in a child
  process of its own (a clean heap for RSS, a fresh event loop); the child is
  started in its own session and the parent forwards one interrupt to it and
  waits while it cleans up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import platform
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # for `tests.agentsim` when bench was found through PYTHONPATH
    sys.path.insert(0, str(ROOT))

from bench.remote_agent import BenchAgent, RemoteAgent  # noqa: E402
from chiffon.bus import Bus, open_bus  # noqa: E402
from chiffon.controllers.controller import Controller  # noqa: E402
from chiffon.controllers.planner import Planner  # noqa: E402
from chiffon.controllers.source import GitSource, SourceConfig  # noqa: E402
from chiffon.gitrepo import GitRepo, Identity  # noqa: E402
from chiffon.resources.messages import RunRequest  # noqa: E402
from chiffon.store import Store  # noqa: E402
from chiffon.store.testing import create_schema, drop_schema  # noqa: E402

log = logging.getLogger("bench")

SETUPS = ("embedded", "distributed")
POSTGRES_URL = (
    os.environ.get("CHIFFON_BENCH_POSTGRES_URL")
    or os.environ.get("CHIFFON_TEST_POSTGRES_URL")
    or "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
AMQP_URL = (
    os.environ.get("CHIFFON_BENCH_AMQP_URL")
    or os.environ.get("CHIFFON_TEST_AMQP_URL")
    or "amqp://guest:guest@127.0.0.1:5672/"
)
BENCH_AUTHOR = Identity("Chiffon Bench", "bench@example.invalid")
PLAYBOOK = "ansible/playbooks/kuma-deployment.yml"
HEARTBEAT_SECONDS = 15.0
WARMUP_NUDGE_SECONDS = 15.0
RESULTS_DIR = ROOT / "bench" / "results"


# Intents -------------------------------------------------------------------------------------


def intent_name(index: int) -> str:
    return f"bench-{index:05d}"


def intent_yaml(name: str) -> bytes:
    """An Auto-approved intent with one step, limited to localhost."""
    return (
        "apiVersion: chiffon.dev/v1alpha1\n"
        "kind: DeploymentIntent\n"
        f"metadata:\n  name: {name}\n"
        "spec:\n"
        f"  steps:\n    - name: deploy\n      playbook: {PLAYBOOK}\n"
        "  limit: localhost\n"
        "  approval: Auto\n"
    ).encode()


def intent_files(names: Sequence[str]) -> dict[str, bytes]:
    return {f"{name}.yaml": intent_yaml(name) for name in names}


# Numbers and the machine -----------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100), as numpy's default does."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def proc_status_kib(field_name: str) -> int:
    """A ``kB`` field of /proc/self/status (VmRSS, VmHWM), in KiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    # Not Linux: ru_maxrss is the peak (KiB on Linux, bytes on macOS).
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


class GcPauses:
    """The cyclic garbage collector's pauses during a block, by generation (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.seconds: dict[int, float] = {}
        self.count: Counter[int] = Counter()
        self._started = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            generation = info["generation"]
            self.seconds[generation] = self.seconds.get(generation, 0.0) + time.perf_counter() - self._started
            self.count[info["generation"]] += 1

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *_: object) -> None:
        gc.callbacks.remove(self._callback)

    def summary(self) -> dict[str, Any]:
        return {
            "total_s": round(sum(self.seconds.values()), 3),
            "by_generation": {
                str(g): {"collections": self.count[g], "seconds": round(self.seconds[g], 3)}
                for g in sorted(self.count)
            },
        }


class RssSampler:
    """Samples VmRSS in a thread while a block runs: the peak *during* it, not the process's lifetime."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, proc_status_kib("VmRSS"))
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self.peak_kib = proc_status_kib("VmRSS")
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kib = max(self.peak_kib, proc_status_kib("VmRSS"))


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def machine() -> dict[str, Any]:
    """What the figures were measured on; the load average says whether the machine was shared."""
    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    git = subprocess.run(["git", "--version"], capture_output=True, text=True, check=False).stdout.strip()
    head = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "nproc": usable,
        "cpu_model": model,
        "ram_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "git": git.removeprefix("git version "),
        "load_average_1_5_15": load_average(),
        "chiffon_revision": head or "unknown",
    }


def describe_machine(info: dict[str, Any]) -> str:
    load = "/".join(f"{x:g}" for x in info.get("load_average_1_5_15", []))
    return (
        f"{info['nproc']} CPU x {info['cpu_model']}, {info['ram_gib']} GiB RAM, "
        f"Linux {info['kernel']}, Python {info['python']}, SQLite {info['sqlite']}, git {info['git']}, "
        f"Chiffon {info.get('chiffon_revision', '?')}" + (f"; load avg {load} at start" if load else "")
    )


# Setups --------------------------------------------------------------------------------------


@dataclass
class Setup:
    """A store and buses that nobody else uses, and a temp dir; all removed by :func:`open_setup`."""

    name: str
    store: Store
    tmp: Path
    prefix: str
    schema: str | None = None
    server: str = ""
    buses: list[Bus] = field(default_factory=list)

    async def bus(self) -> Bus:
        """A connected bus of this setup (a separate connection on RabbitMQ, as a separate process has)."""
        bus = open_bus(AMQP_URL if self.name == "distributed" else None, prefix=self.prefix)
        self.buses.append(bus)
        await bus.connect()
        return bus

    def describe(self) -> str:
        if self.name == "embedded":
            return "SQLite file" + (" + in-process bus" if self.buses else "")
        bus = f" + RabbitMQ (prefix {self.prefix})" if self.buses else ""
        return f"PostgreSQL {self.server} (schema {self.schema}){bus}"


@contextlib.asynccontextmanager
async def open_setup(name: str, *, with_bus: bool = True) -> AsyncIterator[Setup]:
    tag = uuid.uuid4().hex[:8]
    tmp = Path(tempfile.mkdtemp(prefix=f"chiffon-bench-{tag}-"))
    schema: str | None = None
    store: Store | None = None
    setup: Setup | None = None
    try:
        if name == "embedded":
            store = Store.from_url(f"sqlite+aiosqlite:///{tmp / 'state' / 'chiffon.db'}")
        elif name == "distributed":
            schema = f"chiffon_bench_{tag}"
            await create_schema(POSTGRES_URL, schema)
            store = Store.from_url(POSTGRES_URL, schema=schema)
        else:
            raise ValueError(f"unknown setup {name!r}; choose from {', '.join(SETUPS)}")
        await store.migrate()
        setup = Setup(name, store, tmp, prefix=f"chiffon-bench-{tag}.", schema=schema)
        if name == "distributed":
            setup.server = await server_version(store)
            if with_bus:
                # Fail now, before any work, if RabbitMQ is not there.
                await setup.bus()
        log.info("setup %s: %s (temp dir %s)", name, setup.describe(), tmp)
        yield setup
    finally:
        # Shielded: a Ctrl-C during the run must still leave nothing behind.
        await asyncio.shield(_teardown(setup, store, schema, tmp))


async def _teardown(setup: Setup | None, store: Store | None, schema: str | None, tmp: Path) -> None:
    if setup is not None:
        await _delete_queues(setup)
    if store is not None:
        with _warn_on_failure("close the store"):
            await store.close()
    if schema is not None:
        with _warn_on_failure(f"drop schema {schema}"):
            await drop_schema(POSTGRES_URL, schema)
            log.info("dropped schema %s", schema)
    shutil.rmtree(tmp, ignore_errors=True)


async def _delete_queues(setup: Setup) -> None:
    """Close the setup's buses, then delete exactly the queues they declared (all under its prefix)."""
    declared: set[str] = set()
    for bus in setup.buses:
        declared |= set(getattr(bus, "_declared", set()))
        with _warn_on_failure("close a bus"):
            await bus.close()
    if not declared:
        return
    cleaner = open_bus(AMQP_URL if setup.name == "distributed" else None, prefix=setup.prefix)
    with _warn_on_failure(f"delete queues {sorted(declared)}"):
        await cleaner.connect()
        try:
            for queue in sorted(declared):
                assert queue.startswith(setup.prefix), queue
                await cleaner._delete_queue(queue)  # type: ignore[attr-defined]
            log.info("deleted %d queues under %s", len(declared), setup.prefix)
        finally:
            await cleaner.close()


@contextlib.contextmanager
def _warn_on_failure(what: str) -> Any:
    try:
        yield
    except Exception as exc:  # cleanup goes on with the next item
        print(f"bench: could not {what}: {exc}", file=sys.stderr)


async def server_version(store: Store) -> str:
    async with store.engine.connect() as connection:
        full = str((await connection.exec_driver_sql("SHOW server_version")).scalar_one())
    return full.split()[0]


# Counting what reaches the store -----------------------------------------------------------------

WRITE_PREFIXES = (
    "upsert_",
    "write_",
    "save_",
    "record_",
    "delete_",
    "dispatch_",
    "append_",
    "enqueue_",
    "mark_",
    "add_",
    "set_",
)


class StoreMeter:
    """A thin proxy of a Store: counts calls of its public methods, and the transactions it opens.

    Hand it to the code under test instead of the store. Transactions are
    counted by wrapping ``_write``/``_read`` on this one store instance (every
    public method opens its transaction through them); the product is not changed.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self.calls: Counter[str] = Counter()
        self.write_transactions = 0
        self.read_transactions = 0
        write, read = store._write, store._read

        def counted_write() -> contextlib.AbstractAsyncContextManager[Any]:
            self.write_transactions += 1
            return write()

        def counted_read() -> contextlib.AbstractAsyncContextManager[Any]:
            self.read_transactions += 1
            return read()

        store._write = counted_write  # type: ignore[method-assign]
        store._read = counted_read  # type: ignore[method-assign]

    def reset(self) -> None:
        self.calls.clear()
        self.write_transactions = self.read_transactions = 0

    def write_calls(self) -> dict[str, int]:
        return {name: n for name, n in sorted(self.calls.items()) if name.startswith(WRITE_PREFIXES)}

    def snapshot(self) -> dict[str, Any]:
        return {
            "write_transactions": self.write_transactions,
            "read_transactions": self.read_transactions,
            "calls": dict(sorted(self.calls.items())),
        }

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._store, name)
        if name.startswith("_") or not callable(attribute):
            return attribute

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return attribute(*args, **kwargs)

        return counted


# The agent -----------------------------------------------------------------------------------


@dataclass
class TimedAgent(BenchAgent):
    """The bench agent on the in-process bus, noting when the first RunRequest of each intent arrived."""

    arrivals: dict[str, float] = field(default_factory=dict)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def arrived(self, request: RunRequest) -> None:
        self.arrivals.setdefault(request.intent, time.monotonic())
        self._arrived.set()

    async def hold(self) -> None:
        self.holding = True

    async def wait_for(self, names: Sequence[str], *, within: float) -> None:
        """Until a RunRequest for every one of ``names`` has arrived; TimeoutError after ``within`` s."""
        missing = set(names)
        async with asyncio.timeout(within):
            while missing := missing - self.arrivals.keys():
                self._arrived.clear()
                await self._arrived.wait()


# The controller harness ----------------------------------------------------------------------


@dataclass
class Harness:
    setup: Setup
    repo: GitRepo
    agent: TimedAgent | RemoteAgent
    controller: Controller
    source: GitSource
    meter: StoreMeter
    warmup_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    passes: int = 0  # reconcile passes run by the controller's work queue
    _passed: asyncio.Event = field(default_factory=asyncio.Event)
    syncs: list[tuple[float, int]] = field(default_factory=list)  # (monotonic end, intents changed)

    def warmup_notes(self) -> list[str]:
        return [
            f"warm-up first, not counted: intent bench-warmup end to end ({self.warmup_seconds:.2f}s, "
            "includes the one ansible-playbook --syntax-check every intent shares: same playbook, "
            "cached by content hash), then bench-watch through the watch loop",
            *self.notes,
        ]

    def ready_count(self) -> int:
        """Intents the controller has seen Ready (it tracks them after every pass; no database read)."""
        return len(self.controller._ready)

    async def wait_ready(self, names: Sequence[str], *, within: float) -> None:
        wanted = set(names)
        async with asyncio.timeout(within):
            while not wanted <= self.controller._ready:
                self._passed.clear()
                await self._passed.wait()


@contextlib.asynccontextmanager
async def running_controller(setup: Setup, *, syntax_check: bool = True) -> AsyncIterator[Harness]:
    """A leading controller, a timed agent, an intents repo; warmed up with one intent end to end.

    The warm-up intent (``bench-warmup``) pays for the first ``ansible-playbook
    --syntax-check`` of the playbook; every benchmark intent uses the same
    playbook, so the planner's syntax-check cache (keyed by content hash)
    answers for all of them afterwards.
    """
    infra = setup.tmp / "homelab-infra"
    shutil.copytree(ROOT / "examples" / "homelab-infra", infra)
    copied = time.monotonic()
    repo = await GitRepo.init(setup.tmp / "intents")
    meter = StoreMeter(setup.store)
    store = cast(Store, meter)  # the counting proxy stands in for the Store
    source = GitSource(SourceConfig(str(repo.path), setup.tmp / "checkout"), store)
    controller = Controller(store, await setup.bus(), source, Planner(infra, syntax_check=syntax_check))
    # Distributed: the agent is another process, as it is in production (its decoding and
    # answering must not be charged to the controller). Embedded: the in-process bus.
    agent: TimedAgent | RemoteAgent = (
        RemoteAgent(AMQP_URL, setup.prefix) if setup.name == "distributed" else TimedAgent(await setup.bus())
    )
    harness = Harness(setup, repo, agent, controller, source, meter)
    _instrument(harness)
    lost = asyncio.Event()
    leading = asyncio.create_task(controller.lead(1, lost), name="controller")
    beating = asyncio.create_task(_heartbeats(agent, lost), name="heartbeats")
    try:
        await agent.start()
        await _until(lambda: _agent_known(setup.store, agent.agent_id), within=30, what="agent registered")
        # First warm-up: the controller's watch loop may still be installing its watches, so
        # ask for the sync rather than racing watchfiles (only this intent is nudged).
        started = time.monotonic()
        await repo.commit(intent_files(["bench-warmup"]), "warm-up intent", BENCH_AUTHOR)
        source.request_sync()
        await agent.wait_for(["bench-warmup"], within=120)
        harness.warmup_seconds = time.monotonic() - started
        await harness.wait_ready(["bench-warmup"], within=60)
        # Second warm-up: through the watch loop alone, as every measured commit goes.
        await repo.commit(intent_files(["bench-watch"]), "watch probe", BENCH_AUTHOR)
        try:
            await agent.wait_for(["bench-watch"], within=WARMUP_NUDGE_SECONDS)
        except TimeoutError:
            harness.notes.append(
                f"the watch loop missed the probe commit for {WARMUP_NUDGE_SECONDS:g}s; "
                "the bench asked the source to sync (request_sync)"
            )
            source.request_sync()
            await agent.wait_for(["bench-watch"], within=60)
        await harness.wait_ready(["bench-watch"], within=60)
        # The planner never caches hashes of files changed in the last two seconds.
        await asyncio.sleep(max(0.0, copied + 2.5 - time.monotonic()))
        yield harness
    finally:
        lost.set()
        with _warn_on_failure("stop the controller"):
            await asyncio.wait_for(leading, 60)
        beating.cancel()
        await asyncio.gather(beating, return_exceptions=True)
        with _warn_on_failure("stop the agent"):
            await agent.stop()


def _instrument(harness: Harness) -> None:
    """Count reconcile passes and note when syncs end: instance attributes of this run, no product change."""
    controller = harness.controller
    reconcile_batch = controller.reconcile_batch

    async def counted(keys: Sequence[str]) -> Any:
        harness.passes += len(keys)
        try:
            return await reconcile_batch(keys)
        finally:
            harness._passed.set()

    # Read by lead() when it starts the queue.
    controller.reconcile_batch = counted  # type: ignore[method-assign]

    async def on_sync(names: Sequence[str]) -> None:
        harness.syncs.append((time.monotonic(), len(names)))

    harness.source.subscribe(on_sync)


async def _heartbeats(agent: TimedAgent | RemoteAgent, stop: asyncio.Event) -> None:
    """Keep the agent online (offline after 90 s of silence) for long runs."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), HEARTBEAT_SECONDS)
        if not stop.is_set():
            with _warn_on_failure("send a heartbeat"):
                await agent.heartbeat()


async def _agent_known(store: Store, agent_id: str) -> bool:
    return any(agent.id == agent_id for agent in await store.list_agents())


async def _until(check: Callable[[], Awaitable[bool]], *, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {within:g}s waiting for {what}")
        await asyncio.sleep(0.05)


# Running a figure ------------------------------------------------------------------------------

Measure = Callable[[str, argparse.Namespace], Awaitable[Any]]  # a row, or a list of rows


def parser(description: str, *, one_figure: bool = True) -> argparse.ArgumentParser:
    parsed = argparse.ArgumentParser(description=description)
    parsed.add_argument("--quick", action="store_true", help="small counts, for a CI smoke run")
    parsed.add_argument("--setup", choices=[*SETUPS, "both"], default="both")
    parsed.add_argument("--json", type=Path, default=None, help="also write the results here")
    parsed.add_argument("-v", "--verbose", action="store_true", help="show the product's logs")
    if one_figure:
        parsed.add_argument("--count", type=int, default=None, help="override the number of intents/rounds")
        parsed.add_argument(
            "--profile", type=Path, default=None, help="cProfile the measured part into FILE (one --setup)"
        )
    return parsed


@dataclass
class Observation:
    """Warnings logged while a figure was measured, grouped by logger.

    aio-pika/aiormq warnings mean the shared broker went away (other suites
    restart RabbitMQ): the figure is flagged ``disturbed`` and should be run
    again. Chiffon's own warnings (a paused relay, a failed pass) are the
    product's behaviour under the load and are reported with the figure.
    """

    broker: int = 0
    warnings: Counter[str] = field(default_factory=Counter)
    first: dict[str, str] = field(default_factory=dict)

    def add(self, record: logging.LogRecord) -> None:
        group = f"{record.name} {record.levelname}"
        if record.name.startswith(BROKER_LOGGERS):
            self.broker += 1
        self.warnings[group] += 1
        self.first.setdefault(group, record.getMessage()[:300])

    def annotate(self, row: dict[str, Any]) -> dict[str, Any]:
        row["disturbed"] = self.broker > 0
        details = row.setdefault("details", {})
        notes = details.setdefault("notes", [])
        details["warnings_logged"] = dict(self.warnings)
        details["first_warning_of_each_kind"] = self.first
        if self.broker:
            row["summary"] += " DISTURBED"
            notes.append(
                f"the broker connection dropped during the measurement ({self.broker} aio-pika warnings; "
                "another suite probably restarted RabbitMQ): run it again"
            )
        product = {group: n for group, n in self.warnings.items() if group.startswith("chiffon")}
        if product:
            notes.append(f"the product logged warnings/errors while measured: {product}")
        return row


BROKER_LOGGERS = ("aiormq", "aio_pika")


class _LogWatch(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.observers: list[Observation] = []

    def emit(self, record: logging.LogRecord) -> None:
        for observer in self.observers:
            observer.add(record)


LOG_WATCH = _LogWatch()


@contextlib.contextmanager
def observed() -> Iterator[Observation]:
    """Collect the warnings logged during the block."""
    observation = Observation()
    LOG_WATCH.observers.append(observation)
    try:
        yield observation
    finally:
        LOG_WATCH.observers.remove(observation)


def _console_filter(record: logging.LogRecord) -> bool:
    """Without --verbose: no aio-pika reconnect chatter (counted instead), no tracebacks."""
    if record.name.startswith(BROKER_LOGGERS):
        return False
    record.exc_info = None
    record.exc_text = None
    return True


def run_figure(module: str, measure: Measure, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Run one figure on the setups asked for; print and return its rows."""
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    root = logging.getLogger()
    if not args.verbose:
        for handler in root.handlers:
            handler.addFilter(_console_filter)
    root.addHandler(LOG_WATCH)
    try:
        if args.setup == "both":
            rows = run_children(module, SETUPS, args)
        else:
            result = asyncio.run(_guarded(measure(args.setup, args)))
    except (KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C, or SIGTERM (see _guarded)
        print(f"bench: {module} ({args.setup}) interrupted; cleaned up", file=sys.stderr)
        sys.exit(130)
    if args.setup != "both":
        rows = result if isinstance(result, list) else [result]
    for row in rows:
        print(format_row(row))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2) + "\n")
    return rows


async def _guarded(work: Awaitable[Any]) -> Any:
    """SIGTERM cancels the work like Ctrl-C does, so every ``finally`` gets to clean up."""
    task = asyncio.ensure_future(work)
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await task
    finally:
        with contextlib.suppress(NotImplementedError):
            loop.remove_signal_handler(signal.SIGTERM)


def run_child(
    module: str, setup: str, args: argparse.Namespace, *, extra: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """``python -m bench.<module> --setup <setup>`` in a session of its own; return its rows."""
    return run_children(module, [setup], args, extra=extra)


def run_children(
    module: str, setups: Sequence[str], args: argparse.Namespace, *, extra: Sequence[str] = (), jobs: int = 1
) -> list[dict[str, Any]]:
    """One ``python -m bench.<module> --setup <setup>`` per setup, ``jobs`` at a time; their rows in order.

    Each child runs in a session of its own, so Ctrl-C reaches only this
    process; it forwards one SIGINT to every running child and waits while they
    clean up (a second Ctrl-C stops waiting and kills them).
    """
    with tempfile.TemporaryDirectory(prefix="chiffon-bench-out-") as scratch, sigterm_interrupts():
        pending = list(enumerate(setups))
        running: list[tuple[int, str, subprocess.Popen[bytes], Path, Path]] = []
        finished: dict[int, list[dict[str, Any]]] = {}
        try:
            while pending or running:
                while pending and len(running) < max(1, jobs):
                    index, setup = pending.pop(0)
                    out, log = Path(scratch) / f"rows-{index}.json", Path(scratch) / f"stdout-{index}.txt"
                    command = [sys.executable, "-m", f"bench.{module}", "--setup", setup, "--json", str(out)]
                    command += [*extra, *(["--quick"] if args.quick else [])]
                    count = getattr(args, "count", None)
                    command += [*(["--count", str(count)] if count is not None else [])]
                    command += [*(["--verbose"] if args.verbose else [])]
                    with log.open("wb") as stdout:
                        child = subprocess.Popen(command, cwd=ROOT, start_new_session=True, stdout=stdout)
                    running.append((index, setup, child, out, log))
                index, setup, child, out, log = running[0]
                child.wait()
                running.pop(0)
                # The child printed its own rows; pass on anything else it said.
                for line in log.read_text(errors="replace").splitlines():
                    if not line.startswith("│"):
                        print(line)
                if out.exists():  # measured (exit status 1 only says a target was missed)
                    finished[index] = list(json.loads(out.read_text())["rows"])
                else:
                    finished[index] = [failed_row(module, setup, f"exited with status {child.returncode}")]
        except KeyboardInterrupt:
            print("\nbench: interrupted; waiting for the running benchmarks to clean up…", file=sys.stderr)
            for _, _, child, _, _ in running:
                child.send_signal(signal.SIGINT)
            for _, _, child, _, _ in running:
                child.wait(timeout=120)
            raise
        finally:
            for _, _, child, _, _ in running:
                if child.poll() is None:
                    child.kill()
        return [row for index in sorted(finished) for row in finished[index]]


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """While waiting for children, SIGTERM is handled like Ctrl-C: they get to clean up."""

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def exit_status(rows: Sequence[dict[str, Any]]) -> int:
    """0: every figure met its target; 1: one missed it; 2: one could not be measured."""
    if any(row["measured"] is None for row in rows):
        return 2
    return 0 if all(row["pass"] for row in rows) else 1


def failed_row(figure: str, setup: str, why: str) -> dict[str, Any]:
    return {
        "figure": figure,
        "setup": setup,
        "measured": None,
        "summary": f"FAILED: {why}",
        "target": "",
        "pass": False,
        "details": {},
    }


def format_row(row: dict[str, Any]) -> str:
    verdict = "pass" if row["pass"] else "FAIL"
    return f"│ {row['figure']:<18} {row['setup']:<12} {row['summary']:<52} {row['target']:<22} {verdict}"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def maybe_profile(path: Path | None) -> contextlib.AbstractContextManager[Any]:
    """cProfile the block (the event loop's thread only) and write the stats to ``path``."""
    if path is None:
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def profiling() -> Any:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.enable()
        try:
            yield
        finally:
            profiler.disable()
            profiler.dump_stats(str(path))
            stats = pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative")
            print(f"bench: profile written to {path}; top 25 by cumulative time:", file=sys.stderr)
            stats.print_stats(25)

    return profiling()


@dataclass
class Timing:
    """When a bench started: the load average then and the clock, for the results document."""

    load: list[float] = field(default_factory=lambda: [round(x, 2) for x in os.getloadavg()])
    started: float = field(default_factory=time.perf_counter)


def write_results(path: Path, timing: Timing, *, quick: bool, **results: Any) -> dict[str, Any]:
    """Write a bench's results as JSON, with the machine, the load at start and end and the time taken."""
    info = machine()
    info["load_average_1_5_15"] = timing.load
    info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    document = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": quick,
        "machine": info,
        "elapsed_s": round(time.perf_counter() - timing.started, 1),
        **results,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
    return document


def where_written(document: dict[str, Any], path: Path) -> str:
    """The last line a bench prints: the load it ran under and where its results went."""
    start, end = document["machine"]["load_average_1_5_15"][0], document["machine"]["load_average_end"][0]
    return f"load average {start:.2f} at start, {end:.2f} at end; written to {path}"
