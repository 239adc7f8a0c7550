"""Request and response bodies, split by direction (``…Request`` in, ``…Response`` out).

Also what every request's text must be before a route hands it to the store:
:data:`BodyText` for body fields, :data:`SAFE_PARAMETERS` for path and query
parameters. PostgreSQL can neither store nor compare text holding a NUL
character: such a request failed with a 500 (found by tests/fuzz); now it is a 422.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from pydantic import AfterValidator, BaseModel, Field

from chiffon.resources import Capacity, Model

MAX_FILE_BYTES = 1_048_576
MAX_FILES = 500
# The largest number a query or path parameter may carry into the database: its integer
# columns are 32-bit (PostgreSQL `integer`); a larger one failed the query with a 500.
MAX_DB_INT = 2**31 - 1


def storable_text(value: str) -> str:
    """Text a request carries, as the database can store it: no NUL (pydantic refuses lone surrogates)."""
    if "\x00" in value:
        raise ValueError("holds a NUL character (\\0), which cannot be stored")
    return value


BodyText = Annotated[str, AfterValidator(storable_text)]


async def refuse_unstorable_parameters(request: Request) -> None:
    """422 for a path or query parameter (name or value) with a NUL character, before a route runs."""
    for where, items in (
        ("path", list(request.path_params.items())),
        ("query", request.query_params.multi_items()),
    ):
        for name, value in items:
            if "\x00" in name or (isinstance(value, str) and "\x00" in value):
                detail = f"{where} parameter {name[:100]!r} holds a NUL character (\\0)"
                raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=detail)


SAFE_PARAMETERS = Depends(refuse_unstorable_parameters)


class SubmittedFileBody(BaseModel):
    name: BodyText = Field(min_length=1, max_length=1024, description="the file name, used in error messages")
    content: BodyText = Field(max_length=MAX_FILE_BYTES, description="the file's YAML text")


class ApplyRequest(BaseModel):
    files: list[SubmittedFileBody] = Field(min_length=1, max_length=MAX_FILES)
    message: BodyText | None = Field(default=None, max_length=2000, description="extra commit message text")
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
    message: BodyText | None = Field(default=None, max_length=2000)


class ProblemDetail(BaseModel):
    source: str | None = None
    line: int | None = None
    field: str | None = None
    message: str


class ErrorResponse(BaseModel):
    """Every error answer: what went wrong in a sentence, and each problem found, when there are several.

    ``detail`` is a list only in the 422 FastAPI writes for a request that does not
    match the OpenAPI schema (each item names the parameter or body field).
    """

    detail: str | list[dict[str, Any]]
    errors: list[ProblemDetail] = Field(default_factory=list)


def _error_response(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


# The error answers any route under /api/v1 may give, documented so that clients (and
# tests/fuzz/test_openapi.py) can rely on their shape; each router passes them as `responses`.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _error_response("The body is not valid JSON"),
    401: _error_response("No valid token, and the server needs one (docs/auth.md)"),
    403: _error_response("The token's role is not enough, or the request came from another site"),
    404: _error_response("No such resource"),
    409: _error_response("The change conflicts with the current state (the intents repo refused it)"),
    413: _error_response("The request body is over the size limit"),
    415: _error_response("A body that is not application/json"),
    422: _error_response("The request is invalid: its parameters, its body or the documents it holds"),
    503: _error_response("The database, the git repository or the catalog is unavailable"),
}


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
