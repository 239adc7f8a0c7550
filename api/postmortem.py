"""A failed run's post-mortem, in one read: what failed, where, with what, and what happened when.

DESIGN §8 asks failure records to keep the error, the resource state at the time and a
``suggestions`` field for the future post-mortem agent. The record is **computed on
read** from what is already stored — the run, its events, its audit events, the agent's
last heartbeat and the open suggestions — so there is no new table and no migration:

* ``failed``: the events whose status is ``failed`` or ``unreachable`` (task, host,
  output trimmed);
* ``resources``: the agent's capacity as its **latest** heartbeat left it (with that
  heartbeat's time: agents keep no capacity history, so this is the nearest known
  state, not a snapshot taken at the failure) and the run's own measured usage;
* ``timeline``: dispatch, acceptance, every changed or failed task and the result,
  merged from the run's audit events, its timestamps and its events, in time order,
  each with its offset from the dispatch;
* ``suggestions``: the open suggestions touching the files the intent's plan runs
  (chosen with :mod:`chiffon.api.summary`'s helpers, as the summary card does);
* ``annotations``: always ``[]`` here — the slot a future analysis agent fills (and
  persists) alongside the suggestions.

A successful run gets the same document with ``outcome: successful`` and nothing
under ``failed``. :func:`assemble` is pure over what :func:`postmortem` reads.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from chiffon.agents.suggestions.relevance import plan_files, playbook_roles, touches
from chiffon.api.summary import AUDIT_COUNT_LIMIT, audit_resource, suggestion_row
from chiffon.resources import Agent, AuditEvent, DeploymentIntent, Run
from chiffon.resources.messages import AnsibleEvent
from chiffon.store import Store
from chiffon.store.records import Suggestion

OUTPUT_CHARS = 500
"""How much of a failed task's output is kept (its start: ansible puts the message first)."""
FAILED_STATUSES = frozenset({"failed", "unreachable"})
TIMELINE_STATUSES = FAILED_STATUSES | {"changed"}
# Entries at the same instant keep the order things happen in.
RANK_DISPATCH, RANK_STARTED, RANK_TASK, RANK_AUDIT, RANK_RESULT = range(5)


@dataclass(frozen=True)
class Moment:
    """One timeline entry before it is written out: when, a tie-breaking rank, what."""

    time: datetime
    rank: int
    what: str
    source: str


def utc(moment: datetime) -> datetime:
    """Aware UTC (ansible-runner's event times are naive UTC)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def trimmed(output: str, limit: int = OUTPUT_CHARS) -> str:
    text = output.strip()
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def failed_tasks(events: Iterable[AnsibleEvent]) -> list[dict[str, Any]]:
    return [
        {
            "task": event.task,
            "host": event.host,
            "status": event.status,
            "output": trimmed(event.output),
            "time": utc(event.created).isoformat() if event.created else None,
        }
        for event in events
        if event.status in FAILED_STATUSES
    ]


def agent_state(agent: Agent | None, agent_id: str | None) -> dict[str, Any] | None:
    """The agent as its latest heartbeat left it, said to be the latest known, with its time."""
    if agent_id is None:
        return None
    if agent is None:
        return {"id": agent_id, "known": False, "capacity": None}
    return {
        "id": agent.id,
        "known": True,
        "kind": agent.kind.value,
        "online": agent.online,
        "capacityAsOf": utc(agent.last_seen).isoformat() if agent.last_seen else None,
        "capacityIs": "latest known heartbeat (agents keep no capacity history)",
        "capacity": agent.capacity.to_wire() if agent.capacity else None,
    }


def audit_moment(event: AuditEvent) -> Moment:
    details = event.details
    if event.action == "dispatch":
        return Moment(
            event.time, RANK_DISPATCH, f"dispatched to {details.get('agent') or 'an agent'}", "audit"
        )
    said = details.get("error") or details.get("message") or details.get("reason")
    status = details.get("status")
    what = event.action + (f" {status}" if status else "")
    if details.get("rc") is not None:
        what += f" (rc {details['rc']})"
    rank = RANK_RESULT if event.action == "run.result" else RANK_AUDIT
    return Moment(event.time, rank, what + (f": {said}" if said else ""), "audit")


def task_moment(event: AnsibleEvent) -> Moment | None:
    if event.created is None or event.status not in TIMELINE_STATUSES:
        return None
    where = f" @ {event.host}" if event.host else ""
    return Moment(event.created, RANK_TASK, f"{event.status}: {event.task or event.event}{where}", "event")


def run_moments(run: Run, audits: Sequence[AuditEvent]) -> list[Moment]:
    """What the run's own timestamps say, where no audit event already says it."""
    actions = {event.action for event in audits}
    moments: list[Moment] = []
    if "dispatch" not in actions and run.created_at is not None:
        moments.append(Moment(run.created_at, RANK_DISPATCH, "created", "run"))
    if run.started_at is not None:
        agent = f" by {run.agent_id}" if run.agent_id else ""
        moments.append(Moment(run.started_at, RANK_STARTED, f"accepted{agent}, started", "run"))
    if "run.result" not in actions and run.finished_at is not None:
        moments.append(Moment(run.finished_at, RANK_RESULT, f"finished {run.status.value}", "run"))
    return moments


