"""Agents and the capacity they report."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import Field

from chiffon.resources.base import Model, StoredText


class AgentKind(StrEnum):
    INFRA = "infra"
    DESKTOP = "desktop"


class GpuInfo(Model):
    index: int = Field(ge=0)
    name: StoredText = ""
    uuid: StoredText | None = None
    memory_total_mib: int = Field(ge=0)
    memory_free_mib: int = Field(ge=0)
    utilization_percent: float | None = Field(default=None, ge=0, le=100)


class Capacity(Model):
    cpu_load_percent: float = Field(ge=0, le=100)
    cpu_cores: int = Field(ge=0)
    memory_total_mib: int = Field(ge=0)
    memory_available_mib: int = Field(ge=0)
    gpus: list[GpuInfo] = Field(default_factory=list)
    busy: bool = False
    busy_reason: StoredText | None = None


class Agent(Model):
    id: str = Field(min_length=1, max_length=200)
    kind: AgentKind
    labels: dict[str, str] = Field(default_factory=dict)
    online: bool = False
    last_seen: datetime | None = None
    capacity: Capacity | None = None
    version: str | None = None
