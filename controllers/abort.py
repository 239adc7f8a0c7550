"""Aborting an intent: stop what runs now, and hold the plan until someone approves it again.

An abort is two records and a message, none of which touches git:

* a rejection of the current plan digest ("aborted: <reason>"), so the
  reconciler dispatches nothing more for this plan — under ``approval: Auto``
  too, because a rejection of the current digest overrides the policy;
* a ``CancelRun`` in the outbox for each run still in flight, addressed to
  the agent that holds it (the relay publishes it; the agent stops the
  playbook and reports ``canceled``);
* an ``abort`` audit event.

Approving the same plan again (``chiffonctl approve``) lets it run again:
the canceled step is retried as the next attempt.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from chiffon.bus import runs_queue
from chiffon.resources import Approval, AuditEvent, Decision, DeploymentIntent, Outcome, Run
from chiffon.resources.messages import CancelRun, encode_envelope, make_envelope
from chiffon.store import Store

__all__ = ["AbortError", "AbortReport", "abort_intent", "cancel_message_id"]


class AbortError(LookupError):
    """There is nothing to abort: no such intent, or no plan yet."""


@dataclass(frozen=True)
class AbortReport:
    intent: str
    digest: str
    canceled_runs: list[str]
    approval: Approval


def cancel_message_id(run: Run) -> str:
    """Deterministic, so an abort repeated after a crash enqueues the cancel once."""
    return f"cancel-{run.id}"


async def abort_intent(
    store: Store, name: str, *, actor: str, reason: str, now: datetime | None = None
) -> AbortReport:
    intent = await store.get_intent(name)
    if intent is None:
        raise AbortError(f"deploymentintent/{name} not found")
    plan = intent.status.plan if intent.status else None
    if plan is None:
        raise AbortError(f"deploymentintent/{name} has no plan yet, so nothing can be running")
    now = now or datetime.now(UTC)
    why = f"aborted: {reason}" if reason else "aborted"
    approval = Approval(
        intent=name, digest=plan.digest, decision=Decision.REJECTED, actor=actor, reason=why, created_at=now
    )
    await store.record_approval(approval)  # first: from here on nothing new is dispatched
    in_flight = [run for run in await store.list_runs(intent=name, limit=50) if not run.status.finished]
    canceled = [run.id for run in in_flight if await _send_cancel(store, run, why)]
    await store.record_audit(_audit(intent, actor, now, plan.digest, canceled, why))
    return AbortReport(name, plan.digest, canceled, approval)


async def _send_cancel(store: Store, run: Run, reason: str) -> bool:
    if run.agent_id is None:
        return False
    envelope = make_envelope(CancelRun(run_id=run.id, reason=reason), message_id=cancel_message_id(run))
    await store.enqueue_outbox(envelope.message_id, runs_queue(run.agent_id), encode_envelope(envelope))
    return True


def _audit(
    intent: DeploymentIntent, actor: str, now: datetime, digest: str, canceled: list[str], why: str
) -> AuditEvent:
    return AuditEvent(
        time=now,
        actor=actor,
        action="abort",
        resource=f"DeploymentIntent/{intent.metadata.name}",
        service=intent.service,
        outcome=Outcome.SUCCESS,
        details={"digest": digest, "canceledRuns": canceled, "reason": why},
    )
