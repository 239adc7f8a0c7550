"""Agent liveness: which agents are offline, and what becomes of the runs they held.

A level-based check that the leading controller runs every few seconds, and at
once when an agent says goodbye or comes back. :func:`decide` is pure: from
the agents (as the store and this leader's own ears know them), the runs in
flight and the time, it says what must change. :class:`Liveness` reads,
decides, applies each change in one transaction, enqueues the intents whose
runs changed and wakes the intents waiting for capacity when an agent comes or
goes.

**Agents.** An agent is offline once it has been silent for
``missed_heartbeats`` (3) times its heartbeat interval — the
``intervalSeconds`` its own latest heartbeat advertised, else the
``heartbeat_interval`` setting (15 s) — and at once when it sends
``AgentOffline``. Silence is counted from its last heartbeat, but never from
before this controller took the lead: a new leader, whose heartbeat consumer
has a backlog to read, gives every agent one full deadline to be heard.
Going offline sets ``agents.online = false`` and records ``agent.offline``;
the next heartbeat brings the agent back, recorded as ``agent.online``.

**Runs** (``RunStatus``; ``error`` carries the controller's note while a run is
in flight):

* ``pending`` — dispatched, not yet accepted. The request waits in the agent's
  durable queue and runs when the agent comes back, so the run stays
  ``pending``; while its agent is offline, the note says so.
* ``starting``/``running`` → ``unknown`` — no sign of the run for one heartbeat
  deadline: its agent stopped heartbeating, or it heartbeats but its
  heartbeats stopped listing the run in ``runs`` (it restarted without it).
* ``unknown`` → ``running`` — the agent lists the run in a heartbeat again: it
  claims it.
* ``unknown`` → ``failed`` — no claim and no result within ``lost_run_grace``
  (default: one more heartbeat deadline). The intent is requeued and retries
  the step as after any failure: a new attempt (a new run id) after 10 s,
  20 s …, at most three attempts, then ``Stalled``.

A ``RunResult`` that arrives while a run is ``unknown`` finishes it as usual;
one that arrives after the run was failed here is ignored (the first ending
counts). Every write is a compare-and-set on the run's status or the agent's
last heartbeat, so a result or a heartbeat landing between the read and the
write wins, and the next check looks again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from chiffon.bus import Delivery, Handler
from chiffon.controllers.manager import sleep_until
from chiffon.resources import AuditEvent, Outcome, Run, RunStatus
from chiffon.resources.messages import AgentOffline, Heartbeat
from chiffon.settings import Settings
from chiffon.store import Store

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

ACTOR = "controller"
IN_FLIGHT = (RunStatus.PENDING, RunStatus.STARTING, RunStatus.RUNNING, RunStatus.UNKNOWN)
EXECUTING = frozenset({RunStatus.STARTING, RunStatus.RUNNING})
WAKE_MARGIN = 0.05
"""Seconds past a deadline to wake at, so that the check finds it passed."""
MIN_SLEEP = 0.1


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class LivenessConfig:
    """The timings, from :class:`~chiffon.settings.Settings` (``CHIFFON_*`` / ``chiffon.yaml``)."""

    heartbeat_interval: float = 15.0
    """Seconds between heartbeats, assumed for an agent that does not advertise its own."""
    missed_heartbeats: int = 3
    """An agent silent for this many of its intervals is offline."""
    lost_run_grace: float | None = None
    """Seconds an ``unknown`` run waits for a claim or a result; None: one more deadline."""
    check_interval: float = 5.0
    """The longest pause between two checks (they also run when something is due, or on news)."""

    def __post_init__(self) -> None:
        if self.heartbeat_interval <= 0 or self.check_interval <= 0 or self.missed_heartbeats < 1:
            raise ValueError("liveness intervals must be positive and missed_heartbeats at least 1")
        if self.lost_run_grace is not None and self.lost_run_grace <= 0:
            raise ValueError("lost_run_grace must be positive")

    @classmethod
    def from_settings(cls, settings: Settings) -> LivenessConfig:
        return cls(
            heartbeat_interval=settings.heartbeat_interval,
            missed_heartbeats=settings.missed_heartbeats,
            lost_run_grace=settings.lost_run_grace,
            check_interval=settings.liveness_check_interval,
        )

    def deadline(self, interval: float | None) -> timedelta:
        """How long an agent heartbeating every ``interval`` seconds may be silent."""
        return timedelta(seconds=self.missed_heartbeats * (interval or self.heartbeat_interval))

    def grace(self, interval: float | None) -> timedelta:
        if self.lost_run_grace is not None:
            return timedelta(seconds=self.lost_run_grace)
        return self.deadline(interval)


@dataclass(frozen=True)
class AgentFacts:
    """What is known about one agent's liveness: the store's row plus this leader's ears."""

    id: str
    online: bool = False
    """The store's flag: what the heartbeat consumer or the last verdict wrote."""
    last_seen: datetime | None = None
    """The store's time of its last heartbeat."""
    heard_at: datetime | None = None
    """When this leader last received a heartbeat from it; None if it has not yet."""
    interval: float | None = None
    """The ``intervalSeconds`` of that heartbeat."""
    claims: Mapping[str, datetime] | None = None
    """Run id → when a heartbeat last listed it; None when its heartbeats do not list runs."""
    offline_at: datetime | None = None
    """When it said it is going offline (AgentOffline, or a heartbeat with ``online: false``)."""
    offline_reason: str = ""
    declared_offline: bool = False
    """The last verdict recorded (``agent.offline``) stands: it has not come back since."""