def timeline(run: Run, events: Iterable[AnsibleEvent], audits: Sequence[AuditEvent]) -> list[dict[str, Any]]:
    """Everything known about the run in time order, each with seconds since its dispatch."""
    tasks = [moment for event in events if (moment := task_moment(event)) is not None]
    moments = sorted(
        [*run_moments(run, audits), *(audit_moment(event) for event in audits), *tasks],
        key=lambda moment: (utc(moment.time), moment.rank),
    )
    if not moments:
        return []
    origin = next((utc(m.time) for m in moments if m.rank == RANK_DISPATCH), utc(moments[0].time))
    return [
        {
            "time": utc(moment.time).isoformat(),
            "offsetSeconds": round((utc(moment.time) - origin).total_seconds(), 3),
            "what": moment.what,
            "source": moment.source,
        }
        for moment in moments
    ]


def assemble(
    run: Run,
    *,
    intent: DeploymentIntent | None,
    events: Sequence[AnsibleEvent],
    audits: Sequence[AuditEvent],
    agent: Agent | None,
    suggestions: Sequence[Suggestion],
    roles: Iterable[str],
) -> dict[str, Any]:
    """The post-mortem document of ``run``; ``audits`` are the audit events about this run."""
    playbooks, role_names = plan_files(intent, roles) if intent is not None else (set(), set())
    resource = audit_resource(run.intent)
    return {
        "apiVersion": "v1",
        "kind": "PostMortem",
        "run": run.to_wire(),
        "intent": run.intent,
        "step": run.step,
        "attempt": run.attempt,
        "outcome": run.status.value,
        "rc": run.rc,
        "error": run.error,
        "failed": failed_tasks(events),
        "resources": {
            "agent": agent_state(agent, run.agent_id),
            "used": run.usage.to_wire() if run.usage else None,
        },
        "timeline": timeline(run, events, audits),
        "suggestions": [
            suggestion_row(s)
            for s in suggestions
            if s.status == "open" and touches(s.file, playbooks, role_names)
        ],
        "annotations": [],
        "audit": {"resource": resource, "href": f"/api/v1/audit?resource={quote(resource, safe='')}"},
    }


async def postmortem(store: Store, run_id: str, *, infra_repo: Path | None) -> dict[str, Any] | None:
    """The post-mortem of run ``run_id``; None when there is no such run."""
    run = await store.get_run(run_id)
    if run is None:
        return None
    intent = await store.get_intent(run.intent)
    events = await store.list_run_events(run.id)
    agent = await store.get_agent(run.agent_id) if run.agent_id else None
    trail = await store.list_audit(resource=audit_resource(run.intent), limit=AUDIT_COUNT_LIMIT)
    playbooks, _ = plan_files(intent, ()) if intent is not None else (set(), set())
    return assemble(
        run,
        intent=intent,
        events=events,
        audits=[event for event in trail if event.details.get("run") == run.id],
        agent=agent,
        suggestions=await store.list_suggestions("open"),
        roles=playbook_roles(infra_repo, sorted(playbooks)),
    )
