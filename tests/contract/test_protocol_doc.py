"""``docs/protocol.md`` stays true: its examples decode, and its numbers are the code's."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from chiffon.bus import DEAD_LETTER_QUEUE, HEARTBEATS_QUEUE, RESULTS_QUEUE, runs_queue
from chiffon.bus.amqp import queue_arguments
from chiffon.bus.base import MAX_DELIVERIES
from chiffon.resources.messages import (
    MAX_ERROR_CHARS,
    MAX_ID_CHARS,
    MAX_INT32,
    MAX_SECONDS,
    MessageType,
    RunRequest,
    decode_envelope,
)
from chiffon.resources.run import run_id

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
TEXT = DOC.read_text()
EXAMPLES = re.findall(r"```json\n(.*?)```", TEXT, flags=re.DOTALL)


@pytest.mark.parametrize("example", EXAMPLES, ids=[f"example-{n}" for n in range(len(EXAMPLES))])
def test_every_example_is_a_valid_message(example: str) -> None:
    decode_envelope(example.encode())


def test_every_message_type_has_an_example() -> None:
    shown = {decode_envelope(example.encode()).type for example in EXAMPLES}
    assert shown == set(MessageType)


def test_the_run_request_example_uses_its_run_id_as_message_id() -> None:
    request = next(
        envelope
        for envelope in (decode_envelope(example.encode()) for example in EXAMPLES)
        if isinstance(envelope.payload, RunRequest)
    )
    payload = request.payload
    assert isinstance(payload, RunRequest)
    assert request.message_id == payload.run_id
    assert payload.run_id == run_id(
        payload.intent, payload.generation, payload.plan_digest, payload.step, payload.attempt
    )


def test_queue_names_and_limits_are_the_code_s() -> None:
    for name in (RESULTS_QUEUE, HEARTBEATS_QUEUE, DEAD_LETTER_QUEUE, runs_queue("<agentId>")):
        assert f"`{name}`" in TEXT
    arguments = queue_arguments("q", DEAD_LETTER_QUEUE)
    assert f"| `x-delivery-limit` | `{arguments['x-delivery-limit']}` |" in TEXT
    assert f"at most **{MAX_DELIVERIES}** times" in TEXT


def test_value_limits_are_the_code_s() -> None:
    assert f"1\u2013{MAX_ID_CHARS} characters without a NUL" in TEXT  # an en dash, as in the doc
    assert f"`seq` at most {MAX_INT32}" in TEXT and f"`rc` from\n  -{MAX_INT32 + 1}" in TEXT
    assert f"at most {MAX_SECONDS} (about 31 years)" in TEXT
    assert f"at most {MAX_ERROR_CHARS} characters" in TEXT