@dataclass(frozen=True)
class MarkOffline:
    """Set the agent offline, unless a heartbeat newer than ``seen`` arrived meanwhile."""

    agent_id: str
    seen: datetime | None
    audit: AuditEvent


@dataclass(frozen=True)
class MarkOnline:
    agent_id: str
    audit: AuditEvent


@dataclass(frozen=True)
class ChangeRun:
    """Give a run a new status and note, if its status is still ``expected``."""

    run_id: str
    intent: str
    expected: RunStatus
    status: RunStatus
    error: str | None
    finished_at: datetime | None = None
    audit: AuditEvent | None = None


Action = MarkOffline | MarkOnline | ChangeRun


@dataclass(frozen=True)
class Decisions:
    actions: tuple[Action, ...] = ()
    next_check: datetime | None = None
    """When something will next be due if nothing else happens; None if nothing is pending."""


def when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def seen_at(agent: AgentFacts) -> datetime | None:
    """Its last heartbeat as far as anyone recorded."""
    return max((moment for moment in (agent.last_seen, agent.heard_at) if moment is not None), default=None)


def last_heartbeat(agent: AgentFacts) -> str:
    seen = seen_at(agent)
    return f"last heartbeat {when(seen)}" if seen else "no heartbeat on record"


def last_sign(agent: AgentFacts, since: datetime) -> datetime:
    """The agent's last heartbeat, but not before this leader started listening."""
    return max(moment for moment in (agent.last_seen, agent.heard_at, since) if moment is not None)


def is_alive(agent: AgentFacts, now: datetime, config: LivenessConfig, since: datetime) -> bool:
    if agent.offline_at is not None:
        return False
    if agent.heard_at is None and not agent.online:
        return False  # offline in the store, and not heard from since
    return now - last_sign(agent, since) <= config.deadline(agent.interval)


def run_sign(run: Run, agent: AgentFacts, since: datetime) -> datetime:
    """The last moment the run was known to be alive on its agent."""
    if agent.claims is None:  # its heartbeats do not list runs: the agent's own sign stands for them
        return last_sign(agent, since)
    moments = (since, run.created_at, run.started_at, agent.claims.get(run.id))
    return max(moment for moment in moments if moment is not None)


