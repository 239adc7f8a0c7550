"""The DeploymentIntent reconciler: plan → approval → dependencies → schedule → dispatch → observe.

Level-based: the key carries only the name; each pass reads the intent, its
approvals, its runs and the agents, and converges. Each step has the same
signature, fits on a screen and records facts in the pass's ``Pass`` object;
the first step that returns a result or raises ends the pass. Steps never
write: they record what to write (status, audit events, a dispatch) and the
pass's writes are committed once, at the end, in one transaction — and only
if something changed, so a resync of converged intents writes nothing.

Passes run in batches (:meth:`IntentReconciler.reconcile_many`): the intents,
their runs, approvals and the agents are read once for the whole batch, and
every pass's writes go into the same transaction. A commit that adds a
thousand intents costs a few dozen transactions instead of tens of thousands;
each pass still decides alone, from the same facts it would read by itself.

Dispatch writes the run row and its outbox row in that transaction with a run
id derived from (intent, generation, plan digest, step, attempt), so a pass
repeated after a crash finds the run already there and dispatches nothing new.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from chiffon.bus import runs_queue
from chiffon.controllers import drift as drifts
from chiffon.controllers.faults import AFTER_DISPATCH, crash_point
from chiffon.controllers.planner import PlanError, Planner, needs_person
from chiffon.controllers.progress import MAX_ATTEMPTS, Progress, duration_history, progress, retry_at
from chiffon.controllers.reconcile import ReconcileError, Result, Stalled, Waiting
from chiffon.controllers.scheduler import Decision, choose
from chiffon.resources import (
    Agent,
    Approval,
    AuditEvent,
    Condition,
    ConditionStatus,
    ConditionType,
    DeploymentIntent,
    DriftChange,
    DriftStatus,
    IntentStatus,
    Outcome,
    Plan,
    Reason,
    Run,
    drift_run_id,
    find_condition,
    is_condition_true,
    run_id,
    set_condition,
)
from chiffon.resources.approval import Decision as ApprovalDecision
from chiffon.resources.conditions import remove_condition
from chiffon.resources.intent import ApprovalPolicy, DriftMode
from chiffon.resources.messages import RunRequest, encode_envelope, make_envelope
from chiffon.resources.run import RunStatus
from chiffon.store import Store
from chiffon.store.records import Dispatch, ReconcileWrites, StatusWrite

log = logging.getLogger(__name__)

KIND_PREFIX = "DeploymentIntent/"
CONTROLLER_ACTOR = "controller"

# Safety nets only: the events that open a gate (an approval, a heartbeat, a run
# result, a dependency becoming Ready) enqueue the key at once.
APPROVAL_RECHECK_SECONDS = 600.0
CAPACITY_RECHECK_SECONDS = 300.0
DEPENDENCY_RECHECK_SECONDS = 120.0
PLAN_RETRY_SECONDS = 300.0
RUN_RECHECK_SECONDS = 60.0
RUN_TIMEOUT_SECONDS = 3600
#: How many runs of an intent a pass reads: enough for progress and duration estimates.
RUNS_READ_PER_INTENT = 200

PassOutcome = Result | Exception


def intent_key(name: str) -> str:
    return f"{KIND_PREFIX}{name}"


def name_of(key: str) -> str:
    return key.removeprefix(KIND_PREFIX)


class Snapshot:
    """What a batch of passes reads besides each intent and its runs, each thing at most once."""

    def __init__(self, store: Store, intents: dict[str, DeploymentIntent]) -> None:
        self._store = store
        self._intents = intents
        self._agents: asyncio.Task[list[Agent]] | None = None
        self._approvals: asyncio.Task[dict[str, list[Approval]]] | None = None
        self._others: dict[str, asyncio.Task[DeploymentIntent | None]] = {}

    async def agents(self) -> list[Agent]:
        if self._agents is None:
            self._agents = asyncio.ensure_future(self._store.list_agents())
        return await self._agents

    async def approvals(self, name: str) -> list[Approval]:
        """``name``'s approvals; the first call reads those of every manual intent in the batch."""
        if self._approvals is None:
            # Auto intents too: an abort rejects the current plan whatever the policy.
            self._approvals = asyncio.ensure_future(self._store.approvals_of([*self._intents] or [name]))
        found = await self._approvals
        if name in found or name in self._intents:
            return found.get(name, [])
        return await self._store.list_approvals(name)

    async def intent(self, name: str) -> DeploymentIntent | None:
        """Another intent (a dependency), as the batch read it or read now."""
        if name in self._intents:
            return self._intents[name]
        if name not in self._others:
            self._others[name] = asyncio.ensure_future(self._store.get_intent(name))
        return await self._others[name]


