"""Drift detection: what the check-mode runs of an applied plan say (pure, table-tested).

A Ready intent's plan is run again in check mode (``--check --diff``) every
``driftDetection.interval``: one *round* runs every step, one after the other, each
as a run whose id is derived from (intent, generation, digest, step, round), so a
repeated pass finds the check it already started. A round in which any task would
change something finds drift; the tasks and their ``--diff`` output become the
``Drifted`` condition and ``status.drift.changes``.

``mode: Heal`` then applies the plan again, but only once the *heal digest* — the
plan digest bound to the round that found the drift — is approved like any plan
(``Auto`` intents approve it themselves). The heal runs are the plan's steps run for
real, with ids of their own, one step after the other.

The reconciler (:meth:`IntentReconciler.drift`) reads and writes; this module decides.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from chiffon.resources import DriftChange, DriftStatus, Plan, Run, RunStatus, drift_run_id, parse_duration
from chiffon.resources.intent import MAX_DIFF_CHARS, MAX_DRIFT_CHANGES, DriftDetection
from chiffon.resources.messages import AnsibleEvent

DIFF_EVENT = "runner_on_file_diff"


@dataclass(frozen=True)
class RoundState:
    """How far one round (check or heal) got: the next step to run, or why not."""

    runs: list[Run]  # the round's runs found so far, in step order
    next_step: int | None  # the first step without a run; None when every step has one
    in_flight: Run | None  # a run of the round that has not finished
    failed: Run | None  # a run of the round that ended other than successfully

    @property
    def complete(self) -> bool:
        return self.next_step is None and self.in_flight is None and self.failed is None


def round_state(
    plan: Plan, intent: str, generation: int, runs: Sequence[Run], round_: int, *, heal: bool
) -> RoundState:
    """Where round ``round_`` stands, found by the run ids it would have used."""
    by_id = {run.id: run for run in runs}
    found: list[Run] = []
    for index, step in enumerate(plan.steps):
        run = by_id.get(drift_run_id(intent, generation, plan.digest, step.name, round_, heal=heal))
        if run is None:
            return RoundState(found, index, None, None)
        found.append(run)
        if not run.status.finished:
            return RoundState(found, None, run, None)
        if run.status is not RunStatus.SUCCESSFUL:
            return RoundState(found, None, None, run)
    return RoundState(found, None, None, None)


def current(status_drift: DriftStatus | None, digest: str) -> DriftStatus:
    """The drift record of the plan ``digest``; a new plan starts a fresh one."""
    if status_drift is not None and status_drift.digest == digest:
        return status_drift
    return DriftStatus(digest=digest)


def interval_of(settings: DriftDetection) -> timedelta:
    return parse_duration(settings.interval)


def due_at(drift: DriftStatus, ready_since: datetime, interval: timedelta) -> datetime:
    """When the next round starts: an interval after the plan was applied or last checked."""
    last = max(ready_since, drift.checked_at) if drift.checked_at else ready_since
    return last + interval


def heal_digest(plan_digest: str, round_: int) -> str:
    """What an approval names to heal the drift round ``round_`` found: never a plan's own digest."""
    return hashlib.sha256(f"heal\x00{plan_digest}\x00{round_}".encode()).hexdigest()


def changed_runs(runs: Sequence[Run]) -> list[Run]:
    """The check runs in which some task would have changed something."""
    return [run for run in runs if any(stats.changed for stats in run.stats.values())]


def changes_of(runs: Sequence[Run], events_of: Mapping[str, Sequence[AnsibleEvent]]) -> list[DriftChange]:
    """Each task that would change, on each host, with its ``--diff`` output when ansible printed one.

    A changed run whose events were all dropped (trimmed, ``no_log``) still counts: it
    becomes one change per host that the stats say changed.
    """
    changes: dict[tuple[str, str | None, str | None], str] = {}
    for run in runs:
        events = events_of.get(run.id, ())
        for event in events:
            if event.status == "changed" or event.event == DIFF_EVENT:
                key = (run.step, _task_name(event.task), event.host)
                diff = event.output if event.event == DIFF_EVENT else ""
                changes[key] = _joined(changes.get(key, ""), diff)
        if not any(step == run.step for step, _, _ in changes):
            for host, stats in run.stats.items():
                if stats.changed:
                    changes[(run.step, None, host)] = ""
    return [
        DriftChange(step=step, task=task, host=host, diff=diff[:MAX_DIFF_CHARS])
        for (step, task, host), diff in list(changes.items())[:MAX_DRIFT_CHANGES]
    ]


def _task_name(task: str | None) -> str | None:
    return task.split(" : ", 1)[-1].strip() if task else None


def _joined(before: str, more: str) -> str:
    return f"{before}\n{more}".strip("\n") if before and more else before or more


def describe(changes: Sequence[DriftChange], round_: int) -> str:
    """One sentence for the Drifted condition: how many tasks would change, and which."""
    shown = [f"{c.task or 'a task of ' + c.step} on {c.host or 'a host'}" for c in changes[:5]]
    more = f" and {len(changes) - 5} more" if len(changes) > 5 else ""
    count = len(changes)
    return (
        f"Drift check {round_} found {count} change{'s' if count != 1 else ''} "
        f"since the plan was applied: {'; '.join(shown)}{more}."
    )