def decide(
    agents: Sequence[AgentFacts],
    runs: Sequence[Run],
    now: datetime,
    config: LivenessConfig,
    *,
    since: datetime,
    unknown_since: Mapping[str, datetime] | None = None,
) -> Decisions:
    """What must change (pure).

    ``runs`` are the runs in flight; ``since`` is when this leader started
    listening; ``unknown_since`` maps the runs this leader made ``unknown`` to
    when (others count from ``since``).
    """
    actions: list[Action] = []
    due: list[datetime] = []
    by_id = {agent.id: agent for agent in agents}
    for agent in agents:
        action, deadline = _agent_verdict(agent, now, config, since)
        if action is not None:
            actions.append(action)
        if deadline is not None:
            due.append(deadline)
    for run in runs:
        if run.agent_id is None or run.status not in IN_FLIGHT:
            continue
        agent = by_id.get(run.agent_id) or AgentFacts(id=run.agent_id)
        change, deadline = _run_verdict(run, agent, now, config, since, unknown_since or {})
        if change is not None:
            actions.append(change)
        if deadline is not None:
            due.append(deadline)
    later = [moment for moment in due if moment > now]
    return Decisions(tuple(actions), min(later) if later else None)


def _agent_verdict(
    agent: AgentFacts, now: datetime, config: LivenessConfig, since: datetime
) -> tuple[Action | None, datetime | None]:
    deadline = config.deadline(agent.interval)
    if is_alive(agent, now, config, since):
        due = last_sign(agent, since) + deadline
        if agent.declared_offline or not agent.online:
            audit = _agent_audit(agent, "agent.online", Outcome.INFO, now, "heartbeating again")
            return MarkOnline(agent.id, audit), due
        return None, due
    if agent.declared_offline and not agent.online:
        return None, None
    if agent.offline_at is not None:
        reason, outcome = (
            f"said it is going offline: {agent.offline_reason or 'no reason given'}",
            Outcome.INFO,
        )
    else:
        interval = agent.interval or config.heartbeat_interval
        reason = (
            f"missed {config.missed_heartbeats} heartbeats (every {interval:g}s); {last_heartbeat(agent)}"
        )
        outcome = Outcome.FAILURE
    audit = _agent_audit(agent, "agent.offline", outcome, now, reason, deadline=deadline)
    return MarkOffline(agent.id, agent.last_seen, audit), None


def _agent_audit(
    agent: AgentFacts,
    action: str,
    outcome: Outcome,
    now: datetime,
    reason: str,
    *,
    deadline: timedelta | None = None,
) -> AuditEvent:
    seen = seen_at(agent)
    details: dict[str, object] = {"agent": agent.id, "last_seen": seen.isoformat() if seen else None}
    details["reason"] = reason
    if deadline is not None:
        details["deadline_seconds"] = deadline.total_seconds()
    return AuditEvent(
        time=now, actor=ACTOR, action=action, resource=f"Agent/{agent.id}", outcome=outcome, details=details
    )


