"""The plan: what will run, bound to a digest that approval refers to."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import Field

from chiffon.resources.base import Model


class Risk(StrEnum):
    LOW = "Low"
    MEDIUM = "Medium"
    HIGH = "High"


class CatalogChoice(Model):
    """How a step given only a goal or service was resolved through the catalog."""

    query: str
    score: float
    confident: bool
    runner_up: str | None = None
    runner_up_score: float | None = None


class PlannedStep(Model):
    name: str
    playbook: str | None = None
    role: str | None = None
    content_hash: str = Field(description="sha256 over the playbook and role files that will run")
    vars: dict[str, Any] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list)
    skip_tags: list[str] = Field(default_factory=list)
    catalog: CatalogChoice | None = None


class Plan(Model):
    digest: str = Field(description="sha256 over everything that decides what will run")
    revision: str | None = Field(default=None, description="intents repo revision it was made from")
    infra_revision: str | None = None
    steps: list[PlannedStep]
    inventory: str | None = None
    limit: str | None = None
    risk: Risk = Risk.LOW
    estimated_duration_seconds: float | None = None
    created_at: datetime | None = None
