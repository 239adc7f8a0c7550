"""Hypothesis strategies for ``chiffon/v1`` message bodies: valid envelopes of every type, and broken ones.

:func:`valid_envelopes` builds the wire form (camelCase JSON data) of a valid
envelope of each of the eight message types, optional fields drawn at random.
:func:`mutated_bodies` takes one and breaks it the ways senders, brokers and
attackers do: keys dropped, added or renamed, values of the wrong type, huge
and non-finite numbers, the wrong payload for the type, deep nesting, odd
Unicode, then bytes truncated, flipped or re-encoded.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import strategies as st

from chiffon.resources.messages import MAX_EVENT_OUTPUT, MessageType
from tests.fuzz.harness import node_paths

ids = st.text(
    st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=40
)  # ids hold no NUL
small_text = st.text(max_size=40)
timestamps = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
) | st.builds(
    lambda moment, minutes: moment.replace(tzinfo=timezone(timedelta(minutes=minutes))),
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)),
    st.integers(min_value=-23 * 60, max_value=23 * 60),
)
finite = st.floats(allow_nan=False, allow_infinity=False)
plain_text = st.text(
    st.characters(codec="utf-8", exclude_characters="\x00"), max_size=40
)  # extraVars hold no NUL
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**64), max_value=2**64) | finite | plain_text,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(plain_text, children, max_size=3),
    max_leaves=10,
)


def _optional(draw: st.DrawFn, payload: dict[str, Any], fields: dict[str, st.SearchStrategy[Any]]) -> None:
    for name, strategy in fields.items():
        if draw(st.booleans()):
            payload[name] = draw(strategy)


@st.composite
def run_request(draw: st.DrawFn) -> dict[str, Any]:
    payload = {
        "runId": draw(ids),
        "intent": draw(ids),
        "generation": draw(st.integers(min_value=0, max_value=2**31)),
        "planDigest": draw(st.text(alphabet="0123456789abcdef", min_size=6, max_size=64)),
        "step": draw(ids),
    }
    _optional(
        draw,
        payload,
        {
            "stepIndex": st.integers(min_value=0, max_value=50),
            "attempt": st.integers(min_value=1, max_value=100),
            "epoch": st.integers(min_value=0, max_value=2**40),
            "playbook": small_text,
            "role": small_text,
            "inventory": small_text,
            "limit": small_text,
            "tags": st.lists(small_text, max_size=3),
            "skipTags": st.lists(small_text, max_size=3),
            "extraVars": st.dictionaries(plain_text, json_values, max_size=4),
            "check": st.booleans(),
            "diff": st.booleans(),
            "timeoutSeconds": st.integers(min_value=1, max_value=10**6),
            "agentId": ids,
            "deadline": timestamps.map(datetime.isoformat),
        },
    )
    return payload


ansible_events = st.fixed_dictionaries(
    {"seq": st.integers(min_value=0, max_value=2**31 - 1), "event": small_text},
    optional={
        "task": small_text,
        "host": small_text,
        "status": st.sampled_from(["ok", "changed", "failed", "skipped", "unreachable"]),
        "output": st.text(max_size=MAX_EVENT_OUTPUT // 8),
        "created": timestamps.map(datetime.isoformat),
    },
)
host_stats = st.fixed_dictionaries(
    {},
    optional={
        name: st.integers(min_value=0, max_value=10**6)
        for name in ("ok", "changed", "failed", "skipped", "unreachable", "rescued", "ignored")
    },
)
gpus = st.fixed_dictionaries(
    {
        "index": st.integers(min_value=0, max_value=16),
        "memoryTotalMib": st.integers(min_value=0, max_value=2**20),
        "memoryFreeMib": st.integers(min_value=0, max_value=2**20),
    },
    optional={
        "name": small_text,
        "uuid": small_text,
        "utilizationPercent": st.floats(min_value=0, max_value=100),
    },
)
capacity = st.fixed_dictionaries(
    {
        "cpuLoadPercent": st.floats(min_value=0, max_value=100),
        "cpuCores": st.integers(min_value=0, max_value=1024),
        "memoryTotalMib": st.integers(min_value=0, max_value=2**30),
        "memoryAvailableMib": st.integers(min_value=0, max_value=2**30),
    },
    optional={"gpus": st.lists(gpus, max_size=3), "busy": st.booleans(), "busyReason": small_text},
)

PAYLOADS: dict[MessageType, st.SearchStrategy[dict[str, Any]]] = {
    MessageType.RUN_REQUEST: run_request(),
    MessageType.RUN_ACCEPTED: st.fixed_dictionaries({"runId": ids, "agentId": ids}),
    MessageType.RUN_EVENT: st.fixed_dictionaries(
        {"runId": ids, "agentId": ids, "events": st.lists(ansible_events, min_size=1, max_size=5)}
    ),
    MessageType.RUN_RESULT: st.fixed_dictionaries(
        {
            "runId": ids,
            "agentId": ids,
            "status": st.sampled_from(["successful", "failed", "timeout", "canceled"]),
            "durationSeconds": st.floats(min_value=0, max_value=10**7),
        },
        optional={
            "rc": st.integers(min_value=-255, max_value=255),
            "stats": st.dictionaries(small_text, host_stats, max_size=3),
            "usage": st.fixed_dictionaries(
                {}, optional={"cpuSeconds": st.floats(0, 10**6), "peakMemoryMib": st.floats(0, 10**6)}
            ),
            "error": small_text,
        },
    ),
    MessageType.CANCEL_RUN: st.fixed_dictionaries({"runId": ids}, optional={"reason": small_text}),
    MessageType.HEARTBEAT: st.fixed_dictionaries(
        {"agentId": ids, "kind": st.sampled_from(["infra", "desktop"]), "capacity": capacity},
        optional={
            "labels": st.dictionaries(small_text, small_text, max_size=3),
            "online": st.booleans(),
            "intervalSeconds": st.floats(min_value=0.001, max_value=3600),
            "version": small_text,
            "runs": st.lists(ids, max_size=5),
        },
    ),
    MessageType.AGENT_OFFLINE: st.fixed_dictionaries({"agentId": ids}, optional={"reason": small_text}),
    MessageType.ERROR: st.fixed_dictionaries(
        {"code": small_text, "message": small_text}, optional={"relatedMessageId": ids}
    ),
}


@st.composite
def valid_envelopes(draw: st.DrawFn, kind: MessageType | None = None) -> dict[str, Any]:
    """The JSON data of a valid envelope: of ``kind``, or of any type."""
    kind = kind or draw(st.sampled_from(list(MessageType)))
    envelope: dict[str, Any] = {
        "protocol": "chiffon/v1",
        "type": kind.value,
        "messageId": draw(ids),
        "sentAt": draw(timestamps).isoformat(),
        "payload": draw(PAYLOADS[kind]),
    }
    if draw(st.booleans()):
        envelope["correlationId"] = draw(ids)
    return envelope


# --------------------------------------------------------------------------- breaking them

hostile_values = st.one_of(
    json_values,
    st.sampled_from(
        [
            math.inf,
            -math.inf,
            math.nan,
            10**400,
            -(10**400),
            2**31,
            2**63,
            -1,
            0,
            1e308,
            5e-324,
            "",
            " ",
            "\x00",
            "\ud800",
            "😀" * 50,
            "x" * 100_000,
            "a\nb\r\u2028",
            "1970-01-01T00:00:00",
            "9999-12-31T23:59:59+23:59",
            "0000-00-00T00:00:00Z",
            "not a date",
            [],
            {},
            [[[[[[[[[[[]]]]]]]]]]],
            True,
            None,
            *[kind.value for kind in MessageType],
        ]
    ),
)


def _set(data: Any, path: tuple[Any, ...], change: str, value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    copy: Any = dict(data) if isinstance(data, dict) else list(data)
    if rest:
        copy[head] = _set(data[head], rest, change, value)
    elif change == "drop":
        del copy[head]
    elif change == "add" and isinstance(copy, dict):
        copy[value if isinstance(value, str) else str(value)[:50]] = value
    elif change == "add":
        copy.insert(head, value)
    elif change == "nest":
        copy[head] = [[[[[copy[head]]]]]]
    else:
        copy[head] = value
    return copy


@st.composite
def mutated_envelopes(draw: st.DrawFn) -> Any:
    """A valid envelope's data changed at one to four places (it may still be valid)."""
    data: Any = draw(valid_envelopes())
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        path = draw(st.sampled_from(node_paths(data)))
        change = draw(st.sampled_from(["drop", "add", "replace", "nest", "swap-payload", "swap-type"]))
        if change == "swap-payload" and isinstance(data, dict):
            other = draw(st.sampled_from(list(MessageType)))
            data = {**data, "payload": draw(PAYLOADS[other])}
        elif change == "swap-type" and isinstance(data, dict):
            data = {**data, "type": draw(st.sampled_from(list(MessageType))).value}
        elif path:
            data = _set(data, path, change, draw(hostile_values))
    return data