def _run_verdict(
    run: Run,
    agent: AgentFacts,
    now: datetime,
    config: LivenessConfig,
    since: datetime,
    unknown_since: Mapping[str, datetime],
) -> tuple[ChangeRun | None, datetime | None]:
    deadline = config.deadline(agent.interval)
    alive = is_alive(agent, now, config, since)
    silent = now - last_sign(agent, since) > deadline

    if run.status is RunStatus.PENDING:
        note = None
        if not alive:
            note = (
                f"queued for agent {agent.id}, which is offline ({last_heartbeat(agent)}); "
                f"it starts when {agent.id} comes back"
            )
        return _note(run, note), None

    if run.status in EXECUTING:
        sign = run_sign(run, agent, since)
        if now - sign <= deadline:
            return _note(run, None), sign + deadline
        if silent:
            message = f"agent {agent.id} stopped heartbeating ({last_heartbeat(agent)})"
        else:
            message = f"agent {agent.id} heartbeats but has not listed this run since {when(sign)}"
        audit = _run_audit(run, "run.unknown", RunStatus.UNKNOWN, now, message)
        return ChangeRun(run.id, run.intent, run.status, RunStatus.UNKNOWN, message, audit=audit), None

    # unknown
    went = unknown_since.get(run.id, since)
    claimed = agent.claims.get(run.id) if agent.claims is not None else None
    if alive and claimed is not None and claimed > went:
        message = f"agent {agent.id} claimed the run at {when(claimed)}"
        audit = _run_audit(run, "run.claimed", RunStatus.RUNNING, now, message)
        return ChangeRun(run.id, run.intent, run.status, RunStatus.RUNNING, None, audit=audit), None
    grace = config.grace(agent.interval)
    if now - went < grace:
        return None, went + grace
    if silent:
        sign = seen_at(agent) or since
        what = f"agent {agent.id} went silent at {when(sign)}"
    elif agent.claims is not None:
        sign = run_sign(run, agent, since)
        what = f"agent {agent.id} is back but stopped listing the run at {when(sign)} (restarted without it?)"
    else:
        sign = went
        what = f"agent {agent.id} is back but does not list its runs, so it cannot claim this one"
    message = f"{what} while running step {run.step}; no result after {(now - sign).total_seconds():.0f}s"
    audit = _run_audit(run, "run.lost", RunStatus.FAILED, now, message)
    return (
        ChangeRun(run.id, run.intent, run.status, RunStatus.FAILED, message, finished_at=now, audit=audit),
        None,
    )


def _note(run: Run, note: str | None) -> ChangeRun | None:
    if run.error == note:
        return None
    return ChangeRun(run.id, run.intent, run.status, run.status, note)


def _run_audit(run: Run, action: str, status: RunStatus, now: datetime, message: str) -> AuditEvent:
    return AuditEvent(
        time=now,
        actor=ACTOR,
        action=action,
        resource=f"DeploymentIntent/{run.intent}",
        outcome=Outcome.FAILURE if status is RunStatus.FAILED else Outcome.INFO,
        details={
            "run": run.id,
            "step": run.step,
            "attempt": run.attempt,
            "agent": run.agent_id,
            "status": status.value,
            "message": message,
        },
    )


# The loop -----------------------------------------------------------------------------------


@dataclass
class _Heard:
    """What this leader heard from one agent on the heartbeats queue."""

    at: datetime
    interval: float | None = None
    lists_runs: bool = False
    claims: dict[str, datetime] = field(default_factory=dict)
    offline_at: datetime | None = None
    offline_reason: str = ""


