"""Fuzzing the intent parser and every entry point that reads YAML someone else wrote.

What reads intents: ``parse_intents`` (``chiffonctl apply/validate``, the API's
apply), ``validate_submission`` (the API's apply and dry run),
``parse_blobs`` (the git source), ``load_yaml_documents`` (the planner, the
catalog, ``chiffon.yaml``), and the two editors that rewrite files people
wrote: ``strip_server_fields`` (``chiffonctl apply``) and ``replace_document``
(the intents writer).

The property, for every input: the call returns, within the deadline, a
result whose errors each name the file and a line (or a field), or raises the
documented exception (``ResourceError``; ``ApplyError`` listing them;
``IndexError`` for a document a file does not have) — never anything else.
What it accepts round-trips: an intent dumped as YAML reads back as the same
intent, a document's own text reads back as the same data, and an edit leaves
the other documents as they were. Alias bombs and deep nesting are refused
with a clear error in milliseconds, both with libyaml and ruamel's pure-Python
parser.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from chiffon.controllers.intents_writer import ApplyError, SubmittedFile, validate_submission
from chiffon.controllers.source import parse_blobs
from chiffon.resources import DeploymentIntent, yamlio
from chiffon.resources.yamlio import (
    DEFAULT_LIMITS,
    ResourceError,
    dump_yaml,
    load_yaml_documents,
    parse_intents,
    replace_document,
    strip_server_fields,
)
from tests.fuzz.harness import Trial, fuzz_settings, trial
from tests.fuzz.yaml_strategies import (
    alias_bombs,
    deep_nesting,
    mutated_example_data,
    mutated_example_text,
    valid_intent_files,
    yaml_documents,
)

FUZZ_TARGET = "intent parser"

# One example runs every entry point, each parsing the file again: a few milliseconds for most
# files, about ten seconds on a busy runner for one that expands to the 100 000 node limit.
DEADLINE_MS = 10_000
# Past this an example counts as hung (harness.hang_guard), whatever the deadline says.
HANG_S = 60.0
# What a hostile file may cost before it is refused: no expanding, no deep recursion. libyaml
# refuses each in a few milliseconds; ruamel's pure-Python scanner looks ahead over a few
# thousand '[' before the parser reaches the depth limit (~0.2 s on an idle machine).
REFUSAL_BUDGET_S = 1.0
# ruamel (and so every line number) breaks lines at these, not only at '\n'.
LINE_BREAKS = re.compile("\r\n|[\r\n\x85\u2028\u2029]")
SERVER_FIELDS = ("generation", "uid", "creationTimestamp")
# What may be said of a whole file without a line: nothing in it to point at.
WHOLE_FILE_PROBLEMS = ("no DeploymentIntent documents found", "is nested too deeply to read")


@contextmanager
def parser(pure_python: bool) -> Iterator[None]:
    """Run with ruamel's pure-Python parser instead of libyaml; both must give clean answers."""
    before = yamlio._PURE_PYTHON
    yamlio._PURE_PYTHON = pure_python
    try:
        yield
    finally:
        yamlio._PURE_PYTHON = before


def _text(content: str | bytes) -> str:
    return content if isinstance(content, str) else content.decode("utf-8", "replace")


def _lines(content: str | bytes) -> int:
    return len(LINE_BREAKS.findall(_text(content))) + 1


def check_errors(errors: Sequence[ResourceError], source: str, content: str | bytes) -> None:
    """Each error names the file, a line within it or a field, and says what is wrong on one line."""
    for error in errors:
        assert isinstance(error, ResourceError), repr(error)
        assert error.source == source, str(error)
        assert error.message.strip(), repr(error)
        shown = str(error)
        assert not LINE_BREAKS.search(shown), repr(shown)
        assert len(shown) <= len(source) + 2_000, f"{len(shown)} characters"
        if error.line is not None:
            assert 1 <= error.line <= _lines(content), f"line {error.line} of {_lines(content)}: {shown}"
        if error.line is None and error.field is None:
            assert error.message in WHOLE_FILE_PROBLEMS, f"no line and no field: {shown}"


def check_round_trip(intent: Any, source: str) -> None:
    """An accepted intent is plain data: JSON in UTF-8, and its YAML reads back as the same intent."""
    wire = intent.to_wire()
    json.dumps(wire, ensure_ascii=False, allow_nan=False).encode("utf-8")
    again = parse_intents(dump_yaml(wire), f"{source} (dumped)", allow_server_fields=True)
    assert not again.errors, [str(error) for error in again.errors]
    assert [parsed.intent for parsed in again.intents] == [intent]


