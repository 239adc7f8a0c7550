"""Chiffon's resource and message models: pure data, no I/O.

Everything that crosses a boundary (a YAML file, an API body, a bus message,
a database row) is one of these models. This package imports nothing else of
Chiffon's and does no I/O; a test enforces it.
"""

from chiffon.resources.agent import Agent, AgentKind, Capacity, GpuInfo
from chiffon.resources.approval import Approval, Decision
from chiffon.resources.audit import AuditEvent, Outcome
from chiffon.resources.base import API_VERSION, Model, parse_duration, parse_window
from chiffon.resources.conditions import (
    Condition,
    ConditionStatus,
    ConditionType,
    Reason,
    find_condition,
    initial_conditions,
    is_condition_true,
    set_condition,
)
from chiffon.resources.intent import (
    ApprovalPolicy,
    DeploymentIntent,
    DeploymentIntentSpec,
    DriftChange,
    DriftMode,
    DriftStatus,
    IntentStatus,
    Priority,
    Step,
)
from chiffon.resources.meta import ObjectMeta
from chiffon.resources.plan import Plan, PlannedStep, Risk
from chiffon.resources.run import Run, RunStatus, drift_run_id, run_id
from chiffon.resources.source import FileError, SourceStatus

__all__ = [
    "API_VERSION",
    "Agent",
    "AgentKind",
    "Approval",
    "ApprovalPolicy",
    "AuditEvent",
    "Capacity",
    "Condition",
    "ConditionStatus",
    "ConditionType",
    "Decision",
    "DeploymentIntent",
    "DeploymentIntentSpec",
    "DriftChange",
    "DriftMode",
    "DriftStatus",
    "FileError",
    "GpuInfo",
    "IntentStatus",
    "Model",
    "ObjectMeta",
    "Outcome",
    "Plan",
    "PlannedStep",
    "Priority",
    "Reason",
    "Risk",
    "Run",
    "RunStatus",
    "SourceStatus",
    "Step",
    "drift_run_id",
    "find_condition",
    "initial_conditions",
    "is_condition_true",
    "parse_duration",
    "parse_window",
    "run_id",
    "set_condition",
]