class Liveness:
    """Runs :func:`decide` while leading and applies what it says."""

    def __init__(
        self,
        store: Store,
        config: LivenessConfig | None = None,
        *,
        enqueue: Callable[[str], None],
        on_capacity: Callable[[], None],
        clock: Clock = utcnow,
    ) -> None:
        self.store = store
        self.config = config or LivenessConfig()
        self._enqueue = enqueue
        self._on_capacity = on_capacity
        self._clock = clock
        self._heard: dict[str, _Heard] = {}
        self._declared_offline: set[str] = set()
        self._unknown_since: dict[str, datetime] = {}
        self._since = clock()
        self._wake = asyncio.Event()

    # Listening ---------------------------------------------------------------------------

    def observing(self, handler: Handler) -> Handler:
        """``handler`` for the heartbeats queue, noting what each message says about liveness."""

        async def handle(delivery: Delivery) -> None:
            await handler(delivery)
            self.note(delivery.envelope.payload)

        return handle

    def note(self, payload: object) -> None:
        """Remember a Heartbeat or AgentOffline (no I/O); wake the check if it changes a verdict."""
        now = self._clock()
        if isinstance(payload, Heartbeat):
            heard = self._heard.get(payload.agent_id) or _Heard(at=now)
            heard.at = now
            heard.interval = payload.interval_seconds
            heard.lists_runs = payload.runs is not None
            for run_id in payload.runs or ():
                heard.claims[run_id] = now
            heard.offline_at = None if payload.online else now
            heard.offline_reason = "" if payload.online else "its heartbeat says it is offline"
            self._heard[payload.agent_id] = heard
            claims_lost_run = any(run_id in self._unknown_since for run_id in payload.runs or ())
            if payload.agent_id in self._declared_offline or claims_lost_run or not payload.online:
                self._wake.set()
        elif isinstance(payload, AgentOffline):
            heard = self._heard.setdefault(payload.agent_id, _Heard(at=now))
            heard.offline_at = now
            heard.offline_reason = payload.reason
            self._wake.set()

    # Checking ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Begin a term as leader: silence counts from now; agents offline in the store stay so."""
        self._since = self._clock()
        self._unknown_since.clear()
        self._declared_offline = {agent.id for agent in await self.store.agent_presence() if not agent.online}

    async def check(self) -> Decisions:
        """Read, decide, apply: one pass."""
        agents = await self.store.agent_presence()
        runs = await self.store.runs_in_flight()
        self._forget(runs)
        facts = [self._facts(agent.id, agent.online, agent.last_seen) for agent in agents]
        now = self._clock()
        decisions = decide(
            facts, runs, now, self.config, since=self._since, unknown_since=dict(self._unknown_since)
        )
        for action in decisions.actions:
            await self._apply(action, now)
        return decisions

    def _facts(self, agent_id: str, online: bool, last_seen: datetime | None) -> AgentFacts:
        heard = self._heard.get(agent_id)
        return AgentFacts(
            id=agent_id,
            online=online,
            last_seen=last_seen,
            heard_at=heard.at if heard else None,
            interval=heard.interval if heard else None,
            claims=dict(heard.claims) if heard and heard.lists_runs else None,
            offline_at=heard.offline_at if heard else None,
            offline_reason=heard.offline_reason if heard else "",
            declared_offline=agent_id in self._declared_offline,
        )

    def _forget(self, runs: Sequence[Run]) -> None:
        """Keep memory bounded: claims and unknown times only of runs still in flight."""
        in_flight = {run.id for run in runs}
        unknown = {run.id for run in runs if run.status is RunStatus.UNKNOWN}
        for run_id in set(self._unknown_since) - unknown:
            del self._unknown_since[run_id]
        for heard in self._heard.values():
            for run_id in set(heard.claims) - in_flight:
                del heard.claims[run_id]

    async def _apply(self, action: Action, now: datetime) -> None:
        if isinstance(action, MarkOffline):
            if await self.store.mark_agent_offline(action.agent_id, seen=action.seen, audit=action.audit):
                self._declared_offline.add(action.agent_id)
                log.warning("agent %s is offline: %s", action.agent_id, action.audit.details.get("reason"))
                self._on_capacity()
        elif isinstance(action, MarkOnline):
            await self.store.mark_agent_online(action.agent_id, audit=action.audit)
            self._declared_offline.discard(action.agent_id)
            log.info("agent %s is back online", action.agent_id)
            self._on_capacity()
        else:
            changed = await self.store.set_run_status(
                action.run_id,
                expected=action.expected,
                status=action.status,
                error=action.error,
                finished_at=action.finished_at,
                audit=action.audit,
            )
            if not changed:
                return  # a result or a heartbeat got there first: the next check sees it
            if action.status is RunStatus.UNKNOWN:
                self._unknown_since[action.run_id] = now
            if action.status is not action.expected:
                log.warning("run %s is %s: %s", action.run_id, action.status.value, action.error or "claimed")
            self._enqueue(action.intent)

    async def run(self, stop: asyncio.Event) -> None:
        """Check until ``stop`` is set: every ``check_interval`` at most, sooner when something is due."""
        started = False
        while not stop.is_set():
            self._wake.clear()
            delay = self.config.check_interval
            try:
                if not started:
                    await self.start()
                    started = True
                decisions = await self.check()
            except Exception:  # a database hiccup must not end liveness checking
                log.warning("liveness check failed; retrying", exc_info=True)
            else:
                if decisions.next_check is not None:
                    until = (decisions.next_check - self._clock()).total_seconds() + WAKE_MARGIN
                    delay = min(delay, max(MIN_SLEEP, until))
            await sleep_until(delay, stop, self._wake)
