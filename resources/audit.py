"""Audit events: every decision Chiffon makes, who made it and how it ended (DESIGN §8)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import Field

from chiffon.resources.base import Model


class Outcome(StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"
    DENIED = "denied"
    INFO = "info"


class AuditEvent(Model):
    id: int | None = None
    time: datetime
    actor: str = Field(min_length=1, max_length=200)
    action: str = Field(min_length=1, max_length=100, description="e.g. intent.created, plan, approve")
    resource: str | None = Field(default=None, max_length=300, description="Kind/name")
    service: str | None = Field(default=None, max_length=100)
    outcome: Outcome = Outcome.SUCCESS
    revision: str | None = None
    details: dict[str, Any] = Field(default_factory=dict)
