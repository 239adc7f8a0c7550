"""Approvals bind to a plan digest, never to a commit (DESIGN §2)."""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum

from pydantic import Field, field_validator

from chiffon.resources.base import Model

_DIGEST = re.compile(r"^[0-9a-f]{64}$")


class Decision(StrEnum):
    APPROVED = "Approved"
    REJECTED = "Rejected"


def validate_digest(value: str) -> str:
    if not _DIGEST.match(value):
        raise ValueError(f"{value!r} is not a plan digest (64 lower-case hex characters)")
    return value


class Approval(Model):
    intent: str
    digest: str
    decision: Decision
    actor: str = Field(min_length=1, max_length=200)
    reason: str = Field(default="", max_length=2000)
    created_at: datetime | None = None

    @field_validator("digest")
    @classmethod
    def _digest_shape(cls, value: str) -> str:
        return validate_digest(value)
