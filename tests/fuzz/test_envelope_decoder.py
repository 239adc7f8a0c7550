"""Fuzzing the ``chiffon/v1`` envelope decoder and what the bus does with a raw body.

``decode_envelope`` is the one door for every message off the bus: the
consumers (``chiffon.bus.consumer.handle``, for both buses) and the outbox
relay call it on raw bytes. The property, for every body: it returns an
Envelope, or raises ``ProtocolError`` with a short one-line message — never
anything else. What it accepts round-trips (encode, decode, the same
envelope) and, encoded, conforms to the published JSON Schema
(``docs/schema/envelope.json``); what it refuses never reaches a handler: the
consumer dead-letters it.
"""

from __future__ import annotations

import asyncio
import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
from hypothesis import given
from hypothesis import strategies as st

from chiffon.bus.consumer import Outcome, RawDelivery, handle
from chiffon.bus.consumer import one_line as consumer_log_line
from chiffon.resources.messages import (
    MAX_MESSAGE_BYTES,
    PAYLOAD_TYPES,
    Envelope,
    MessageType,
    ProtocolError,
    decode_envelope,
    encode_envelope,
)
from tests.fuzz.envelope_strategies import encode, mutated_bodies, mutated_envelopes, valid_envelopes
from tests.fuzz.harness import Trial, fuzz_settings, trial

FUZZ_TARGET = "envelope decoder"

DEADLINE_MS = 2_000
HANG_S = 30.0
MAX_REFUSAL_CHARS = 600
SCHEMA_DIR = Path(__file__).resolve().parents[2] / "docs" / "schema"


# RFC 3339 (what "format": "date-time" means): a date, a time and, always, an offset.
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
FORMATS = jsonschema.FormatChecker()


@FORMATS.checks("date-time")
def _is_rfc3339(value: object) -> bool:
    return not isinstance(value, str) or bool(RFC3339.match(value))


@cache
def envelope_schema() -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMA_DIR / "envelope.json").read_text(encoding="utf-8"))
    return jsonschema.Draft202012Validator(schema, format_checker=FORMATS)


def check_body(body: bytes, outcome: Trial) -> Envelope | None:
    """Decode ``body``: an envelope that round-trips and fits the schema, or a short ProtocolError."""
    try:
        envelope = decode_envelope(body)
    except ProtocolError as exc:
        message = str(exc)
        assert message.strip(), "a refusal must say why"
        assert message == consumer_log_line(exc), f"not one line: {message!r}"
        assert len(message) <= MAX_REFUSAL_CHARS, f"{len(message)} characters: {message[:200]!r}…"
        return None
    assert isinstance(envelope.payload, PAYLOAD_TYPES[envelope.type])
    encoded = encode_envelope(envelope)
    assert len(encoded) <= MAX_MESSAGE_BYTES
    assert decode_envelope(encoded) == envelope, encoded[:500]
    wire = json.loads(encoded)
    errors = sorted(envelope_schema().iter_errors(wire), key=str)
    assert not errors, f"the encoded envelope does not fit docs/schema/envelope.json: {errors[0].message}"
    assert encode_envelope(decode_envelope(encoded)) == encoded
    outcome.accepted = True
    return envelope


def check_consumer(body: bytes, decoded: Envelope | None) -> None:
    """The bus consumer on the same body: a refused body is dead-lettered and never handled."""
    settled: list[Outcome] = []
    handled: list[Envelope] = []

    async def settle(outcome: Outcome) -> None:
        settled.append(outcome)

    async def handler(delivery: Any) -> None:
        handled.append(delivery.envelope)
        await delivery.ack()

    raw = RawDelivery(queue="chiffon.results", body=body, redelivered=False, attempt=1, settle=settle)
    asyncio.run(handle(raw, handler))
    if decoded is None:
        assert (settled, handled) == ([Outcome.DEAD_LETTER], [])
    else:
        assert (settled, handled) == ([Outcome.ACK], [decoded])


def fuzz_one(body: bytes, *, consumer: bool = False) -> None:
    with trial(FUZZ_TARGET, limit_seconds=HANG_S) as outcome:
        decoded = check_body(body, outcome)
        if consumer:
            check_consumer(body, decoded)


@given(body=st.binary(max_size=2048))
@fuzz_settings(500, deadline_ms=DEADLINE_MS)
def test_arbitrary_bytes(body: bytes) -> None:
    fuzz_one(body)


@given(
    data=st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
        lambda c: st.lists(c) | st.dictionaries(st.text(), c),
    )
)
@fuzz_settings(300, deadline_ms=DEADLINE_MS)
def test_arbitrary_json(data: Any) -> None:
    fuzz_one(json.dumps(data).encode())


@given(data=valid_envelopes(), style=st.sampled_from(["compact", "pretty", "bom"]))
@fuzz_settings(300, deadline_ms=DEADLINE_MS)
def test_valid_envelopes_round_trip(data: dict[str, Any], style: str) -> None:
    """Every valid envelope of every type decodes, matches the schema and round-trips."""
    errors = list(envelope_schema().iter_errors(data))
    assert not errors, f"the strategy built an envelope the schema refuses: {errors[0].message}"
    with trial(FUZZ_TARGET, limit_seconds=HANG_S) as outcome:
        body = encode(data, style)
        if style == "bom":
            # A BOM is not JSON; the decoder refuses it like any other stray byte.
            assert check_body(body, outcome) is None
            return
        envelope = check_body(body, outcome)
        assert envelope is not None and envelope.type == MessageType(data["type"])


@given(data=mutated_envelopes())
@fuzz_settings(500, deadline_ms=DEADLINE_MS)
def test_mutated_envelopes(data: Any) -> None:
    """Envelopes changed in place: the decoder accepts exactly what the schema accepts, or is stricter."""
    with trial(FUZZ_TARGET, limit_seconds=HANG_S) as outcome:
        try:
            body = json.dumps(data).encode()
        except ValueError:  # a recursion json.dumps refuses to write
            return
        decoded = check_body(body, outcome)
        if decoded is not None and list(envelope_schema().iter_errors(json.loads(body))):
            outcome.note = "accepted although the schema refuses it (lax coercion)"


@given(body=mutated_bodies())
@fuzz_settings(500, deadline_ms=DEADLINE_MS)
def test_mutated_bodies_through_the_consumer(body: bytes) -> None:
    fuzz_one(body, consumer=True)


@given(size=st.integers(min_value=MAX_MESSAGE_BYTES + 1, max_value=MAX_MESSAGE_BYTES + 4096))
@fuzz_settings(10, deadline_ms=DEADLINE_MS)
def test_oversized_bodies_are_refused_before_parsing(size: int) -> None:
    with trial(FUZZ_TARGET, limit_seconds=HANG_S) as outcome:
        assert check_body(b"[" * size, outcome) is None
        outcome.note = "oversized bodies refused"


@given(depth=st.integers(min_value=100, max_value=MAX_MESSAGE_BYTES // 2), kind=st.sampled_from("[{"))
@fuzz_settings(20, deadline_ms=DEADLINE_MS)
def test_deep_nesting_is_refused(depth: int, kind: str) -> None:
    with trial(FUZZ_TARGET, limit_seconds=HANG_S) as outcome:
        opener = b"[" if kind == "[" else b'{"a":'
        body = b'{"protocol":"chiffon/v1","type":"Error","payload":' + opener * depth
        assert check_body(body, outcome) is None
        outcome.note = "deep nesting refused"
