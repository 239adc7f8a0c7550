"""What happened to an intent's plan, in one read: the chat page's summary card.

For one plan digest (the intent's current plan unless asked for another) the
summary lists each planned step with its latest run — status, when, how long,
on which agent, how many tasks changed or failed, the CPU time and peak memory
the agent measured — the totals, the open suggestions that touch the files the
plan runs (its playbooks and the roles they use), and where the audit trail is.

:func:`summarize` is pure over what :func:`intent_summary` reads: the intent,
its runs, the suggestions, the number of audit events and the roles named by
the plan's playbooks (read from the homelab-infra checkout; a file that cannot
be read simply contributes no roles).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from chiffon.agents.suggestions.relevance import plan_files, playbook_roles, touches
from chiffon.resources import ConditionStatus, DeploymentIntent, Run, find_condition
from chiffon.store import Store
from chiffon.store.records import Suggestion

AUDIT_COUNT_LIMIT = 1000
RUNS_READ = 200


def audit_resource(name: str) -> str:
    return f"DeploymentIntent/{name}"


def chosen_digest(intent: DeploymentIntent, runs: Sequence[Run], wanted: str | None) -> str | None:
    """The digest asked for (a prefix will do), else the current plan's, the last applied, the last run's."""
    status = intent.status
    known = [
        status.plan.digest if status and status.plan else None,
        status.last_applied_digest if status else None,
        *(run.plan_digest for run in runs),
    ]
    candidates = [digest for digest in known if digest]
    if wanted:
        return next((digest for digest in candidates if digest.startswith(wanted)), wanted)
    return candidates[0] if candidates else None


def latest_per_step(runs: Iterable[Run], digest: str | None) -> dict[str, Run]:
    """The last attempt of each step of ``digest`` (check-mode drift runs are not the plan's runs)."""
    found: dict[str, Run] = {}
    for run in runs:
        if run.plan_digest != digest or run.check_mode:
            continue
        seen = found.get(run.step)
        if seen is None or run.attempt > seen.attempt:
            found[run.step] = run
    return found


def run_seconds(run: Run) -> float | None:
    if run.started_at is None or run.finished_at is None:
        return None
    return round(max(0.0, (run.finished_at - run.started_at).total_seconds()), 3)


def step_row(name: str, index: int, run: Run | None) -> dict[str, Any]:
    if run is None:
        return {"name": name, "index": index, "run": None, "status": "not started"}
    hosts = run.stats.values()
    row: dict[str, Any] = {
        "name": name,
        "index": index,
        "run": run.id,
        "attempt": run.attempt,
        "status": run.status.value,
        "startedAt": run.started_at.isoformat() if run.started_at else None,
        "finishedAt": run.finished_at.isoformat() if run.finished_at else None,
        "durationSeconds": run_seconds(run),
        "agent": run.agent_id,
        "rc": run.rc,
        "ok": sum(stats.ok for stats in hosts),
        "changed": sum(stats.changed for stats in hosts),
        "failed": sum(stats.failed + stats.unreachable for stats in hosts),
        "error": run.error,
    }
    if run.usage is not None:
        row["resourcesUsed"] = run.usage.to_wire()
    return row


def outcome(steps: Sequence[Mapping[str, Any]]) -> str:
    """``succeeded`` (every step did), ``failed``/``timeout``/``canceled`` (a step ended so), else
    ``waiting`` (nothing started yet) or ``running``."""
    statuses = [step["status"] for step in steps]
    for ended in ("failed", "timeout", "canceled"):
        if ended in statuses:
            return ended
    if statuses and all(status == "successful" for status in statuses):
        return "succeeded"
    return "waiting" if all(status == "not started" for status in statuses) else "running"


def suggestion_row(suggestion: Suggestion) -> dict[str, Any]:
    return {
        "id": suggestion.id,
        "category": suggestion.category,
        "file": suggestion.file,
        "line": suggestion.line,
        "reasoning": suggestion.reasoning,
        "hasPatch": suggestion.patch is not None,
    }


def summarize(
    intent: DeploymentIntent,
    runs: Sequence[Run],
    *,
    digest: str | None,
    suggestions: Sequence[Suggestion],
    roles: Iterable[str],
    audit_events: int,
) -> dict[str, Any]:
    name = intent.metadata.name
    status = intent.status
    plan = status.plan if status else None
    latest = latest_per_step(runs, digest)
    if plan is not None and plan.digest == digest:
        names = [step.name for step in plan.steps]
    else:  # an older plan: its steps are the ones that ran
        names = [run.step for run in sorted(latest.values(), key=lambda run: run.step_index)]
    steps = [step_row(step, index, latest.get(step)) for index, step in enumerate(names)]
    durations = [step["durationSeconds"] for step in steps if step.get("durationSeconds") is not None]
    used = [step["resourcesUsed"] for step in steps if "resourcesUsed" in step]
    cpu = [u["cpuSeconds"] for u in used if u.get("cpuSeconds") is not None]
    memory = [u["peakMemoryMib"] for u in used if u.get("peakMemoryMib") is not None]
    ready = find_condition(status.conditions, "Ready") if status else None
    playbooks, role_names = plan_files(intent, roles)
    resource = audit_resource(name)
    return {
        "intent": name,
        "generation": intent.metadata.generation,
        "digest": digest,
        "current": plan is not None and plan.digest == digest,
        "ready": bool(
            ready is not None
            and ready.status is ConditionStatus.TRUE
            and status is not None
            and status.last_applied_digest == digest
        ),
        "outcome": outcome(steps),
        "steps": steps,
        "totalSeconds": round(sum(durations), 3) if durations else None,
        "resourcesUsed": {
            "cpuSeconds": round(sum(cpu), 3) if cpu else None,
            "peakMemoryMib": max(memory) if memory else None,
        },
        "resourcesRequested": intent.spec.resources.to_wire(),
        "drift": drift_row(intent, digest),
        "suggestions": [
            suggestion_row(s)
            for s in suggestions
            if s.status == "open" and touches(s.file, playbooks, role_names)
        ],
        "audit": {
            "resource": resource,
            "href": f"/api/v1/audit?resource={quote(resource, safe='')}",
            "page": f"/#/audit/{quote(name, safe='')}",
            "events": audit_events,
        },
    }


def drift_row(intent: DeploymentIntent, digest: str | None) -> dict[str, Any] | None:
    """What drift detection found for the plan ``digest`` (None before its first check)."""
    drift = intent.status.drift if intent.status else None
    if drift is None or drift.digest != digest:
        return None
    return drift.to_wire()


async def intent_summary(
    store: Store, name: str, *, infra_repo: Path | None = None, plan: str | None = None
) -> dict[str, Any] | None:
    """The summary of ``name``'s plan (``plan``: a digest or its prefix; default the current one).

    None when there is no such intent.
    """
    intent = await store.get_intent(name)
    if intent is None:
        return None
    runs = await store.list_runs(intent=name, limit=RUNS_READ)
    digest = chosen_digest(intent, runs, plan)
    playbooks, _ = plan_files(intent, ())
    suggestions = await store.list_suggestions("open")
    audit = await store.list_audit(resource=audit_resource(name), limit=AUDIT_COUNT_LIMIT)
    return summarize(
        intent,
        runs,
        digest=digest,
        suggestions=suggestions,
        roles=playbook_roles(infra_repo, sorted(playbooks)),
        audit_events=len(audit),
    )
