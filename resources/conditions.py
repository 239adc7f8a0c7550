"""Conditions, the Kubernetes way (apimachinery ``meta/conditions.go``).

A list keyed by ``type``. ``set_condition`` replaces by type and moves
``lastTransitionTime`` only when ``status`` changes. Everything here is pure:
the caller passes ``now``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from enum import StrEnum

from pydantic import Field

from chiffon.resources.base import CamelWord, Model


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class ConditionType(StrEnum):
    PLANNED = "Planned"
    APPROVED = "Approved"
    SCHEDULED = "Scheduled"
    READY = "Ready"
    DRIFTED = "Drifted"
    RECONCILING = "Reconciling"
    STALLED = "Stalled"


#: Conditions every DeploymentIntent carries from its first visit on.
INTENT_CONDITION_TYPES: tuple[ConditionType, ...] = (
    ConditionType.PLANNED,
    ConditionType.APPROVED,
    ConditionType.SCHEDULED,
    ConditionType.READY,
)


class Reason:
    """Documented CamelCase reasons. The condition table is in DESIGN §2."""

    # Before any reconciler has looked at the intent.
    AWAITING_RECONCILE = "AwaitingReconcile"
    # A gate earlier in the pass holds the intent, so this one was not evaluated.
    NOT_REACHED = "NotReached"
    # Planned
    PLAN_READY = "PlanReady"
    PLAYBOOK_NOT_FOUND = "PlaybookNotFound"
    INVALID_SPEC = "InvalidSpec"
    LINT_FAILED = "LintFailed"
    # Approved
    APPROVED = "Approved"
    AUTO_APPROVED = "AutoApproved"
    AWAITING_APPROVAL = "AwaitingApproval"
    REJECTED = "Rejected"
    PLAN_CHANGED = "PlanChanged"
    # Scheduled
    AGENT_SELECTED = "AgentSelected"
    INSUFFICIENT_CAPACITY = "InsufficientCapacity"
    NO_MATCHING_AGENT = "NoMatchingAgent"
    WAITING_FOR_DEPENDENCY = "WaitingForDependency"
    # Ready
    APPLIED = "Applied"
    APPLYING = "Applying"
    APPLY_FAILED = "ApplyFailed"
    PAUSED = "Paused"
    SUSPENDED = "Suspended"
    # Drifted (present only when True)
    CHANGES_FOUND = "ChangesFound"


class Condition(Model):
    type: CamelWord
    status: ConditionStatus
    reason: CamelWord
    message: str = Field(default="", max_length=32_768)
    last_transition_time: datetime
    observed_generation: int | None = Field(default=None, ge=0)


def find_condition(conditions: Iterable[Condition], condition_type: str) -> Condition | None:
    return next((c for c in conditions if c.type == condition_type), None)


def is_condition_true(conditions: Iterable[Condition], condition_type: str) -> bool:
    found = find_condition(conditions, condition_type)
    return found is not None and found.status is ConditionStatus.TRUE


def set_condition(
    conditions: Sequence[Condition],
    condition_type: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    *,
    now: datetime,
    observed_generation: int | None = None,
) -> list[Condition]:
    """Return a new list with ``condition_type`` set; order of the others is kept."""
    previous = find_condition(conditions, condition_type)
    transition = previous.last_transition_time if previous is not None and previous.status == status else now
    updated = Condition(
        type=condition_type,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=transition,
        observed_generation=observed_generation,
    )
    if previous is None:
        return [*conditions, updated]
    return [updated if c.type == condition_type else c for c in conditions]


def remove_condition(conditions: Sequence[Condition], condition_type: str) -> list[Condition]:
    return [c for c in conditions if c.type != condition_type]


def initial_conditions(*, now: datetime, observed_generation: int | None = None) -> list[Condition]:
    """Every intent condition set to Unknown, as on a reconciler's first visit."""
    conditions: list[Condition] = []
    for condition_type in INTENT_CONDITION_TYPES:
        conditions = set_condition(
            conditions,
            condition_type,
            ConditionStatus.UNKNOWN,
            Reason.AWAITING_RECONCILE,
            "The controller has not reconciled this intent yet.",
            now=now,
            observed_generation=observed_generation,
        )
    return conditions