@dataclass
class Pass:
    """Everything one reconcile pass reads and decides, and what it will write."""

    intent: DeploymentIntent
    now: datetime
    epoch: int
    before: IntentStatus
    status: IntentStatus
    reads: Snapshot
    runs: list[Run] = field(default_factory=list)
    plan: Plan | None = None
    progress: Progress | None = None
    decision: Decision | None = None
    stalled: ReconcileError | None = None
    blocked_reason: str | None = None
    audits: list[AuditEvent] = field(default_factory=list)
    dispatch: Dispatch | None = None

    @property
    def name(self) -> str:
        return self.intent.metadata.name

    @property
    def generation(self) -> int:
        return self.intent.metadata.generation or 0

    def condition(self, kind: str, status: ConditionStatus, reason: str, message: str) -> None:
        self.status.conditions = set_condition(
            self.status.conditions,
            kind,
            status,
            reason,
            message,
            now=self.now,
            observed_generation=self.generation,
        )

    def reason_of(self, kind: str) -> str | None:
        found = find_condition(self.status.conditions, kind)
        return found.reason if found else None


StepFn = Callable[[Pass], Awaitable[Result | None]]


class IntentReconciler:
    def __init__(
        self,
        store: Store,
        planner: Planner,
        *,
        epoch: Callable[[], int],
        on_dispatch: Callable[[], None],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.planner = planner
        self._epoch = epoch
        self._on_dispatch = on_dispatch
        self._clock = clock
        # Keys waiting for capacity, in the order they started waiting (an ordered set).
        self.waiting_for_capacity: dict[str, None] = {}
        self.steps: list[StepFn] = [
            self.suspend,
            self.plan,
            self.approval,
            self.dependencies,
            self.schedule,
            self.dispatch,
            self.observe,
            self.drift,
        ]

    async def reconcile(self, key: str) -> Result:
        """One pass over one intent: its result, or the error that ended it."""
        outcome = (await self.reconcile_many([key])).outcomes[key]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def reconcile_many(self, keys: Sequence[str]) -> BatchOutcome:
        """One pass over each intent, reading once for all and committing every pass's writes together."""
        names = [name_of(key) for key in keys]
        intents, runs = await self.store.intents_and_runs(names, runs_each=RUNS_READ_PER_INTENT)
        reads = Snapshot(self.store, intents)
        outcomes: dict[str, PassOutcome] = {}
        passes: list[tuple[str, Pass]] = []
        for key, name in zip(keys, names, strict=True):
            intent = intents.get(name)
            if intent is None:
                self.waiting_for_capacity.pop(key, None)
                outcomes[key] = Result()  # deleted: nothing left to converge
                continue
            passes.append((key, self._start(intent, reads, runs.get(name, []))))
        results = await asyncio.gather(*(self._run_steps(state) for _, state in passes))
        outcomes.update((key, result) for (key, _), result in zip(passes, results, strict=True))
        try:
            created = await self.store.commit_reconcile(writes_of(state for _, state in passes))
        except Exception as exc:  # nothing was written: every pass in the batch tries again
            return BatchOutcome({key: exc for key in keys}, {}, {})
        if created:
            crash_point(AFTER_DISPATCH, len(created))
            self._on_dispatch()
        ready = {state.name: is_ready(state.status) for _, state in passes}
        ready.update((name, False) for name in names if name not in intents)
        depends_on = {name: tuple(intent.spec.depends_on) for name, intent in intents.items()}
        return BatchOutcome(outcomes, ready, depends_on)

    def _start(self, intent: DeploymentIntent, reads: Snapshot, runs: list[Run]) -> Pass:
        before = intent.status or IntentStatus()
        return Pass(
            intent=intent,
            now=self._clock(),
            epoch=self._epoch(),
            before=before,
            # Shallow is enough: steps replace status fields (conditions are new lists),
            # they never change a nested object in place.
            status=before.model_copy(),
            reads=reads,
            runs=list(runs),
        )

    async def _run_steps(self, state: Pass) -> PassOutcome:
        try:
            for step in self.steps:
                result = await step(state)
                if result is not None:
                    return result
            return Result()
        except ReconcileError as stopped:
            if isinstance(stopped, Stalled):
                state.stalled = stopped
            state.blocked_reason = stopped.reason
            return stopped
        except Exception as exc:  # backs off; the status still says what was decided
            return exc
        finally:
            summarize(state)

    # Steps ------------------------------------------------------------------------------

    async def suspend(self, state: Pass) -> Result | None:
        if not state.intent.spec.suspend:
            return None
        state.condition(ConditionType.READY, ConditionStatus.FALSE, Reason.SUSPENDED, "spec.suspend is true.")
        state.status.blocked_by = "suspended: set spec.suspend to false to resume"
        state.blocked_reason = Reason.SUSPENDED
        return Result()

    async def plan(self, state: Pass) -> Result | None:
        previous = state.status.plan
        targets = {s.name: (s.playbook or s.role or "") for s in previous.steps} if previous else {}
        try:
            plan = await self.planner.plan(
                state.intent,
                revision=state.status.source_revision,
                infra_revision=None,
                history=duration_history(state.runs, targets),
                now=state.now,
            )
        except PlanError as error:
            before = find_condition(state.status.conditions, ConditionType.PLANNED)
            if before is None or (before.status, before.message) != (ConditionStatus.FALSE, error.message):
                # Audited once per new refusal (a path escaping the repo, a broken playbook), not
                # on every retry.
                details: dict[str, object] = {"reason": error.reason, "message": error.message}
                self._audit(state, "plan", details, Outcome.FAILURE)
            state.condition(ConditionType.PLANNED, ConditionStatus.FALSE, error.reason, error.message)
            state.status.blocked_by = f"no plan: {error.message}"
            state.stalled = Stalled(error.reason, error.message)
            # A fix may land in homelab-infra, which is not watched: look again now and then.
            raise Waiting(error.reason, error.message, PLAN_RETRY_SECONDS) from None
        if previous is None or previous.digest != plan.digest:
            state.status.plan = plan
            # Drift is measured against the applied plan; a new plan starts afresh once applied.
            state.status.drift = None
            state.status.conditions = remove_condition(state.status.conditions, ConditionType.DRIFTED)
            self._audit(
                state,
                "plan",
                {
                    "digest": plan.digest,
                    "risk": plan.risk.value,
                    "steps": [s.name for s in plan.steps],
                    "approval": state.intent.spec.approval.value,
                    "needsPerson": needs_person(plan),
                },
            )
        state.plan = state.status.plan
        steps = len(plan.steps)
        state.condition(
            ConditionType.PLANNED,
            ConditionStatus.TRUE,
            Reason.PLAN_READY,
            f"Plan {plan.digest[:12]} has {steps} step{'s' if steps != 1 else ''}, {plan.risk.value} risk.",
        )
        return None

    async def approval(self, state: Pass) -> Result | None:
        assert state.plan is not None
        digest = state.plan.digest
        # A goal the catalog matched with low confidence is a guess: a person approves it, even under Auto.
        guessed = needs_person(state.plan)
        approvals = await state.reads.approvals(state.name)
        current = next((a for a in approvals if a.digest == digest), None)
        rejected = current is not None and current.decision is ApprovalDecision.REJECTED
        if state.intent.spec.approval is ApprovalPolicy.AUTO and not guessed and not rejected:
            state.condition(
                ConditionType.APPROVED,
                ConditionStatus.TRUE,
                Reason.AUTO_APPROVED,
                "approval: Auto approves every plan.",
            )
            return None
        if current is not None and current.decision is ApprovalDecision.APPROVED:
            state.condition(
                ConditionType.APPROVED,
                ConditionStatus.TRUE,
                Reason.APPROVED,
                f"Plan {digest[:12]} approved by {current.actor}.",
            )
            return None
        if current is not None:
            message = (
                f"Plan {digest[:12]} rejected by {current.actor}: {current.reason or 'no reason given'}."
            )
            state.condition(ConditionType.APPROVED, ConditionStatus.FALSE, Reason.REJECTED, message)
            state.status.blocked_by = (
                f"rejected: {message} Approve it again (chiffonctl approve {state.name}) "
                "or change the spec to get a new plan."
            )
            state.blocked_reason = Reason.REJECTED
            return Result()
        reason = Reason.PLAN_CHANGED if approvals else Reason.AWAITING_APPROVAL
        note = "The plan changed since the last approval; " if approvals else ""
        if guessed:
            note += f"{'a' if note else 'A'} step's goal matched the playbook catalog with low confidence; "
        message = f"{note}Plan {digest[:12]} is waiting for approval."
        state.condition(ConditionType.APPROVED, ConditionStatus.FALSE, reason, message)
        state.status.blocked_by = (
            f"waiting for approval: chiffonctl approve {state.name} --plan {digest[:12]}"
        )
        raise Waiting(reason, message, APPROVAL_RECHECK_SECONDS)

    async def dependencies(self, state: Pass) -> Result | None:
        for dependency in state.intent.spec.depends_on:
            other = await state.reads.intent(dependency)
            if other is None:
                message = f"depends on {dependency}, which does not exist"
            elif not is_condition_true(other.status.conditions if other.status else [], ConditionType.READY):
                message = f"waiting for {dependency} to be Ready"
            else:
                continue
            state.condition(
                ConditionType.SCHEDULED,
                ConditionStatus.FALSE,
                Reason.WAITING_FOR_DEPENDENCY,
                message[0].upper() + message[1:] + ".",
            )
            state.status.blocked_by = message
            raise Waiting(Reason.WAITING_FOR_DEPENDENCY, message, DEPENDENCY_RECHECK_SECONDS)
        return None

    async def schedule(self, state: Pass) -> Result | None:
        assert state.plan is not None
        state.progress = current_progress(state)
        if state.progress.done or state.progress.in_flight is not None:
            return None
        self._check_retries(state, state.progress)
        decision = choose(
            await state.reads.agents(),
            state.intent.spec.resources,
            state.intent.spec.placement,
            state.now,
        )
        key = intent_key(state.name)
        if not decision.scheduled:
            self.waiting_for_capacity.setdefault(key, None)
            state.condition(
                ConditionType.SCHEDULED, ConditionStatus.FALSE, decision.reason, decision.message + "."
            )
            state.status.blocked_by = f"waiting for capacity{self._place_in_line(key)}: {decision.message}"
            if state.progress.step_index:
                await self._pause(state, decision.message)
            raise Waiting(decision.reason, decision.message, CAPACITY_RECHECK_SECONDS)
        self.waiting_for_capacity.pop(key, None)
        if state.reason_of(ConditionType.READY) == Reason.PAUSED:
            self._audit(state, "resume", {"step": state.progress.step_index, "message": decision.message})
        state.decision = decision
        state.condition(
            ConditionType.SCHEDULED,
            ConditionStatus.TRUE,
            Reason.AGENT_SELECTED,
            decision.message[0].upper() + decision.message[1:] + ".",
        )
        return None

    def _check_retries(self, state: Pass, current: Progress) -> None:
        failure = current.last_failure
        if failure is None:
            return
        step = state.plan.steps[current.step_index or 0].name if state.plan else "?"
        error = f": {failure.error}" if failure.error else ""
        what = f"step {step} {failure.status.value} (run {failure.id}{error})"
        if current.failures >= MAX_ATTEMPTS:
            message = f"{what}; gave up after {current.failures} attempts"
            state.condition(ConditionType.READY, ConditionStatus.FALSE, Reason.APPLY_FAILED, message + ".")
            state.status.blocked_by = f"failed: {message}; fix it and commit a change"
            raise Stalled(Reason.APPLY_FAILED, message)
        when = retry_at(current)
        if when is not None and when > state.now:
            wait = (when - state.now).total_seconds()
            message = f"{what}; attempt {current.attempt} in {wait:.0f}s"
            state.condition(ConditionType.READY, ConditionStatus.FALSE, Reason.APPLY_FAILED, message + ".")
            state.status.blocked_by = f"retrying: {message}"
            raise Waiting(Reason.APPLY_FAILED, message, wait)

    def _place_in_line(self, key: str) -> str:
        """ " (2nd of 3 in line)" when other intents wait for capacity too; capacity wakes them in order."""
        if len(self.waiting_for_capacity) < 2:
            return ""
        place = list(self.waiting_for_capacity).index(key) + 1
        return f" ({ordinal(place)} of {len(self.waiting_for_capacity)} in line)"

    async def _pause(self, state: Pass, why: str) -> None:
        if state.reason_of(ConditionType.READY) != Reason.PAUSED:
            self._audit(
                state,
                "pause",
                {"step": state.progress.step_index if state.progress else None, "message": why},
            )
        state.condition(
            ConditionType.READY,
            ConditionStatus.FALSE,
            Reason.PAUSED,
            f"Paused between steps: {why}. It resumes when capacity returns.",
        )

    async def dispatch(self, state: Pass) -> Result | None:
        current = state.progress
        if current is None or current.done or current.in_flight is not None or state.decision is None:
            return None
        assert (
            state.plan is not None and current.step_index is not None and state.decision.executor is not None
        )
        run, request = build_run(state, current.step_index, current.attempt, state.decision.executor.id)
        self._stage_dispatch(state, run, request, state.decision.executor.id)
        # Committed with the status; a run that already exists (a pass repeated after a
        # crash) is found in ``state.runs`` by progress() and never gets here.
        state.runs.append(run)
        state.progress = progress(state.plan, state.generation, state.runs)
        return None

    def _stage_dispatch(self, state: Pass, run: Run, request: RunRequest, agent_id: str) -> None:
        """Record the run, its message and its audit event for the pass's one transaction."""
        envelope = make_envelope(request, message_id=run.id, correlation_id=state.intent.metadata.uid)
        details: dict[str, object] = {
            "run": run.id,
            "step": run.step,
            "attempt": run.attempt,
            "agent": run.agent_id,
            "epoch": run.epoch,
        }
        if request.check:
            details["check"] = True
        state.dispatch = Dispatch(
            run,
            routing_key=runs_queue(agent_id),
            body=encode_envelope(envelope),
            audit=self._audit_event(state, "dispatch", details),
        )

    async def observe(self, state: Pass) -> Result | None:
        assert state.plan is not None
        current = state.progress or current_progress(state)
        if current.done:
            newly = state.status.last_applied_digest != state.plan.digest
            state.status.last_applied_digest = state.plan.digest
            state.condition(
                ConditionType.READY,
                ConditionStatus.TRUE,
                Reason.APPLIED,
                f"Plan {state.plan.digest[:12]} applied.",
            )
            state.status.blocked_by = None
            if newly:
                self._audit(state, "applied", {"digest": state.plan.digest})
            return None
        running = current.in_flight
        assert running is not None and current.step_index is not None
        total = len(state.plan.steps)
        message = (
            f"Step {current.step_index + 1}/{total} {running.step} is {running.status.value} "
            f"on {running.agent_id or 'an agent'} (run {running.id})."
        )
        # While a run is in flight its error is the liveness check's note (agent offline, lost).
        note = running.error
        message += f" {note[0].upper()}{note[1:]}." if note else ""
        state.condition(ConditionType.READY, ConditionStatus.FALSE, Reason.APPLYING, message)
        state.status.blocked_by = f"run {running.id} is {running.status.value}: {note}" if note else None
        return Result(requeue_after=RUN_RECHECK_SECONDS)

    async def drift(self, state: Pass) -> Result | None:
        """Check the applied plan in check mode every interval; under Heal, apply it again once approved."""
        assert state.plan is not None
        settings = state.intent.spec.drift_detection
        if settings.mode is DriftMode.OFF:
            state.status.drift = None
            state.status.conditions = remove_condition(state.status.conditions, ConditionType.DRIFTED)
            return Result()
        record = drifts.current(state.status.drift, state.plan.digest)
        if record.heal_digest is not None and settings.mode is not DriftMode.HEAL:
            record = record.model_copy(update={"heal_digest": None, "error": None})  # Heal was turned off
        state.status.drift = record
        if record.heal_digest is not None:
            return await self._heal(state, record)
        if record.round and record.checked_at is None:
            return await self._check_round(state, record)
        ready = find_condition(state.status.conditions, ConditionType.READY)
        ready_since = ready.last_transition_time if ready else state.now
        due = drifts.due_at(record, ready_since, drifts.interval_of(settings))
        if state.now < due:
            return Result(requeue_after=(due - state.now).total_seconds())
        started = record.model_copy(
            update={"round": record.round + 1, "started_at": state.now, "checked_at": None, "error": None}
        )
        state.status.drift = started
        return await self._check_round(state, started)

    async def _check_round(self, state: Pass, record: DriftStatus) -> Result:
        assert state.plan is not None
        found = drifts.round_state(
            state.plan, state.name, state.generation, state.runs, record.round, heal=False
        )
        if found.in_flight is not None:
            return Result(requeue_after=RUN_RECHECK_SECONDS)
        if found.next_step is not None:
            return await self._dispatch_drift_run(state, record, found.next_step, heal=False)
        interval = drifts.interval_of(state.intent.spec.drift_detection).total_seconds()
        if found.failed is not None:
            error = f"drift check {record.round} could not finish: {_run_words(found.failed)}"
            state.status.drift = record.model_copy(update={"checked_at": state.now, "error": error})
            details = {"round": record.round, "run": found.failed.id, "message": error}
            self._audit(state, "drift.check", details, Outcome.FAILURE)
            return Result(requeue_after=interval)
        changed = drifts.changed_runs(found.runs)
        events = {run.id: await self.store.list_run_events(run.id) for run in changed}
        self._finish_check(state, record, found.runs, drifts.changes_of(changed, events))
        finished = state.status.drift
        if finished is not None and finished.heal_digest is not None:
            return await self._heal(state, finished)
        return Result(requeue_after=interval)

    def _finish_check(
        self, state: Pass, record: DriftStatus, runs: list[Run], changes: list[DriftChange]
    ) -> None:
        assert state.plan is not None
        heal = state.intent.spec.drift_detection.mode is DriftMode.HEAL and bool(changes)
        state.status.drift = record.model_copy(
            update={
                "checked_at": state.now,
                "drifted": bool(changes),
                "changes": changes,
                "runs": [run.id for run in runs],
                "heal_digest": drifts.heal_digest(state.plan.digest, record.round) if heal else None,
            }
        )
        details: dict[str, object] = {"round": record.round, "runs": [run.id for run in runs]}
        if not changes:
            state.status.conditions = remove_condition(state.status.conditions, ConditionType.DRIFTED)
            if record.drifted:
                details["message"] = f"Drift check {record.round} found no changes: the drift is gone."
                self._audit(state, "drift", details)
            return
        message = drifts.describe(changes, record.round)
        state.condition(ConditionType.DRIFTED, ConditionStatus.TRUE, Reason.CHANGES_FOUND, message)
        if changes != record.changes or not record.drifted:
            details |= {
                "message": message,
                "changes": [f"{c.task or c.step}@{c.host or '?'}" for c in changes],
                "mode": state.intent.spec.drift_detection.mode.value,
            }
            heal_digest = state.status.drift.heal_digest
            if heal_digest:
                details["healDigest"] = heal_digest
                details["message"] = (
                    f"{message} Heal it: chiffonctl approve {state.name} --plan {heal_digest[:12]}"
                )
            self._audit(state, "drift", details, Outcome.FAILURE)

    async def _heal(self, state: Pass, record: DriftStatus) -> Result:
        assert state.plan is not None and record.heal_digest is not None
        digest = record.heal_digest
        if record.error:  # a heal run failed: only a person (or a new plan) moves it on
            state.status.blocked_by = f"drift not healed: {record.error}"
            return Result()
        verdict = await self._heal_verdict(state, digest)
        if verdict is not None:
            state.status.blocked_by = verdict
            return Result(requeue_after=APPROVAL_RECHECK_SECONDS)
        found = drifts.round_state(
            state.plan, state.name, state.generation, state.runs, record.round, heal=True
        )
        if found.in_flight is not None:
            return Result(requeue_after=RUN_RECHECK_SECONDS)
        if found.failed is not None:
            error = f"heal of drift round {record.round} failed: {_run_words(found.failed)}"
            state.status.drift = record.model_copy(update={"error": error})
            state.status.blocked_by = f"drift not healed: {error}"
            details = {"round": record.round, "run": found.failed.id, "message": error}
            self._audit(state, "heal", details, Outcome.FAILURE)
            return Result()
        if found.next_step is not None:
            return await self._dispatch_drift_run(state, record, found.next_step, heal=True)
        state.status.drift = record.model_copy(
            update={"heal_digest": None, "drifted": False, "changes": [], "checked_at": state.now}
        )
        state.status.conditions = remove_condition(state.status.conditions, ConditionType.DRIFTED)
        state.status.blocked_by = None
        self._audit(
            state,
            "heal",
            {"round": record.round, "digest": digest, "runs": [run.id for run in found.runs]},
        )
        return Result(requeue_after=drifts.interval_of(state.intent.spec.drift_detection).total_seconds())

    async def _heal_verdict(self, state: Pass, digest: str) -> str | None:
        """None when the heal may run; otherwise what holds it, in words for ``blocked_by``."""
        assert state.plan is not None
        approvals = await state.reads.approvals(state.name)
        decided = next((a for a in approvals if a.digest == digest), None)
        if decided is not None and decided.decision is ApprovalDecision.REJECTED:
            return (
                f"drift found; healing it was rejected by {decided.actor}: "
                f"{decided.reason or 'no reason given'}"
            )
        if decided is not None:
            return None
        if state.intent.spec.approval is ApprovalPolicy.AUTO and not needs_person(state.plan):
            return None
        return f"drift found; heal it with chiffonctl approve {state.name} --plan {digest[:12]}"

    async def _dispatch_drift_run(
        self, state: Pass, record: DriftStatus, index: int, *, heal: bool
    ) -> Result:
        """Start step ``index`` of a check (or heal) round on an agent with room for it."""
        decision = choose(
            await state.reads.agents(), state.intent.spec.resources, state.intent.spec.placement, state.now
        )
        key = intent_key(state.name)
        if decision.executor is None:
            self.waiting_for_capacity.setdefault(key, None)
            what = "heal" if heal else "drift check"
            state.status.blocked_by = f"{what} waiting for capacity: {decision.message}"
            return Result(requeue_after=CAPACITY_RECHECK_SECONDS)
        self.waiting_for_capacity.pop(key, None)
        if not heal:
            state.status.blocked_by = None
        run, request = build_run(
            state, index, record.round, decision.executor.id, drift=("heal" if heal else "check")
        )
        self._stage_dispatch(state, run, request, decision.executor.id)
        return Result(requeue_after=RUN_RECHECK_SECONDS)

    def _audit(
        self, state: Pass, action: str, details: dict[str, object], outcome: Outcome | None = None
    ) -> None:
        """Record an audit event, committed with the pass's status."""
        state.audits.append(self._audit_event(state, action, details, outcome))

    @staticmethod
    def _audit_event(
        state: Pass, action: str, details: dict[str, object], outcome: Outcome | None = None
    ) -> AuditEvent:
        return AuditEvent(
            time=state.now,
            actor=CONTROLLER_ACTOR,
            action=action,
            resource=f"{KIND_PREFIX}{state.name}",
            service=state.intent.service,
            outcome=outcome or (Outcome.INFO if action in {"pause", "resume"} else Outcome.SUCCESS),
            revision=state.status.source_revision,
            details=details,
        )


@dataclass(frozen=True)
class BatchOutcome:
    """Each key's outcome, whether each intent is Ready now (only for what was committed),
    and what each intent that exists depends on."""

    outcomes: dict[str, PassOutcome]
    ready: dict[str, bool]
    depends_on: dict[str, tuple[str, ...]]


def writes_of(passes: Iterable[Pass]) -> ReconcileWrites:
    """What a batch of finished passes writes: changed statuses, audit events, dispatches."""
    writes = ReconcileWrites()
    for state in passes:
        if state.status != state.before:
            writes.statuses.append(StatusWrite(state.name, state.status, state.generation))
        writes.audits.extend(state.audits)
        if state.dispatch is not None:
            writes.dispatches.append(state.dispatch)
    return writes


def is_ready(status: IntentStatus) -> bool:
    return is_condition_true(status.conditions, ConditionType.READY)


def ordinal(number: int) -> str:
    suffix = "th" if 10 <= number % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    return f"{number}{suffix}"


def current_progress(state: Pass) -> Progress:
    """Where the plan stands. A plan whose digest was already applied has nothing left to run:
    a new generation that changes nothing that decides the run (a label, the approval
    policy) does not run the playbooks again."""
    assert state.plan is not None
    if state.status.last_applied_digest == state.plan.digest:
        return Progress(None, 0, None, None)
    return progress(state.plan, state.generation, state.runs)


def build_run(
    state: Pass, index: int, attempt: int, agent_id: str, *, drift: Literal["check", "heal"] | None = None
) -> tuple[Run, RunRequest]:
    """The run row and the request that starts it; both keyed by the deterministic run id.

    ``drift`` makes it a drift check (``--check --diff``) or a heal run of round ``attempt``.
    """
    assert state.plan is not None
    step = state.plan.steps[index]
    spec = state.intent.spec
    if drift is None:
        identifier = run_id(state.name, state.generation, state.plan.digest, step.name, attempt)
    else:
        identifier = drift_run_id(
            state.name, state.generation, state.plan.digest, step.name, attempt, heal=drift == "heal"
        )
    check = drift == "check"
    run = Run(
        id=identifier,
        intent=state.name,
        generation=state.generation,
        plan_digest=state.plan.digest,
        step=step.name,
        step_index=index,
        attempt=attempt,
        epoch=state.epoch,
        agent_id=agent_id,
        check_mode=check,
        status=RunStatus.PENDING,
        created_at=state.now,
    )
    request = RunRequest(
        run_id=identifier,
        intent=state.name,
        generation=state.generation,
        plan_digest=state.plan.digest,
        step=step.name,
        step_index=index,
        attempt=attempt,
        epoch=state.epoch,
        playbook=step.playbook,
        role=step.role,
        inventory=state.plan.inventory,
        limit=state.plan.limit,
        tags=step.tags,
        skip_tags=step.skip_tags,
        extra_vars={**spec.vars, **step.vars},
        timeout_seconds=RUN_TIMEOUT_SECONDS,
        agent_id=agent_id,
        check=check,
        diff=check,
    )
    return run, request


#: Ready reasons that describe this generation's own progress; anything else is a gate.
PROGRESS_REASONS = frozenset(
    {Reason.APPLIED, Reason.APPLYING, Reason.APPLY_FAILED, Reason.PAUSED, Reason.SUSPENDED}
)


def summarize(state: Pass) -> None:
    """Derive Ready, Reconciling, Stalled and the observed fields from what the steps recorded."""
    generation = state.generation
    state.status.observed_generation = generation
    state.status.observed_revision = state.status.source_revision
    for kind in (ConditionType.PLANNED, ConditionType.APPROVED, ConditionType.SCHEDULED):
        found = find_condition(state.status.conditions, kind)
        if found is None or found.observed_generation != generation:
            state.condition(
                kind,
                ConditionStatus.UNKNOWN,
                Reason.NOT_REACHED,
                "Not checked yet: an earlier gate holds this intent.",
            )
    ready = find_condition(state.status.conditions, ConditionType.READY)
    if (
        ready is None
        or ready.observed_generation != generation
        or (ready.status is not ConditionStatus.TRUE and ready.reason not in PROGRESS_REASONS)
    ):
        why = state.status.blocked_by or "the controller is still working on it"
        state.condition(
            ConditionType.READY,
            ConditionStatus.FALSE,
            state.blocked_reason or Reason.APPLYING,
            f"Not applied yet: {why}.",
        )
        ready = find_condition(state.status.conditions, ConditionType.READY)
    _set_progress_conditions(state, ready)


def _set_progress_conditions(state: Pass, ready: Condition | None) -> None:
    """kstatus: Reconciling while work is under way, Stalled when only a person can help."""
    if state.stalled is not None:
        message = state.stalled.message[0].upper() + state.stalled.message[1:] + "."
        state.condition(ConditionType.STALLED, ConditionStatus.TRUE, state.stalled.reason, message)
        state.status.conditions = remove_condition(state.status.conditions, ConditionType.RECONCILING)
        return
    state.status.conditions = remove_condition(state.status.conditions, ConditionType.STALLED)
    if ready is not None and ready.reason == Reason.APPLYING and ready.status is ConditionStatus.FALSE:
        state.condition(ConditionType.RECONCILING, ConditionStatus.TRUE, Reason.APPLYING, ready.message)
    else:
        state.status.conditions = remove_condition(state.status.conditions, ConditionType.RECONCILING)


def _run_words(run: Run) -> str:
    """ "run X of step Y failed: error" for a drift check or heal that did not succeed."""
    error = f": {run.error}" if run.error else ""
    return f"run {run.id} of step {run.step} {run.status.value}{error}"
