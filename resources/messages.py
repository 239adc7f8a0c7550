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
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from chiffon.resources.agent import AgentKind, Capacity
from chiffon.resources.base import Model, PlainVars
from chiffon.resources.run import HostStats, ResourceUsage

PROTOCOL = "chiffon/v1"
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
MAX_EVENT_OUTPUT = 4096
MAX_HEARTBEAT_RUNS = 1000


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
    run_id: str
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
    timeout_seconds: int = Field(default=3600, ge=1)
    agent_id: str | None = None
    deadline: datetime | None = None


class RunAccepted(Model):
    run_id: str
    agent_id: str


class AnsibleEvent(Model):
    seq: int = Field(ge=0)
    event: str
    task: str | None = None
    host: str | None = None
    status: Literal["ok", "changed", "failed", "skipped", "unreachable"] | None = None
    output: str = Field(default="", max_length=MAX_EVENT_OUTPUT)
    created: datetime | None = None


class RunEvent(Model):
    run_id: str
    agent_id: str
    events: list[AnsibleEvent] = Field(min_length=1, max_length=1000)


class RunResult(Model):
    run_id: str
    agent_id: str
    status: Literal["successful", "failed", "timeout", "canceled"]
    rc: int | None = None
    stats: dict[str, HostStats] = Field(default_factory=dict)
    duration_seconds: float = Field(ge=0)
    usage: ResourceUsage | None = None
    error: str | None = None


class CancelRun(Model):
    run_id: str
    reason: str = ""


class Heartbeat(Model):
    agent_id: str = Field(min_length=1, max_length=200)
    kind: AgentKind
    labels: dict[str, str] = Field(default_factory=dict)
    online: bool = True
    capacity: Capacity
    interval_seconds: float | None = Field(
        default=None,
        gt=0,
        description="seconds until the next heartbeat; when absent the controller assumes its own "
        "setting (15 s by default)",
    )
    version: str | None = None
    runs: list[str] | None = Field(
        default=None,
        max_length=MAX_HEARTBEAT_RUNS,
        description="ids of the runs this agent accepted and still owes a RunResult for (empty when "
        "idle); absent from agents that do not run playbooks",
    )


class AgentOffline(Model):
    agent_id: str
    reason: str = "clean shutdown"


class ErrorPayload(Model):
    code: str
    message: str
    related_message_id: str | None = None


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
    message_id: str = Field(min_length=1, max_length=200)
    correlation_id: str | None = Field(default=None, max_length=200)
    sent_at: datetime
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
            where = ".".join(str(part) for part in ("payload", *first["loc"]))
            raise ValueError(f"{where}: {first['msg']}") from None

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


def decode_envelope(body: bytes) -> Envelope:
    if len(body) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message is {len(body)} bytes; the limit is {MAX_MESSAGE_BYTES}")
    try:
        return Envelope.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        message = str(first["msg"]).removeprefix("Value error, ")
        where = ".".join(str(part) for part in first["loc"])
        detail = f"{where}: {message}" if where else message
        raise ProtocolError(f"invalid chiffon/v1 message: {detail}") from None