def check_parse(content: str | bytes, source: str, outcome: Trial) -> None:
    """``parse_intents`` and the git source's ``parse_blobs``: clean errors, round-tripping intents."""
    result = parse_intents(content, source)
    check_errors(result.errors, source, content)
    names = [parsed.intent.metadata.name for parsed in result.intents]
    assert len(names) == len(set(names)), names
    for parsed in result.intents:
        assert parsed.source == source
        check_round_trip(parsed.intent, source)
        # The document's own text (what the writer and 'chiffonctl diff' use) reads back the same.
        own = parse_intents(parsed.document.text, source)
        assert [p.intent for p in own.intents] == [parsed.intent], [str(e) for e in own.errors]
    if isinstance(content, bytes):
        # The git source reads blobs (bytes); text is sized differently before it is encoded.
        [blob_result] = parse_blobs({source: content}).values()
        assert [str(e) for e in blob_result.errors] == [str(e) for e in result.errors]
        assert [p.intent for p in blob_result.intents] == [p.intent for p in result.intents]
    outcome.accepted = bool(result.intents)
    if result.intents and result.errors:
        outcome.note = "files with good and bad documents"


def check_submission(content: str | bytes, source: str) -> None:
    """The API's apply: the intents, or one ApplyError that lists every problem."""
    raw = content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass")
    try:
        validate_submission([SubmittedFile(source, raw)])
    except ApplyError as exc:
        assert exc.errors
        check_errors([e for e in exc.errors if e.source == source], source, raw)


def check_documents(content: str | bytes, source: str) -> list[yamlio.YamlDocument] | None:
    try:
        documents = load_yaml_documents(content, source)
    except ResourceError as error:
        check_errors([error], source, content)
        return None
    for document in documents:
        assert 1 <= document.line <= _lines(content)
        for line in document.lines.values():
            assert 1 <= line <= _lines(content)
    return documents


def _without_server_fields(data: Any) -> Any:
    if not isinstance(data, dict):
        return data
    kept = {key: value for key, value in data.items() if key != "status"}
    if isinstance(kept.get("metadata"), dict):
        kept["metadata"] = {k: v for k, v in kept["metadata"].items() if k not in SERVER_FIELDS}
    return kept


def check_editors(text: str, documents: list[yamlio.YamlDocument]) -> None:
    """``strip_server_fields`` and ``replace_document`` on text that loads: clean errors, faithful edits."""
    if len(documents) == 1:
        try:
            stripped, removed = strip_server_fields(text)
        except ResourceError as error:
            check_errors([error], "<document>", text)
        else:
            data = documents[0].data
            if not removed:
                assert stripped == text
            else:
                [after] = load_yaml_documents(stripped, "<stripped>")
                assert after.data == _without_server_fields(data), (data, after.data)
    if not documents:
        return
    index = len(documents) // 2
    replacement = "replaced: true\n"
    try:
        edited = replace_document(text, index, replacement)
    except ResourceError as error:
        # '<file>', '<new document>' or '<edited file>': which text the line is in depends on the step.
        assert error.message.strip() and not LINE_BREAKS.search(str(error)), repr(error)
        return
    after = [document.data for document in load_yaml_documents(edited, "<edited>")]
    want = [document.data for document in documents]
    want[index] = {"replaced": True}
    assert after == want


def fuzz_one(content: str | bytes, source: str, *, pure_python: bool = False) -> None:
    """Every entry point on one input, counted as one example."""
    with trial(FUZZ_TARGET, limit_seconds=HANG_S) as outcome, parser(pure_python):
        check_parse(content, source, outcome)
        check_submission(content, source)
        documents = check_documents(content, source)
        if documents is not None and isinstance(content, str):
            check_editors(content, documents)


SOURCES = st.sampled_from(["intents/kuma.yaml", "a b/ünï cødé.yml", "x.yaml", "dir/../odd\tname.yaml"])


@given(content=st.binary(max_size=4096), source=SOURCES, pure=st.booleans())
@fuzz_settings(300, deadline_ms=DEADLINE_MS)
def test_arbitrary_bytes(content: bytes, source: str, pure: bool) -> None:
    fuzz_one(content, source, pure_python=pure)


@given(content=st.text(max_size=4096), source=SOURCES, pure=st.booleans())
@fuzz_settings(300, deadline_ms=DEADLINE_MS)
def test_arbitrary_text(content: str, source: str, pure: bool) -> None:
    fuzz_one(content, source, pure_python=pure)


