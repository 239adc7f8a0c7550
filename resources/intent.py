"""The DeploymentIntent resource (DESIGN §2).

Spec lives in git; status lives in the database only and is never written to git.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from chiffon.resources.base import (
    DNS1123Name,
    Duration,
    Model,
    PlainText,
    PlainVars,
    RepoPath,
    parse_duration,
    validate_no_nul,
)
from chiffon.resources.conditions import Condition
from chiffon.resources.meta import ObjectMeta
from chiffon.resources.plan import Plan

KIND = "DeploymentIntent"
MAX_STEPS = 50

_ROLE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]*$")
# Ansible host patterns: names, groups, wildcards, ':' '&' '!' set operators, ranges.
_HOST_PATTERN = re.compile(r"^[A-Za-z0-9_.:*!&,\-\[\]~@]+$")


def _validate_role(value: str) -> str:
    if len(value) > 200 or not _ROLE_NAME.match(value) or ".." in value:
        raise ValueError(f"{value!r} is not a role name (letters, digits, '_', '-', '.' for FQCN)")
    return value


def _validate_tag(value: str) -> str:
    if len(value) > 100 or not _TAG.match(value):
        raise ValueError(f"{value!r} is not an Ansible tag")
    return value


def _validate_limit(value: str) -> str:
    if len(value) > 1000 or not _HOST_PATTERN.match(value):
        raise ValueError(f"{value!r} is not an Ansible host pattern")
    return value


RoleName = Annotated[str, AfterValidator(_validate_role)]
Tag = Annotated[str, AfterValidator(_validate_tag)]
HostPattern = Annotated[str, AfterValidator(_validate_limit)]


class ApprovalPolicy(StrEnum):
    MANUAL = "Manual"
    AUTO = "Auto"


class Priority(StrEnum):
    NORMAL = "Normal"
    HIGH = "High"


class DriftMode(StrEnum):
    REPORT = "Report"
    HEAL = "Heal"
    OFF = "Off"


class Step(Model):
    """One playbook run. Names a playbook, a role, or only a goal in words."""

    name: DNS1123Name
    playbook: RepoPath | None = None
    role: RoleName | None = None
    goal: Annotated[str, Field(min_length=1, max_length=500), AfterValidator(validate_no_nul)] | None = None
    vars: PlainVars = Field(default_factory=dict)
    tags: list[Tag] = Field(default_factory=list, max_length=100)
    skip_tags: list[Tag] = Field(default_factory=list, max_length=100)

    @model_validator(mode="after")
    def _one_target(self) -> Step:
        if self.playbook and self.role:
            raise ValueError("a step names either a playbook or a role, not both")
        if not (self.playbook or self.role or self.goal):
            raise ValueError("a step needs a playbook, a role or a goal")
        return self


class ResourceRequirements(Model):
    gpu_memory_mib: int = Field(default=0, ge=0, le=10_000_000, alias="gpuMemoryMiB")
    cpu_cores: float = Field(default=0, ge=0, le=4096)
    memory_mib: int = Field(default=0, ge=0, le=100_000_000, alias="memoryMiB")


class Placement(Model):
    agent_selector: dict[PlainText, PlainText] = Field(default_factory=dict)


class DriftDetection(Model):
    interval: Duration = "1h"
    mode: DriftMode = DriftMode.REPORT

    @field_validator("interval")
    @classmethod
    def _at_least_a_minute(cls, value: str) -> str:
        if parse_duration(value).total_seconds() < 60:
            raise ValueError("drift checks run at most once a minute; use an interval of 1m or more")
        return value


class DeploymentIntentSpec(Model):
    service: DNS1123Name | None = None
    steps: list[Step] = Field(min_length=1, max_length=MAX_STEPS)
    inventory: RepoPath | None = None
    limit: HostPattern | None = None
    vars: PlainVars = Field(default_factory=dict)
    resources: ResourceRequirements = Field(default_factory=ResourceRequirements)
    placement: Placement = Field(default_factory=Placement)
    approval: ApprovalPolicy = ApprovalPolicy.MANUAL
    drift_detection: DriftDetection = Field(default_factory=DriftDetection)
    depends_on: list[DNS1123Name] = Field(default_factory=list, max_length=100)
    priority: Priority = Priority.NORMAL
    suspend: bool = False

    @field_validator("steps")
    @classmethod
    def _unique_step_names(cls, steps: list[Step]) -> list[Step]:
        seen: set[str] = set()
        for step in steps:
            if step.name in seen:
                raise ValueError(f"step name {step.name!r} is used twice")
            seen.add(step.name)
        return steps

    @field_validator("depends_on")
    @classmethod
    def _unique_dependencies(cls, names: list[str]) -> list[str]:
        if len(set(names)) != len(names):
            raise ValueError("dependsOn lists a name twice")
        return names


class RunSummary(Model):
    """The latest run of an intent, as shown in its status."""

    id: str
    step: str
    status: str
    started_at: datetime | None = None
    finished_at: datetime | None = None


MAX_DRIFT_CHANGES = 20
MAX_DIFF_CHARS = 4096


class DriftChange(Model):
    """One task a check-mode run says would change something, with its ``--diff`` output."""

    step: str
    task: str | None = None
    host: str | None = None
    diff: str = Field(default="", max_length=MAX_DIFF_CHARS)


class DriftStatus(Model):
    """Where drift detection stands for the applied plan (DESIGN §3, ``drift``).

    ``round`` counts the check rounds run against ``digest``; a round runs every step in
    check mode, one after the other. ``checked_at`` is unset while a round is under way.
    Under ``mode: Heal`` a round that found changes sets ``heal_digest``: the digest an
    approval must name before the plan is applied again (Auto intents approve it themselves).
    """

    digest: str
    round: int = Field(default=0, ge=0)
    started_at: datetime | None = None
    checked_at: datetime | None = None
    drifted: bool = False
    changes: list[DriftChange] = Field(default_factory=list, max_length=MAX_DRIFT_CHANGES)
    runs: list[str] = Field(default_factory=list, description="the check runs of the latest round")
    error: str | None = None
    heal_digest: str | None = None


class IntentStatus(Model):
    observed_generation: int | None = None
    observed_revision: str | None = None
    conditions: list[Condition] = Field(default_factory=list)
    plan: Plan | None = None
    last_applied_digest: str | None = None
    last_run: RunSummary | None = None
    blocked_by: str | None = None
    drift: DriftStatus | None = None
    # Read from the store's record of the git source, never written as status:
    source_path: str | None = Field(default=None, description="file in the intents repo that declares it")
    source_revision: str | None = Field(default=None, description="commit in which the file last changed")


class DeploymentIntent(Model):
    api_version: Literal["chiffon.dev/v1alpha1"] = "chiffon.dev/v1alpha1"
    kind: Literal["DeploymentIntent"] = "DeploymentIntent"
    metadata: ObjectMeta
    spec: DeploymentIntentSpec
    status: IntentStatus | None = None

    @model_validator(mode="after")
    def _not_depending_on_itself(self) -> DeploymentIntent:
        if self.metadata.name in self.spec.depends_on:
            raise ValueError("an intent cannot depend on itself")
        return self

    @property
    def service(self) -> str:
        """What audit queries filter on: the spec's service, else the intent's name."""
        return self.spec.service or self.metadata.name

    def spec_wire(self) -> dict[str, Any]:
        """The spec in its canonical wire form (defaults filled in)."""
        return self.spec.model_dump(mode="json", by_alias=True, exclude_none=True)
