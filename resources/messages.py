"""The ``chiffon/v1`` message protocol (DESIGN §4).

Every message on the bus is an :class:`Envelope` whose ``payload`` model is
chosen by ``type``. Decoding a message from the wire goes through
:func:`decode_envelope`, which turns anything malformed into a
:class:`ProtocolError` rather than an exception from deep inside pydantic.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, ValidationError, model_validator

from chiffon.resources.agent import AgentKind, Capacity
from chiffon.resources.base import Model, PlainVars, StoredText, validate_no_nul, without_nul
from chiffon.resources.run import HostStats, ResourceUsage

PROTOCOL = "chiffon/v1"
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
MAX_EVENT_OUTPUT = 4096
MAX_HEARTBEAT_RUNS = 1000
# What the controller stores must fit where it stores it, or one report fails the whole batch
# written with it (controllers/consumers.py): ids are at most 200 characters (as agent ids
# always were) without NUL, event numbers and exit codes 32-bit integers (PostgreSQL
# `integer`), durations short enough for date arithmetic (10**9 s is about 31 years), and text
# free of NUL, which PostgreSQL cannot store (a NUL in reported text becomes U+FFFD).
MAX_ID_CHARS = 200
MAX_INT32 = 2**31 - 1
MAX_SECONDS = 10**9
# A refusal names where the problem is; a hostile key must not make that line megabytes long.
MAX_ERROR_CHARS = 500

Id = Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS), AfterValidator(validate_no_nul)]
OptionalId = Annotated[str, Field(max_length=MAX_ID_CHARS), AfterValidator(validate_no_nul)] | None
Text = StoredText


def _assume_utc(value: datetime) -> datetime:
    # RFC 3339 requires an offset; one without is read as UTC (as agents always did with a
    # deadline) so that what is decoded is never naive and always encodes back with one.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


Timestamp = Annotated[datetime, AfterValidator(_assume_utc)]


class MessageType(StrEnum):
    RUN_REQUEST = "RunRequest"
    RUN_ACCEPTED = "RunAccepted"
    RUN_EVENT = "RunEvent"
    RUN_RESULT = "RunResult"
    CANCEL_RUN = "CancelRun"
    HEARTBEAT = "Heartbeat"
    AGENT_OFFLINE = "AgentOffline"
    ERROR = "Error"


class RunRequest(Model):
    run_id: Id
    intent: str
    generation: int
    plan_digest: str
    step: str
    step_index: int = 0
    attempt: int = Field(default=1, ge=1)
    epoch: int = Field(default=0, ge=0, description="leader epoch fence: agents refuse older epochs")
    playbook: str | None = None
    role: str | None = None
    inventory: str | None = None
    limit: str | None = None
    tags: list[str] = Field(default_factory=list)
    skip_tags: list[str] = Field(default_factory=list)
    extra_vars: PlainVars = Field(default_factory=dict)
    check: bool = False
    diff: bool = False
    timeout_seconds: int = Field(default=3600, ge=1, le=MAX_SECONDS)
    agent_id: Id | None = None
    deadline: Timestamp | None = None


class RunAccepted(Model):
    run_id: Id
    agent_id: Id


class AnsibleEvent(Model):
    seq: int = Field(ge=0, le=MAX_INT32)
    event: Text
    task: Text | None = None
    host: Text | None = None
    status: Literal["ok", "changed", "failed", "skipped", "unreachable"] | None = None
    output: Annotated[str, Field(max_length=MAX_EVENT_OUTPUT), AfterValidator(without_nul)] = ""
    created: Timestamp | None = None


class RunEvent(Model):
    run_id: Id
    agent_id: Id
    events: list[AnsibleEvent] = Field(min_length=1, max_length=1000)


class RunResult(Model):
    run_id: Id
    agent_id: Id
    status: Literal["successful", "failed", "timeout", "canceled"]
    rc: int | None = Field(default=None, ge=-MAX_INT32 - 1, le=MAX_INT32)
    stats: dict[Text, HostStats] = Field(default_factory=dict)
    duration_seconds: float = Field(ge=0, le=MAX_SECONDS)
    usage: ResourceUsage | None = None
    error: Text | None = None


class CancelRun(Model):
    run_id: Id
    reason: Text = ""


class Heartbeat(Model):
    agent_id: Id
    kind: AgentKind
    labels: dict[Text, Text] = Field(default_factory=dict)
    online: bool = True
    capacity: Capacity
    interval_seconds: float | None = Field(
        default=None,
        gt=0,
        le=MAX_SECONDS,
        description="seconds until the next heartbeat; when absent the controller assumes its own "
        "setting (15 s by default)",
    )
    version: Annotated[str, Field(max_length=MAX_ID_CHARS), AfterValidator(without_nul)] | None = None
    runs: list[Id] | None = Field(
        default=None,
        max_length=MAX_HEARTBEAT_RUNS,
        description="ids of the runs this agent accepted and still owes a RunResult for (empty when "
        "idle); absent from agents that do not run playbooks",
    )


class AgentOffline(Model):
    agent_id: Id
    reason: Text = "clean shutdown"


class ErrorPayload(Model):
    code: Text
    message: Text
    related_message_id: Text | None = None


Payload = (
    RunRequest
    | RunAccepted
    | RunEvent
    | RunResult
    | CancelRun
    | Heartbeat
    | AgentOffline
    | ErrorPayload
)

PAYLOAD_TYPES: dict[MessageType, type[Model]] = {
    MessageType.RUN_REQUEST: RunRequest,
    MessageType.RUN_ACCEPTED: RunAccepted,
    MessageType.RUN_EVENT: RunEvent,
    MessageType.RUN_RESULT: RunResult,
    MessageType.CANCEL_RUN: CancelRun,
    MessageType.HEARTBEAT: Heartbeat,
    MessageType.AGENT_OFFLINE: AgentOffline,
    MessageType.ERROR: ErrorPayload,
}
_TYPE_OF_PAYLOAD = {model: kind for kind, model in PAYLOAD_TYPES.items()}


class ProtocolError(ValueError):
    """A message that is not a valid ``chiffon/v1`` envelope."""


class Envelope(Model):
    protocol: Literal["chiffon/v1"] = "chiffon/v1"
    type: MessageType
    message_id: Id
    correlation_id: OptionalId = None
    sent_at: Timestamp
    payload: Payload

    @model_validator(mode="before")
    @classmethod
    def _payload_matches_type(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        kind = data.get("type")
        payload = data.get("payload")
        if not isinstance(payload, dict):
            return data
        try:
            model = PAYLOAD_TYPES[MessageType(str(kind))]
        except ValueError:
            return data  # the field validator reports the unknown type
        try:
            return {**data, "payload": model.model_validate(payload)}
        except ValidationError as exc:
            # Re-raised so the report names the field inside the payload, e.g. payload.runId.
            first = exc.errors()[0]
            message = str(first["msg"]).removeprefix("Value error, ")
            raise ValueError(f"{_where(('payload', *first['loc']))}: {message}") from None

    @model_validator(mode="after")
    def _payload_type_agrees(self) -> Envelope:
        if _TYPE_OF_PAYLOAD[type(self.payload)] != self.type:
            raise ValueError(f"payload is not a {self.type.value}")
        return self


def make_envelope(
    payload: Payload, *, message_id: str | None = None, correlation_id: str | None = None
) -> Envelope:
    return Envelope(
        type=_TYPE_OF_PAYLOAD[type(payload)],
        message_id=message_id or uuid.uuid4().hex,
        correlation_id=correlation_id,
        sent_at=datetime.now(UTC),
        payload=payload,
    )


def encode_envelope(envelope: Envelope) -> bytes:
    return envelope.model_dump_json(by_alias=True, exclude_none=True).encode()


def _where(loc: tuple[Any, ...]) -> str:
    """``payload.events.0.seq``; each part quoted and cut short when it is not a plain name."""
    parts = []
    for part in loc:
        text = str(part)
        plain = text.isascii() and text.replace("_", "").replace("-", "").isalnum() and len(text) <= 64
        parts.append(text if plain else repr(text[:64] + ("…" if len(text) > 64 else "")))
    return ".".join(parts)


def _one_line(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= MAX_ERROR_CHARS else flat[: MAX_ERROR_CHARS - 1] + "…"


def decode_envelope(body: bytes) -> Envelope:
    """The envelope in ``body``, or a ProtocolError saying (on one short line) what is wrong with it."""
    if len(body) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message is {len(body)} bytes; the limit is {MAX_MESSAGE_BYTES}")
    try:
        return Envelope.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        message = str(first["msg"]).removeprefix("Value error, ")
        where = _where(tuple(first["loc"]))
        detail = f"{where}: {message}" if where else message
        raise ProtocolError(_one_line(f"invalid chiffon/v1 message: {detail}")) from None