@given(content=yaml_documents(), source=SOURCES, pure=st.booleans())
@fuzz_settings(300, deadline_ms=DEADLINE_MS)
def test_yaml_shaped_documents(content: str, source: str, pure: bool) -> None:
    fuzz_one(content, source, pure_python=pure)


@given(example=mutated_example_data(), pure=st.booleans())
@fuzz_settings(200, deadline_ms=DEADLINE_MS)
def test_mutated_example_data(example: tuple[str, str], pure: bool) -> None:
    source, content = example
    fuzz_one(content, source, pure_python=pure)


@given(example=mutated_example_text(), pure=st.booleans())
@fuzz_settings(300, deadline_ms=DEADLINE_MS)
def test_mutated_example_text(example: tuple[str, str | bytes], pure: bool) -> None:
    source, content = example
    fuzz_one(content, source, pure_python=pure)


# --------------------------------------------------------------------------- hostile classics


def _parse_timed(content: str, pure: bool) -> tuple[list[ResourceError], float]:
    """The errors for a file and the best of up to three timings (a busy CI runner must not fail it)."""
    with parser(pure):
        elapsed = math.inf
        for _ in range(3):
            started = time.perf_counter()
            result = parse_intents(content, "hostile.yaml")
            elapsed = min(elapsed, time.perf_counter() - started)
            if elapsed < REFUSAL_BUDGET_S:
                break
    check_errors(result.errors, "hostile.yaml", content)
    return result.errors, elapsed


def _expanded_nodes(bomb: str) -> int:
    """What the bomb's mapping of levels a0..aN expands to, key and value nodes counted."""
    depth = bomb.count("&a")
    width = max(bomb.count(f"*a{depth - 2}"), 1)
    return sum(2 + width**level for level in range(depth))


@given(bomb=alias_bombs(), pure=st.booleans())
# A bomb under the node limit is read like any file of that many nodes (up to 100 000, about
# a second on a busy runner), hence the longer deadline; those over the limit get REFUSAL_BUDGET_S.
@fuzz_settings(100, deadline_ms=10_000)
def test_alias_bombs_are_refused_without_expanding(bomb: str, pure: bool) -> None:
    with trial(FUZZ_TARGET) as outcome:
        errors, elapsed = _parse_timed(bomb, pure)
        if _expanded_nodes(bomb) > DEFAULT_LIMITS.max_nodes:
            assert elapsed < REFUSAL_BUDGET_S, f"took {elapsed:.3f} s"
            assert len(errors) == 1, [str(e) for e in errors]
            message = str(errors[0])
            assert "expands to more than" in message or "aliases" in message, message
            outcome.note = "bombs refused"
        else:
            outcome.accepted = not errors
            outcome.note = "alias trees under the node limit read"


@given(text=deep_nesting(), pure=st.booleans())
@fuzz_settings(100, deadline_ms=DEADLINE_MS)
def test_deep_nesting_is_refused(text: str, pure: bool) -> None:
    with trial(FUZZ_TARGET) as outcome:
        errors, elapsed = _parse_timed(text, pure)
        assert elapsed < REFUSAL_BUDGET_S, f"took {elapsed:.3f} s"
        assert len(errors) == 1, [str(e) for e in errors]
        message = str(errors[0])
        refusals = ("nested deeper than", "nested too deeply", "over the limit of")  # the last: a 1 MiB file
        assert any(refusal in message for refusal in refusals), message
        outcome.note = "deep nesting refused"


# --------------------------------------------------------------------------- what must be accepted


@given(example=valid_intent_files(), pure=st.booleans())
@fuzz_settings(100, deadline_ms=DEADLINE_MS)
def test_valid_intents_are_read_as_written(example: tuple[list[dict[str, Any]], str], pure: bool) -> None:
    """Valid intents, as block YAML or as JSON: read as written, round-tripping, editable."""
    intents, text = example
    with trial(FUZZ_TARGET, limit_seconds=HANG_S) as outcome, parser(pure):
        result = parse_intents(text, "valid.yaml")
        assert not result.errors, [str(error) for error in result.errors]
        want = [DeploymentIntent.model_validate(intent, by_alias=True) for intent in intents]
        assert [parsed.intent for parsed in result.intents] == want
        for parsed in result.intents:
            check_round_trip(parsed.intent, "valid.yaml")
        check_editors(text, load_yaml_documents(text, "valid.yaml"))
        outcome.accepted = True
