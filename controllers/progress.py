"""Where a plan stands, decided from its runs (pure functions, table-tested).

A plan's steps run in order. For each step only the runs of the current
generation and plan digest count; the newest attempt decides. A step whose
newest run failed is retried with a new attempt (a new run id) after a
backoff, up to ``MAX_ATTEMPTS``; then only a person can help.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from chiffon.resources import Plan, Run, RunStatus

MAX_ATTEMPTS = 3
RETRY_BASE_SECONDS = 10.0
RETRY_MAX_SECONDS = 300.0


@dataclass(frozen=True)
class Progress:
    """The next thing to do for a plan."""

    step_index: int | None  # the first step not yet successful; None when all are
    attempt: int  # the attempt the next dispatch of that step would be
    in_flight: Run | None  # a run of that step that has not finished
    last_failure: Run | None  # the newest failed run of that step

    @property
    def done(self) -> bool:
        return self.step_index is None

    @property
    def failures(self) -> int:
        return self.attempt - 1


# Sorts before every real (aware, UTC) time; a naive one cannot be compared with them.
NEVER = datetime.min.replace(tzinfo=UTC)


def runs_of_plan(runs: Sequence[Run], generation: int, digest: str) -> list[Run]:
    return [
        run
        for run in runs
        if run.generation == generation and run.plan_digest == digest and not run.check_mode
    ]


def progress(plan: Plan, generation: int, runs: Sequence[Run]) -> Progress:
    mine = runs_of_plan(runs, generation, plan.digest)
    for index, step in enumerate(plan.steps):
        attempts = sorted((run for run in mine if run.step == step.name), key=lambda run: run.attempt)
        if attempts and attempts[-1].status is RunStatus.SUCCESSFUL:
            continue
        if not attempts:
            return Progress(index, 1, None, None)
        newest = attempts[-1]
        if not newest.status.finished:
            return Progress(index, newest.attempt, newest, _newest_failure(attempts))
        return Progress(index, newest.attempt + 1, None, newest)
    return Progress(None, 0, None, None)


def _newest_failure(attempts: Sequence[Run]) -> Run | None:
    failed = [run for run in attempts if run.status.finished and run.status is not RunStatus.SUCCESSFUL]
    return failed[-1] if failed else None


def retry_delay(failures: int) -> float:
    """10 s, 20 s, 40 s … capped at five minutes."""
    return float(min(RETRY_MAX_SECONDS, RETRY_BASE_SECONDS * 2 ** max(0, failures - 1)))


def retry_at(progress_: Progress) -> datetime | None:
    """When the next attempt may start, or None if it may start now."""
    failure = progress_.last_failure
    if failure is None or failure.finished_at is None:
        return None
    return failure.finished_at + timedelta(seconds=retry_delay(progress_.failures))


def run_seconds(run: Run) -> float | None:
    if run.started_at is None or run.finished_at is None:
        return None
    return (run.finished_at - run.started_at).total_seconds()


def duration_history(runs: Sequence[Run], plan_targets: dict[str, str]) -> dict[str, list[float]]:
    """Seconds of past successful runs, keyed by playbook or role (what the planner estimates from).

    ``plan_targets`` maps a step name to its playbook or role in the plan the runs belonged to.
    """
    history: dict[str, list[float]] = {}
    for run in sorted(runs, key=lambda r: r.finished_at or NEVER):
        seconds = run_seconds(run)
        target = plan_targets.get(run.step)
        if run.status is RunStatus.SUCCESSFUL and seconds is not None and target and not run.check_mode:
            history.setdefault(target, []).append(seconds)
    return history