def encode(data: Any, style: str) -> bytes:
    """JSON bytes the way different senders write them (``surrogatepass`` keeps a lone surrogate)."""
    if style == "compact":
        return json.dumps(data, separators=(",", ":")).encode()
    if style == "pretty":
        return json.dumps(data, indent=2, ensure_ascii=False).encode("utf-8", "surrogatepass")
    if style == "utf-16":
        return json.dumps(data, ensure_ascii=False).encode("utf-16", "surrogatepass")
    return b"\xef\xbb\xbf" + json.dumps(data).encode()  # a UTF-8 BOM


@st.composite
def mutated_bodies(draw: st.DrawFn) -> bytes:
    """A message body: a mutated envelope encoded one way or another, then perhaps damaged as bytes."""
    body = encode(draw(mutated_envelopes()), draw(st.sampled_from(["compact", "pretty", "utf-16", "bom"])))
    damage = draw(st.sampled_from(["none", "none", "truncate", "flip", "insert", "duplicate-key"]))
    if damage == "truncate":
        body = body[: draw(st.integers(min_value=0, max_value=len(body)))]
    elif damage == "flip" and body:
        at = draw(st.integers(min_value=0, max_value=len(body) - 1))
        body = body[:at] + bytes([draw(st.integers(min_value=0, max_value=255))]) + body[at + 1 :]
    elif damage == "insert":
        at = draw(st.integers(min_value=0, max_value=len(body)))
        body = body[:at] + draw(st.binary(min_size=1, max_size=8)) + body[at:]
    elif damage == "duplicate-key" and body.startswith(b"{"):
        # A second "type" (or "payload") key: which one wins must not depend on the parser.
        key = draw(st.sampled_from([b'"type":"Heartbeat",', b'"payload":{},', b'"protocol":"chiffon/v2",']))
        body = b"{" + key + body[1:]
    return body
