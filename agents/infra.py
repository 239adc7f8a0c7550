"""The infra agent: takes RunRequests from its queue and runs them with ansible-runner.

It follows docs/protocol.md §4 to the letter; in short, for each RunRequest on
``chiffon.runs.<id>``, in this order:

1. **wrong agent** (``agentId`` names another) → ``Error WrongAgent``, ack;
2. **epoch fence**: older than the highest epoch seen → ``Error StaleEpoch``,
   ack; newer → remembered (in the journal, so it survives a restart);
3. **known run id** → answer from memory, never run it again: finished →
   publish its ``RunResult`` again; running → publish ``RunAccepted`` again;
   cancelled before it started → ``RunResult canceled``; waiting for a slot →
   ack the duplicate;
4. **deadline passed** → ``RunResult timeout`` ("the deadline passed before the
   run started"), ack;
5. **invalid** (no playbook or role, a path outside the repo, a missing file)
   → ``Error InvalidRequest`` *and* a ``RunResult failed`` saying why, so the
   controller's run does not wait for the lost-run timeout; ack;
6. otherwise the request **waits for a slot**: at most ``max_concurrent`` runs
   at once. A waiting request is not acked — the handler hands it over — so it
   is still the broker's if this agent dies, and a CancelRun behind it on the
   queue is not stuck behind a busy handler. It holds a prefetch slot.
7. **Starting** (a slot is free): epoch and deadline are checked again, then
   ``RunAccepted`` is published and confirmed, the journal records
   ``accepted``, and only then is the request acked (*ack on accept*, §4.2).
   The playbook runs, ``RunEvent`` batches follow, then the ``RunResult``;
   the journal records it as ``finished`` before it is published and as
   ``reported`` once the broker confirmed it. A result that cannot be
   published is retried with backoff, and after a restart.

CancelRun (§4.5): a running run is stopped (``canceled``); a waiting one is
answered ``canceled`` without starting; an unknown one is remembered for an
hour, so a RunRequest overtaken by its cancel never runs.

On start, runs the journal shows as accepted but never finished — the agent
died under them, and their playbooks with it — are reported ``failed`` ("agent
… restarted while the run was in progress") at once instead of leaving the
controller to notice; results not yet confirmed by the broker are published
again. Every heartbeat lists in ``runs`` the runs this agent accepted and still
owes a result for, so the controller can tell them from runs it lost
(controllers/liveness.py). With ``resend_results_within`` (``chiffon up`` sets a day)
every result of that period is published again too: the in-process bus
forgets what was in flight when the process exits, and the controller ignores
results it already has. On a clean stop the agent stops taking
requests (waiting ones go back to the queue), gives running playbooks
``shutdown_grace`` seconds to finish, then cancels them and reports them
``canceled``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from chiffon.agents.base import DEFAULT_HEARTBEAT_INTERVAL, AgentBase
from chiffon.agents.capacity import BusyCheck, hostname
from chiffon.agents.journal import Journal
from chiffon.agents.runner import (
    EventSink,
    InvalidJobError,
    PlaybookJob,
    PlaybookOutcome,
    Status,
    check_job,
    run_playbook,
)
from chiffon.bus import RESULTS_QUEUE, Bus, BusError, Delivery, Subscription, runs_queue
from chiffon.resources.agent import AgentKind
from chiffon.resources.messages import (
    MAX_HEARTBEAT_RUNS,
    AnsibleEvent,
    CancelRun,
    ErrorPayload,
    Payload,
    RunAccepted,
    RunEvent,
    RunRequest,
    RunResult,
    make_envelope,
)

log = logging.getLogger(__name__)

RunPlaybook = Callable[[PlaybookJob, EventSink, asyncio.Event], Awaitable[PlaybookOutcome]]

DEFAULT_MAX_CONCURRENT = 2
DEFAULT_SHUTDOWN_GRACE = 30.0
KEEP_RUN_DIRS = 50
REPORT_RETRY_MAX = 30.0
DEADLINE_ERROR = "deadline passed before start"


def default_infra_id() -> str:
    return f"infra-{hostname()}"


@dataclass
class _Waiting:
    request: RunRequest
    delivery: Delivery
    message_id: str


@dataclass
class _Running:
    request: RunRequest
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class InfraAgent(AgentBase):
    kind = AgentKind.INFRA

    def __init__(
        self,
        bus: Bus,
        *,
        repo: Path,
        work_dir: Path,
        agent_id: str | None = None,
        labels: Mapping[str, str] | None = None,
        max_concurrent: int = DEFAULT_MAX_CONCURRENT,
        heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL,
        env: Mapping[str, str] | None = None,
        busy: BusyCheck | None = None,
        shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE,
        resend_results_within: float = 0.0,
        runner: RunPlaybook = run_playbook,
    ) -> None:
        super().__init__(
            bus,
            agent_id or default_infra_id(),
            labels=labels if labels is not None else {"role": "infra"},
            heartbeat_interval=heartbeat_interval,
            busy=busy,
        )
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        self.repo = repo
        self.work_dir = work_dir
        self.runs_dir = work_dir / "runs"
        self.max_concurrent = max_concurrent
        self.env = dict(env or {})
        self.shutdown_grace = shutdown_grace
        self.resend_results_within = resend_results_within
        self._runner = runner
        self.journal = Journal(work_dir / "journal.jsonl")
        self._waiting: dict[str, _Waiting] = {}
        self._running: dict[str, _Running] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._subscription: Subscription | None = None
        self._stopping = False
        self.executed: list[str] = []
        """Run ids this agent started ansible-runner for, in order (in this process's life)."""

    # Life cycle ------------------------------------------------------------------------------

    def queues(self) -> list[str]:
        return [*super().queues(), runs_queue(self.agent_id)]

    def claimed_runs(self) -> list[str]:
        """Runs accepted (RunAccepted confirmed) whose RunResult is not confirmed yet."""
        owed = [
            run_id
            for run_id in self._running
            if run_id in self.journal.accepted and run_id not in self.journal.reported
        ]
        return sorted(owed)[:MAX_HEARTBEAT_RUNS]

    async def on_start(self) -> None:
        self._stopping = False
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.journal = Journal.open(self.work_dir / "journal.jsonl")
        for run_id in self.journal.interrupted():
            log.warning(
                "run %s was interrupted by a restart of agent %s; reporting it failed", run_id, self.agent_id
            )
            self.journal.record_finished(
                self._result(
                    run_id, "failed", error=f"agent {self.agent_id} restarted while the run was in progress"
                )
            )
        resend = {result.run_id: result for result in self.journal.unreported()}
        if self.resend_results_within > 0:
            since = datetime.now(UTC) - timedelta(seconds=self.resend_results_within)
            resend.update((result.run_id, result) for result in self.journal.finished_since(since))
        for result in resend.values():
            self._in_background(self._report(result), f"report {result.run_id}")
        self._subscription = await self.bus.consume(
            runs_queue(self.agent_id), self._on_message, prefetch=max(16, 2 * self.max_concurrent)
        )

    async def on_stop(self) -> None:
        self._stopping = True
        if self._subscription is not None:
            # Waiting requests were never acked: cancelling gives them back to the queue.
            await self._subscription.cancel()
            self._subscription = None
        self._waiting.clear()
        running = [entry.task for entry in self._running.values() if entry.task is not None]
        if running:
            log.info(
                "agent %s waits up to %gs for %d run(s)", self.agent_id, self.shutdown_grace, len(running)
            )
            _, unfinished = await asyncio.wait(running, timeout=self.shutdown_grace)
            if unfinished:
                for entry in self._running.values():
                    entry.cancel.set()
                _, unfinished = await asyncio.wait(unfinished, timeout=30)
                for task in unfinished:
                    task.cancel()
                await asyncio.gather(*unfinished, return_exceptions=True)
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    # Messages ---------------------------------------------------------------------------------

    async def _on_message(self, delivery: Delivery) -> None:
        payload = delivery.envelope.payload
        if isinstance(payload, RunRequest):
            await self._on_request(delivery, payload)
        elif isinstance(payload, CancelRun):
            await self._on_cancel(payload)
            await delivery.ack()
        else:
            log.warning(
                "agent %s ignores a %s on its runs queue", self.agent_id, delivery.envelope.type.value
            )
            await delivery.ack()

    async def _on_request(self, delivery: Delivery, request: RunRequest) -> None:
        run_id = request.run_id
        message_id = delivery.envelope.message_id
        if request.agent_id is not None and request.agent_id != self.agent_id:
            await self._error(
                "WrongAgent",
                f"RunRequest for agent {request.agent_id} reached agent {self.agent_id}.",
                message_id,
                run_id,
            )
            await delivery.ack()
            return
        if await self._refused_by_epoch(request, message_id):
            await delivery.ack()
            return
        self.journal.record_epoch(request.epoch)
        known = await self._answer_known(request)
        if known:
            await delivery.ack()
            return
        earlier = self._waiting.get(run_id)
        if earlier is not None:
            # A second copy (published again, or redelivered after the channel of the first
            # closed): hold the newer delivery, settle the older, so exactly one copy stays held.
            self._waiting[run_id] = _Waiting(request, delivery, message_id)
            await earlier.delivery.ack()
            return
        if self._deadline_passed(request):
            await self._finish_unstarted(request, "timeout", DEADLINE_ERROR)
            await delivery.ack()
            return
        try:
            check_job(self._job(request))
        except InvalidJobError as exc:
            await self._error("InvalidRequest", f"{exc}.", message_id, run_id)
            await self._finish_unstarted(request, "failed", str(exc))
            await delivery.ack()
            return
        self._waiting[run_id] = _Waiting(request, delivery, message_id)
        self._fill_slots()

    async def _refused_by_epoch(self, request: RunRequest, message_id: str) -> bool:
        if request.epoch >= self.journal.epoch:
            return False
        await self._error(
            "StaleEpoch",
            f"RunRequest from leader epoch {request.epoch} refused: "
            f"this agent has seen epoch {self.journal.epoch}.",
            message_id,
            request.run_id,
        )
        return True

    async def _answer_known(self, request: RunRequest) -> bool:
        """Answer a run id this agent already knows (§4.1); False if it is new."""
        run_id = request.run_id
        finished = self.journal.finished.get(run_id)
        if finished is not None:
            await self._publish(finished, correlation_id=run_id)
            self.journal.record_reported(run_id)
            return True
        if run_id in self._running:
            await self._publish(RunAccepted(run_id=run_id, agent_id=self.agent_id), correlation_id=run_id)
            return True
        if self.journal.canceled_recently(run_id):
            await self._finish_unstarted(request, "canceled", "canceled before it started")
            return True
        return False

    async def _on_cancel(self, cancel: CancelRun) -> None:
        run_id = cancel.run_id
        running = self._running.get(run_id)
        if running is not None:
            log.info("canceling run %s: %s", run_id, cancel.reason or "no reason given")
            running.cancel.set()
            return
        waiting = self._waiting.pop(run_id, None)
        if waiting is not None:
            await self._finish_unstarted(waiting.request, "canceled", "canceled before it started")
            await waiting.delivery.ack()
            return
        if run_id in self.journal.finished:
            return  # finished already: nothing to stop
        self.journal.record_canceled(run_id)

    # Running ----------------------------------------------------------------------------------

    def _fill_slots(self) -> None:
        while not self._stopping and self._waiting and len(self._running) < self.max_concurrent:
            run_id = next(iter(self._waiting))
            waiting = self._waiting.pop(run_id)
            entry = _Running(waiting.request)
            self._running[run_id] = entry
            entry.task = asyncio.create_task(self._start(waiting, entry), name=f"run {run_id}")

    async def _start(self, waiting: _Waiting, entry: _Running) -> None:
        request = waiting.request
        run_id = request.run_id
        settled = False
        try:
            if await self._refused_by_epoch(request, waiting.message_id):
                settled = True
                await waiting.delivery.ack()
                return
            if self._deadline_passed(request) or entry.cancel.is_set():
                timed_out = not entry.cancel.is_set()
                await self._finish_unstarted(
                    request,
                    "timeout" if timed_out else "canceled",
                    DEADLINE_ERROR if timed_out else "canceled before it started",
                )
                settled = True
                await waiting.delivery.ack()
                return
            await self._publish(RunAccepted(run_id=run_id, agent_id=self.agent_id), correlation_id=run_id)
            self.journal.record_accepted(run_id)
            settled = True
            await waiting.delivery.ack()
            await self._execute(request, entry.cancel)
        except Exception as exc:
            if not settled:
                log.warning("could not start run %s (%s); it goes back to the queue", run_id, exc)
                await waiting.delivery.reject(requeue=True)
            elif run_id in self.journal.accepted and run_id not in self.journal.finished:
                log.exception("run %s failed inside agent %s", run_id, self.agent_id)
                result = self._result(run_id, "failed", error="the agent failed to run it")
                self.journal.record_finished(result)
                self._in_background(self._report(result), f"report {run_id}")
            else:
                log.exception("could not answer run %s", run_id)
        finally:
            self._running.pop(run_id, None)
            self._fill_slots()

    async def _execute(self, request: RunRequest, cancel: asyncio.Event) -> None:
        run_id = request.run_id
        self.executed.append(run_id)
        log.info("running %s (%s) for %s", run_id, request.playbook or f"role {request.role}", request.intent)

        async def publish_events(events: list[AnsibleEvent]) -> None:
            await self._publish(
                RunEvent(run_id=run_id, agent_id=self.agent_id, events=events), correlation_id=run_id
            )

        outcome = await self._runner(self._job(request), publish_events, cancel)
        result = RunResult(
            run_id=run_id,
            agent_id=self.agent_id,
            status=outcome.status,
            rc=outcome.rc,
            stats=outcome.stats,
            duration_seconds=max(0.0, outcome.duration_seconds),
            usage=outcome.usage,
            error=outcome.error,
        )
        self.journal.record_finished(result)
        log.info("run %s %s in %.1fs", run_id, outcome.status, outcome.duration_seconds)
        self._prune_run_dirs()
        await self._report(result)

    def _job(self, request: RunRequest) -> PlaybookJob:
        return PlaybookJob(
            run_id=request.run_id,
            repo=self.repo,
            work_dir=self.runs_dir,
            playbook=request.playbook,
            role=request.role,
            inventory=request.inventory,
            limit=request.limit,
            tags=tuple(request.tags),
            skip_tags=tuple(request.skip_tags),
            extra_vars=request.extra_vars,
            check=request.check,
            diff=request.diff,
            timeout_seconds=request.timeout_seconds,
            env={**self.env, **run_environment(request)},
        )

    # Answers ------------------------------------------------------------------------------------

    def _result(self, run_id: str, status: Status, *, error: str) -> RunResult:
        return RunResult(
            run_id=run_id,
            agent_id=self.agent_id,
            status=status,
            duration_seconds=0,
            error=error,
        )

    async def _finish_unstarted(self, request: RunRequest, status: Status, error: str) -> None:
        """Answer a request that will never run with a RunResult (journaled first)."""
        result = self._result(request.run_id, status, error=error)
        self.journal.record_finished(result)
        await self._publish(result, correlation_id=request.run_id)
        self.journal.record_reported(request.run_id)

    async def _report(self, result: RunResult) -> None:
        """Publish a run's result, retrying with backoff; on stop, the next start retries."""
        delay = 1.0
        while True:
            try:
                await self._publish(result, correlation_id=result.run_id)
            except BusError as exc:
                if self._stopping:
                    log.warning(
                        "result of run %s not published (%s); will retry on restart", result.run_id, exc
                    )
                    return
                log.warning("could not publish the result of run %s (%s); retrying", result.run_id, exc)
                await asyncio.sleep(delay)
                delay = min(REPORT_RETRY_MAX, delay * 2)
                continue
            self.journal.record_reported(result.run_id)
            return

    async def _error(self, code: str, message: str, related: str, run_id: str) -> None:
        log.warning("agent %s: %s: %s", self.agent_id, code, message)
        payload = ErrorPayload(code=code, message=message, related_message_id=related)
        await self._publish(payload, correlation_id=run_id)

    async def _publish(self, payload: Payload, *, correlation_id: str) -> None:
        await self.bus.publish(RESULTS_QUEUE, make_envelope(payload, correlation_id=correlation_id))

    @staticmethod
    def _deadline_passed(request: RunRequest) -> bool:
        if request.deadline is None:
            return False
        deadline = request.deadline if request.deadline.tzinfo else request.deadline.replace(tzinfo=UTC)
        return datetime.now(UTC) > deadline

    def _in_background(self, work: Awaitable[None], name: str) -> None:
        task = asyncio.ensure_future(work)
        task.set_name(name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _prune_run_dirs(self) -> None:
        """Keep the newest KEEP_RUN_DIRS run directories (the journal keeps every result)."""
        if not self.runs_dir.is_dir():
            return
        busy = set(self._running)
        folders = [path for path in self.runs_dir.iterdir() if path.is_dir() and path.name not in busy]
        if len(folders) <= KEEP_RUN_DIRS:
            return
        folders.sort(key=lambda path: path.stat().st_mtime)
        for path in folders[: len(folders) - KEEP_RUN_DIRS]:
            with contextlib.suppress(OSError):
                shutil.rmtree(path)


def run_environment(request: RunRequest) -> dict[str, str]:
    """What a playbook may read about the run it is part of (``lookup('env', 'CHIFFON_RUN_ID')``):
    to stamp what it writes, or to log in its own words which run did what."""
    return {
        "CHIFFON_RUN_ID": request.run_id,
        "CHIFFON_INTENT": request.intent,
        "CHIFFON_STEP": request.step,
        "CHIFFON_CHECK_MODE": "true" if request.check else "false",
    }
