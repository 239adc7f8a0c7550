"""Tables for the pure helpers and models in chiffon.resources."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from chiffon.resources import (
    Condition,
    ConditionStatus,
    ConditionType,
    Reason,
    Step,
    find_condition,
    initial_conditions,
    is_condition_true,
    parse_duration,
    run_id,
    set_condition,
)
from chiffon.resources.agent import AgentKind, Capacity, GpuInfo
from chiffon.resources.base import MAX_VARS_DEPTH, MAX_VARS_ITEMS, validate_plain_data, validate_repo_path
from chiffon.resources.conditions import remove_condition
from chiffon.resources.messages import (
    MAX_MESSAGE_BYTES,
    AgentOffline,
    AnsibleEvent,
    CancelRun,
    ErrorPayload,
    Heartbeat,
    MessageType,
    Payload,
    ProtocolError,
    RunAccepted,
    RunEvent,
    RunRequest,
    RunResult,
    decode_envelope,
    encode_envelope,
    make_envelope,
)
from chiffon.resources.run import HostStats, ResourceUsage

T0 = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)
DIGEST = "a" * 64


def cond(kind: str, status: ConditionStatus, reason: str = "Because", at: datetime = T0) -> Condition:
    return Condition(type=kind, status=status, reason=reason, message="", last_transition_time=at)


TRUE, FALSE, UNKNOWN = ConditionStatus.TRUE, ConditionStatus.FALSE, ConditionStatus.UNKNOWN

# --------------------------------------------------------------------------- conditions


@pytest.mark.parametrize(
    ("before", "set_type", "status", "reason", "want"),
    [
        pytest.param([], "Ready", TRUE, "Applied", [("Ready", TRUE, "Applied", T1)], id="added-to-empty"),
        pytest.param(
            [cond("Planned", TRUE)],
            "Ready",
            FALSE,
            "ApplyFailed",
            [("Planned", TRUE, "Because", T0), ("Ready", FALSE, "ApplyFailed", T1)],
            id="appended-after-others",
        ),
        pytest.param(
            [cond("Ready", FALSE, "Applying")],
            "Ready",
            FALSE,
            "ApplyFailed",
            [("Ready", FALSE, "ApplyFailed", T0)],
            id="same-status-keeps-transition-time",
        ),
        pytest.param(
            [cond("Ready", FALSE, "Applying")],
            "Ready",
            TRUE,
            "Applied",
            [("Ready", TRUE, "Applied", T1)],
            id="status-change-moves-transition-time",
        ),
        pytest.param(
            [cond("Planned", TRUE), cond("Approved", UNKNOWN), cond("Ready", UNKNOWN)],
            "Approved",
            TRUE,
            "Approved",
            [
                ("Planned", TRUE, "Because", T0),
                ("Approved", TRUE, "Approved", T1),
                ("Ready", UNKNOWN, "Because", T0),
            ],
            id="replaced-by-type-in-place",
        ),
    ],
)
def test_set_condition(
    before: list[Condition],
    set_type: str,
    status: ConditionStatus,
    reason: str,
    want: list[tuple[str, ConditionStatus, str, datetime]],
) -> None:
    after = set_condition(before, set_type, status, reason, "A sentence.", now=T1, observed_generation=2)

    assert [(c.type, c.status, c.reason, c.last_transition_time) for c in after] == want
    changed = find_condition(after, set_type)
    assert changed is not None
    assert (changed.message, changed.observed_generation) == ("A sentence.", 2)
    assert after is not before


def test_set_condition_does_not_change_its_input() -> None:
    before = [cond("Ready", FALSE)]
    set_condition(before, "Ready", TRUE, "Applied", "", now=T1)
    assert before == [cond("Ready", FALSE)]


def test_set_condition_refuses_a_reason_that_is_not_camel_case() -> None:
    with pytest.raises(ValidationError, match="CamelCase"):
        set_condition([], "Ready", TRUE, "all good", "", now=T1)


def test_initial_conditions() -> None:
    conditions = initial_conditions(now=T0, observed_generation=1)
    assert [c.type for c in conditions] == [
        ConditionType.PLANNED,
        ConditionType.APPROVED,
        ConditionType.SCHEDULED,
        ConditionType.READY,
    ]
    assert {(c.status, c.reason, c.last_transition_time, c.observed_generation) for c in conditions} == {
        (UNKNOWN, Reason.AWAITING_RECONCILE, T0, 1)
    }
    assert all(c.message.endswith(".") for c in conditions)


def test_condition_lookups() -> None:
    conditions = [cond("Planned", TRUE), cond("Ready", FALSE)]
    assert is_condition_true(conditions, "Planned")
    assert not is_condition_true(conditions, "Ready")
    assert not is_condition_true(conditions, "Approved")
    assert [c.type for c in remove_condition(conditions, "Planned")] == ["Ready"]


# --------------------------------------------------------------------------- durations, paths, vars


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("90s", timedelta(seconds=90)),
        ("5m", timedelta(minutes=5)),
        ("1h", timedelta(hours=1)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("2h0m15s", timedelta(hours=2, seconds=15)),
        ("0s", timedelta(0)),
        (" 5m ", timedelta(minutes=5)),
    ],
)
def test_parse_duration(text: str, want: timedelta) -> None:
    assert parse_duration(text) == want


@pytest.mark.parametrize("text", ["", "5", "m", "1d", "5 m", "-5m", "1.5h", "30m1h", "5M", "h"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    "path",
    ["ansible/playbooks/kuma.yml", "site.yml", "./site.yml", "roles/../site.yml", "a/b/../../c.yml"],
)
def test_validate_repo_path_accepts(path: str) -> None:
    assert validate_repo_path(path) == path


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("", "non-empty"),
        ("x" * 1025, "at most 1024"),
        ("/etc/passwd", "not absolute"),
        ("~/playbook.yml", "not absolute"),
        ("../../etc/passwd", "escapes"),
        ("ansible/../../etc/passwd", "escapes"),
        ("..", "escapes"),
        ("ansible\\site.yml", "backslash"),
        ("site\x00.yml", "NUL"),
    ],
)
def test_validate_repo_path_refuses(path: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_repo_path(path)


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        3,
        2.5,
        "text",
        {"port": 3001, "hosts": ["a", "b"], "tls": {"enabled": True, "ratio": 0.5, "ca": None}},
        nested(MAX_VARS_DEPTH),
        list(range(MAX_VARS_ITEMS - 1)),
    ],
)
def test_validate_plain_data_accepts(value: Any) -> None:
    assert validate_plain_data(value) == value


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (math.nan, "NaN or infinity"),
        ({"a": [math.inf]}, "NaN or infinity"),
        ({1: "one"}, "keys must be strings"),
        ({"a": {None: 1}}, "keys must be strings"),
        ({"a": {1, 2}}, "plain data \\(got set\\)"),
        ({"when": datetime(2024, 1, 1)}, "plain data \\(got datetime\\)"),
        ([object()], "plain data \\(got object\\)"),
        (b"bytes", "plain data \\(got bytes\\)"),
        (nested(MAX_VARS_DEPTH + 1), f"deeper than {MAX_VARS_DEPTH} levels"),
        (list(range(MAX_VARS_ITEMS)), f"more than {MAX_VARS_ITEMS} values"),
    ],
)
def test_validate_plain_data_refuses(value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_plain_data(value)


# --------------------------------------------------------------------------- steps


@pytest.mark.parametrize(
    "fields",
    [
        {"name": "deploy", "playbook": "ansible/playbooks/kuma.yml"},
        {"name": "deploy", "role": "geerlingguy.docker"},
        {"name": "deploy", "goal": "deploy uptime kuma on unraid"},
        {"name": "deploy", "playbook": "site.yml", "goal": "the catalog's choice, for the record"},
        {
            "name": "d",
            "role": "caddy",
            "tags": ["config", "tls:renew"],
            "skipTags": ["slow"],
            "vars": {"a": 1},
        },
    ],
)
def test_step_accepts(fields: dict[str, Any]) -> None:
    assert Step.model_validate(fields).name == fields["name"]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"name": "deploy", "playbook": "site.yml", "role": "caddy"},
            "either a playbook or a role, not both",
        ),
        ({"name": "deploy"}, "needs a playbook, a role or a goal"),
        ({"name": "deploy", "goal": ""}, "at least 1 character"),
        ({"name": "Deploy", "role": "caddy"}, "not a DNS-1123 label"),
        ({"name": "deploy", "role": "../escape"}, "not a role name"),
        ({"name": "deploy", "role": "caddy", "tags": ["bad tag"]}, "not an Ansible tag"),
        ({"name": "deploy", "playbook": "/etc/passwd"}, "not absolute"),
        ({"name": "deploy", "role": "caddy", "vars": {"x": math.nan}}, "NaN"),
        ({"name": "deploy", "role": "caddy", "skip_tags": []}, "Extra inputs"),
    ],
)
def test_step_refuses(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Step.model_validate(fields, by_alias=True, by_name=False)


# --------------------------------------------------------------------------- messages

CAPACITY = Capacity(cpu_load_percent=12.5, cpu_cores=16, memory_total_mib=65536, memory_available_mib=30000)

PAYLOADS: dict[MessageType, Payload] = {
    MessageType.RUN_REQUEST: RunRequest(
        run_id="kuma-0123456789abcdef",
        intent="kuma",
        generation=3,
        plan_digest=DIGEST,
        step="deploy",
        playbook="ansible/playbooks/kuma.yml",
        tags=["deploy"],
        extra_vars={"kuma_port": 3001, "hosts": ["unraid"]},
        deadline=T1,
    ),
    MessageType.RUN_ACCEPTED: RunAccepted(run_id="kuma-0123456789abcdef", agent_id="infra-1"),
    MessageType.RUN_EVENT: RunEvent(
        run_id="kuma-0123456789abcdef",
        agent_id="infra-1",
        events=[
            AnsibleEvent(seq=1, event="runner_on_ok", task="Start kuma", host="unraid", status="changed")
        ],
    ),
    MessageType.RUN_RESULT: RunResult(
        run_id="kuma-0123456789abcdef",
        agent_id="infra-1",
        status="successful",
        rc=0,
        stats={"unraid": HostStats(ok=5, changed=1)},
        duration_seconds=42.5,
        usage=ResourceUsage(cpu_seconds=3.2),
    ),
    MessageType.CANCEL_RUN: CancelRun(run_id="kuma-0123456789abcdef", reason="superseded"),
    MessageType.HEARTBEAT: Heartbeat(
        agent_id="desktop-1",
        kind=AgentKind.DESKTOP,
        labels={"role": "gpu"},
        capacity=Capacity(
            **CAPACITY.model_dump(exclude={"gpus"}),
            gpus=[GpuInfo(index=0, name="RTX 4090", memory_total_mib=24564, memory_free_mib=20000)],
        ),
    ),
    MessageType.AGENT_OFFLINE: AgentOffline(agent_id="desktop-1"),
    MessageType.ERROR: ErrorPayload(code="BadRequest", message="no such playbook", related_message_id="m-1"),
}


def test_every_message_type_has_a_sample() -> None:
    assert set(PAYLOADS) == set(MessageType)


@pytest.mark.parametrize("kind", list(MessageType))
def test_envelope_round_trip(kind: MessageType) -> None:
    envelope = make_envelope(PAYLOADS[kind], correlation_id="c-1")
    body = encode_envelope(envelope)

    decoded = decode_envelope(body)

    assert decoded == envelope
    assert decoded.type is kind
    assert type(decoded.payload) is type(PAYLOADS[kind])
    wire = json.loads(body)
    assert (wire["protocol"], wire["type"], wire["correlationId"]) == ("chiffon/v1", kind.value, "c-1")
    assert "message_id" not in wire and "messageId" in wire  # camelCase on the wire


def envelope_json(**changes: Any) -> bytes:
    wire = json.loads(encode_envelope(make_envelope(PAYLOADS[MessageType.CANCEL_RUN], message_id="m-1")))
    wire.update(changes)
    return json.dumps(wire).encode()


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"not json", id="garbage"),
        pytest.param(b"\xff\xfe\x00", id="binary"),
        pytest.param(b"[1, 2]", id="array"),
        pytest.param(b"{}", id="empty-object"),
        pytest.param(b" " * (MAX_MESSAGE_BYTES + 1), id="oversized"),
        pytest.param(envelope_json(protocol="chiffon/v2"), id="other-protocol"),
        pytest.param(envelope_json(type="LaunchMissiles"), id="unknown-type"),
        pytest.param(envelope_json(type="RunAccepted"), id="payload-of-another-type"),
        pytest.param(envelope_json(payload="cancel please"), id="payload-not-an-object"),
        pytest.param(envelope_json(payload={"runId": 5}), id="payload-wrong-field-type"),
        pytest.param(envelope_json(messageId=""), id="empty-message-id"),
        pytest.param(envelope_json(sentAt="yesterday"), id="bad-time"),
        pytest.param(envelope_json(extra=True), id="unknown-field"),
    ],
)
def test_decode_refuses_bad_messages(body: bytes) -> None:
    with pytest.raises(ProtocolError, match=r"chiffon/v1|limit"):
        decode_envelope(body)


def test_protocol_error_for_oversized_names_the_limit() -> None:
    with pytest.raises(ProtocolError, match=f"the limit is {MAX_MESSAGE_BYTES}"):
        decode_envelope(b"{" + b" " * MAX_MESSAGE_BYTES + b"}")


def payload_json(kind: MessageType, **changes: Any) -> bytes:
    """A valid envelope of ``kind`` with fields of its payload changed (camelCase), as JSON text."""
    wire = json.loads(encode_envelope(make_envelope(PAYLOADS[kind], message_id="m-1")))
    wire["payload"].update(changes)
    return json.dumps(wire).encode()


# Found by tests/fuzz: each was accepted, and then either did not survive its own encoding
# (NaN and infinity become null) or failed the controller's batch it arrived in (a value its
# database columns cannot hold, a duration its date arithmetic cannot).
@pytest.mark.parametrize(
    ("kind", "changes", "where"),
    [
        pytest.param(MessageType.RUN_RESULT, {"durationSeconds": math.inf}, "durationSeconds", id="inf"),
        pytest.param(MessageType.RUN_RESULT, {"durationSeconds": 1e300}, "durationSeconds", id="huge"),
        pytest.param(MessageType.RUN_RESULT, {"usage": {"cpuSeconds": math.nan}}, "cpuSeconds", id="nan"),
        pytest.param(MessageType.RUN_RESULT, {"rc": 2**31}, "rc", id="rc-int64"),
        pytest.param(MessageType.RUN_RESULT, {"agentId": "a" * 201}, "agentId", id="long-agent"),
        pytest.param(MessageType.RUN_ACCEPTED, {"runId": "r" * 201}, "runId", id="long-run-id"),
        pytest.param(MessageType.RUN_EVENT, {"events": [{"seq": 2**31, "event": "x"}]}, "seq", id="seq"),
        pytest.param(MessageType.HEARTBEAT, {"intervalSeconds": math.inf}, "intervalSeconds", id="inf-beat"),
        pytest.param(MessageType.HEARTBEAT, {"intervalSeconds": 1e300}, "intervalSeconds", id="huge-beat"),
        pytest.param(MessageType.HEARTBEAT, {"version": "v" * 201}, "version", id="long-version"),
        pytest.param(MessageType.AGENT_OFFLINE, {"agentId": ""}, "agentId", id="empty-agent"),
    ],
)
def test_decode_refuses_what_cannot_be_encoded_or_stored(
    kind: MessageType, changes: dict[str, Any], where: str
) -> None:
    with pytest.raises(ProtocolError, match=where):
        decode_envelope(payload_json(kind, **changes))


@pytest.mark.parametrize(
    "key",
    [pytest.param("k" * 100_000, id="huge-key"), pytest.param("a\nb\u2028c", id="line-breaks")],
)
def test_protocol_error_is_one_short_line_whatever_the_sender_wrote(key: str) -> None:
    wire = json.loads(payload_json(MessageType.CANCEL_RUN))
    wire["payload"][key] = 1
    with pytest.raises(ProtocolError) as caught:
        decode_envelope(json.dumps(wire).encode())
    message = str(caught.value)
    assert message.startswith("invalid chiffon/v1 message: payload.") and "Extra inputs" in message
    assert len(message) <= 500 and message == " ".join(message.split())


@pytest.mark.parametrize("field", ["sentAt", "deadline", "created"])
def test_a_time_without_offset_is_read_as_utc(field: str) -> None:
    """RFC 3339 times carry an offset; one without is UTC, so it encodes back as a valid date-time."""
    naive = "2026-01-01T08:00:00"
    if field == "sentAt":
        body = json.dumps({**json.loads(payload_json(MessageType.CANCEL_RUN)), "sentAt": naive}).encode()
    elif field == "deadline":
        body = payload_json(MessageType.RUN_REQUEST, deadline=naive)
    else:
        body = payload_json(MessageType.RUN_EVENT, events=[{"seq": 0, "event": "x", "created": naive}])

    envelope = decode_envelope(body)

    assert naive + "Z" in encode_envelope(envelope).decode()
    assert decode_envelope(encode_envelope(envelope)) == envelope


# --------------------------------------------------------------------------- run ids

RUN_INPUTS = ("uptime-kuma", 3, DIGEST, "deploy")


def test_run_id_is_deterministic() -> None:
    assert run_id(*RUN_INPUTS) == run_id(*RUN_INPUTS)
    assert run_id(*RUN_INPUTS).startswith("uptime-kuma-")
    assert len(run_id(*RUN_INPUTS)) == len("uptime-kuma-") + 16


@pytest.mark.parametrize(
    "changed",
    [
        ("uptime-kumb", 3, DIGEST, "deploy"),
        ("uptime-kuma", 4, DIGEST, "deploy"),
        ("uptime-kuma", 3, "b" * 64, "deploy"),
        ("uptime-kuma", 3, DIGEST, "configure"),
    ],
)
def test_run_id_changes_with_every_input(changed: tuple[str, int, str, str]) -> None:
    assert run_id(*changed) != run_id(*RUN_INPUTS)


def test_run_id_fields_cannot_run_into_each_other() -> None:
    assert run_id("a", 1, "2", "x") != run_id("a", 12, "", "x")


def test_run_id_of_a_long_name_stays_short() -> None:
    assert len(run_id("x" * 63, 1, DIGEST, "deploy")) == 40 + 1 + 16


def test_a_bad_payload_field_is_named_with_its_payload_path() -> None:
    from chiffon.resources.messages import ProtocolError, decode_envelope

    body = (b'{"protocol":"chiffon/v1","type":"RunRequest","messageId":"m","sentAt":"2026-01-01T00:00:00Z",'
            b'"payload":{"intent":"x"}}')
    with pytest.raises(ProtocolError, match=r"payload\.runId: Field required"):
        decode_envelope(body)
