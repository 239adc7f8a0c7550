"""Past run durations for plan estimates: finished and unfinished runs side by side."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from chiffon.controllers.progress import duration_history
from chiffon.resources import Run, RunStatus

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def run(step: str, status: RunStatus, *, seconds: float | None, index: int) -> Run:
    finished = T0 + timedelta(minutes=index) if seconds is not None else None
    return Run(
        id=f"svc-{index}",
        intent="svc",
        generation=1,
        plan_digest="a" * 64,
        step=step,
        step_index=0 if step == "deploy" else 1,
        status=status,
        started_at=finished - timedelta(seconds=seconds) if finished and seconds is not None else None,
        finished_at=finished,
    )


def test_history_with_a_run_still_in_flight() -> None:
    # A multi-step plan mid-way: step 1 finished (aware finished_at), step 2 running (none).
    runs = [
        run("deploy", RunStatus.SUCCESSFUL, seconds=12, index=2),
        run("configure", RunStatus.RUNNING, seconds=None, index=3),
        run("deploy", RunStatus.SUCCESSFUL, seconds=10, index=1),
        run("deploy", RunStatus.FAILED, seconds=3, index=0),
    ]
    history = duration_history(runs, {"deploy": "deploy.yml", "configure": "configure.yml"})
    assert history == {"deploy.yml": [10.0, 12.0]}
