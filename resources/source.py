"""Status of a git source: which revision was read and which files could not be."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from chiffon.resources.base import Model


class FileError(Model):
    """One file (or one document in it) that could not be turned into a resource."""

    path: str
    line: int | None = None
    field: str | None = None
    message: str

    def __str__(self) -> str:
        where = self.path + (f":{self.line}" if self.line else "")
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class SourceStatus(Model):
    name: str
    url: str
    branch: str
    path: str = ""
    revision: str | None = None
    last_sync_at: datetime | None = None
    last_error: str | None = None
    intents: int = 0
    file_errors: list[FileError] = Field(default_factory=list)
    uncommitted: list[str] = Field(default_factory=list, description="changed files not yet committed")
    signed_by: str | None = Field(
        default=None,
        description="the key that signed `revision` (a GPG fingerprint or an SSH SHA256 fingerprint), "
        "when the source verifies commits",
    )
