"""Runs: one playbook execution of one step of one plan."""

from __future__ import annotations

import hashlib
from datetime import datetime
from enum import StrEnum

from pydantic import Field

from chiffon.resources.base import Model


class RunStatus(StrEnum):
    """ansible-runner's own words, plus the controller's pending/unknown."""

    PENDING = "pending"
    STARTING = "starting"
    RUNNING = "running"
    SUCCESSFUL = "successful"
    FAILED = "failed"
    TIMEOUT = "timeout"
    CANCELED = "canceled"
    UNKNOWN = "unknown"

    @property
    def finished(self) -> bool:
        return self in FINISHED_RUN_STATUSES


FINISHED_RUN_STATUSES = frozenset(
    {RunStatus.SUCCESSFUL, RunStatus.FAILED, RunStatus.TIMEOUT, RunStatus.CANCELED}
)


def run_id(intent: str, generation: int, plan_digest: str, step: str, attempt: int = 1) -> str:
    """Deterministic run id: the database key, AMQP message_id and ansible-runner ident.

    ``attempt`` counts the failed runs of the same step before this one, so a retry
    after a failure is a new run while a redelivery of the same request is not.
    """
    material = f"{intent}\x00{generation}\x00{plan_digest}\x00{step}\x00{attempt}".encode()
    return f"{intent[:40]}-{hashlib.sha256(material).hexdigest()[:16]}"


def drift_run_id(
    intent: str, generation: int, plan_digest: str, step: str, round_: int, *, heal: bool
) -> str:
    """The run id of a drift check (``heal=False``) or heal run of ``step`` in drift round ``round_``.

    Deterministic like :func:`run_id` and never equal to one: a repeated pass finds the
    run it already dispatched instead of starting a second check.
    """
    return run_id(intent, generation, plan_digest, f"{step}\x00{'heal' if heal else 'check'}", round_)


class HostStats(Model):
    ok: int = 0
    changed: int = 0
    failed: int = 0
    skipped: int = 0
    unreachable: int = 0
    rescued: int = 0
    ignored: int = 0


class ResourceUsage(Model):
    cpu_seconds: float | None = None
    peak_memory_mib: float | None = None


class Run(Model):
    id: str
    intent: str
    generation: int
    plan_digest: str
    step: str
    step_index: int = Field(ge=0)
    attempt: int = Field(default=1, ge=1)
    epoch: int | None = Field(default=None, description="leader epoch of the controller that dispatched it")
    check_mode: bool = False
    agent_id: str | None = None
    status: RunStatus = RunStatus.PENDING
    rc: int | None = None
    stats: dict[str, HostStats] = Field(default_factory=dict)
    usage: ResourceUsage | None = None
    error: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def heals_drift(self) -> bool:
        """Whether this run applied its plan again to heal drift (its id says so), not a step's attempt."""
        return not self.check_mode and self.id == drift_run_id(
            self.intent, self.generation, self.plan_digest, self.step, self.attempt, heal=True
        )
