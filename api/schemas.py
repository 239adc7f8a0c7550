"""Request and response bodies, split by direction (``…Request`` in, ``…Response`` out)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from chiffon.resources import Capacity, Model

MAX_FILE_BYTES = 1_048_576
MAX_FILES = 500


class SubmittedFileBody(BaseModel):
    name: str = Field(min_length=1, max_length=1024, description="the file name, used in error messages")
    content: str = Field(max_length=MAX_FILE_BYTES, description="the file's YAML text")


class ApplyRequest(BaseModel):
    files: list[SubmittedFileBody] = Field(min_length=1, max_length=MAX_FILES)
    message: str | None = Field(default=None, max_length=2000, description="extra commit message text")
    dry_run: bool = False


class AppliedIntentResponse(BaseModel):
    name: str
    outcome: str
    path: str
    generation: int | None = None
    revision: str | None = None


class ApplyResponse(BaseModel):
    revision: str | None
    committed: bool
    intents: list[AppliedIntentResponse]


class DeleteRequest(BaseModel):
    message: str | None = Field(default=None, max_length=2000)


class ProblemDetail(BaseModel):
    source: str | None = None
    line: int | None = None
    field: str | None = None
    message: str


class ErrorResponse(BaseModel):
    detail: str
    errors: list[ProblemDetail] = Field(default_factory=list)


class ListResponse(BaseModel):
    api_version: str = Field(default="v1", alias="apiVersion")
    kind: str = "List"
    items: list[dict[str, Any]]

    model_config = {"populate_by_name": True}


class AgentCapacityResponse(Model):
    """An agent's latest capacity, and whether it is heartbeating now (camelCase, like resources)."""

    id: str
    online: bool = Field(description="a heartbeat arrived within the offline deadline (90 s)")
    last_seen: datetime | None = Field(description="when the controller last heard from it")
    capacity: Capacity | None = Field(description="what its last heartbeat reported; null before the first")
