"""Tables for the YAML loader, the intent parser and the comment-keeping edits (DESIGN §9)."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chiffon.resources import yamlio
from chiffon.resources.source import FileError
from chiffon.resources.yamlio import (
    ParseResult,
    ResourceError,
    YamlLimits,
    dump_yaml,
    load_yaml_documents,
    parse_intents,
    replace_document,
    strip_server_fields,
)


@pytest.fixture(params=["libyaml", "pure-python"])
def parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run a test with ruamel's libyaml parser and with its pure-Python one: answers must agree."""
    monkeypatch.setattr(yamlio, "_PURE_PYTHON", request.param == "pure-python")
    yield request.param


def intent(name: str, *, extra_spec: str = "", step: str = "playbook: ansible/playbooks/deploy.yml") -> str:
    return (
        "apiVersion: chiffon.dev/v1alpha1\n"
        "kind: DeploymentIntent\n"
        "metadata:\n"
        f"  name: {name}\n"
        "spec:\n"
        "  steps:\n"
        "    - name: deploy\n"
        f"      {step}\n"
        f"{extra_spec}"
    )


GOOD = """\
# Uptime Kuma and the proxy in front of it.
---
apiVersion: chiffon.dev/v1alpha1
kind: DeploymentIntent
metadata:
  name: uptime-kuma
  labels: {service: uptime-kuma}
spec:
  steps:
    - name: deploy
      playbook: ansible/playbooks/kuma-deployment.yml   # lives in homelab-infra
  vars:
    kuma_port: 3001
---
# The reverse proxy goes first.
apiVersion: chiffon.dev/v1alpha1
kind: DeploymentIntent
metadata:
  name: reverse-proxy
spec:
  steps:
    - name: deploy
      role: caddy
"""


# --------------------------------------------------------------------------- loading


def test_load_multi_document_file(parser: str) -> None:
    first, second = load_yaml_documents(GOOD, "intents/kuma.yaml")

    assert (first.index, first.line, second.index, second.line) == (0, 3, 1, 16)
    assert first.data["spec"]["vars"] == {"kuma_port": 3001}
    assert first.lines[("spec", "steps", 0, "playbook")] == 11
    assert first.lines[("spec", "steps", 0)] == 10
    assert first.lines[("metadata", "labels", "service")] == 7
    assert second.lines[("spec", "steps", 0, "role")] == 23
    assert first.text.startswith("# Uptime Kuma and the proxy in front of it.\napiVersion:")
    assert "# lives in homelab-infra" in first.text
    assert "---" not in first.text
    assert second.text.startswith("# The reverse proxy goes first.\napiVersion:")


def test_document_text_loads_back_to_the_same_data(parser: str) -> None:
    for document in load_yaml_documents(GOOD, "x.yaml"):
        (again,) = load_yaml_documents(document.text, "again.yaml")
        assert again.data == document.data


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("", []),
        ("# only a comment\n", []),
        ("---\n# nothing here\n---\na: 1\n", [None, {"a": 1}]),
        ("a: 1\n---\n~\n---\nnull\n", [{"a": 1}, None, None]),
        ("---\n---\n", [None, None]),
    ],
)
def test_empty_documents_come_back_as_none(parser: str, text: str, want: list[object]) -> None:
    assert [document.data for document in load_yaml_documents(text, "x.yaml")] == want


def test_comment_only_document_keeps_its_text(parser: str) -> None:
    empty, full = load_yaml_documents("---\n# nothing here\n---\na: 1\n", "x.yaml")
    assert (empty.text, empty.line, full.line) == ("# nothing here\n", 1, 4)


@pytest.mark.parametrize(
    ("yaml_text", "want"),
    [
        ("0x1F", 31),
        ("0o17", 15),
        ("017", 17),
        ("-42", -42),
        ("1_000", 1000),
        ("1.5", 1.5),
        ("-.inf", -math.inf),
        ("1e3", 1000.0),
        ("true", True),
        ("False", False),
        ("yes", "yes"),  # YAML 1.2: only true/false are booleans
        ("on", "on"),
        ("~", None),
        ("null", None),
        ("", None),
        ("2024-01-01", "2024-01-01"),  # timestamps stay the text that was written
        ("2024-01-01T10:00:00Z", "2024-01-01T10:00:00Z"),
        ("'0x1F'", "0x1F"),
        ("!!str 123", "123"),
        ("!!int '7'", 7),
        ("!!float 1", 1.0),
        ("=", "="),
        ("'<<'", "<<"),
    ],
)
def test_scalars_resolve_by_the_yaml_12_core_schema(parser: str, yaml_text: str, want: object) -> None:
    (document,) = load_yaml_documents(f"value: {yaml_text}\n", "x.yaml")
    value = document.data["value"]
    assert value == want
    assert type(value) is type(want)


def test_nan_loads_as_float(parser: str) -> None:
    (document,) = load_yaml_documents("value: .nan\n", "x.yaml")
    assert math.isnan(document.data["value"])


def test_merge_keys(parser: str) -> None:
    text = """\
base: &base {image: kuma, port: 3001, tier: apps}
extra: &extra {port: 9999, debug: true}
service:
  <<: [*base, *extra]
  tier: monitoring
"""
    (document,) = load_yaml_documents(text, "x.yaml")
    # Own keys win over merged ones; earlier merge sources win over later ones.
    assert document.data["service"] == {"image": "kuma", "port": 3001, "debug": True, "tier": "monitoring"}
    assert document.lines[("service", "tier")] == 5
    assert document.lines[("service", "image")] == 1


def test_aliases_are_copied_not_shared(parser: str) -> None:
    (document,) = load_yaml_documents("a: &x [1, 2]\nb: *x\n", "x.yaml")
    assert document.data == {"a": [1, 2], "b": [1, 2]}
    assert document.data["a"] is not document.data["b"]


def test_bom_and_bytes_input(parser: str) -> None:
    (document,) = load_yaml_documents("\ufeffname: kümmel\n".encode(), "x.yaml")
    assert document.data == {"name": "kümmel"}


def billion_laughs(levels: int = 9, width: int = 10) -> str:
    lines = ["l0: &l0 [" + ", ".join(["lol"] * width) + "]"]
    for level in range(1, levels):
        lines.append(f"l{level}: &l{level} [" + ", ".join([f"*l{level - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


HOSTILE = [
    pytest.param(b"a: b\n" * 250_000, 209_716, "over the limit of 1048576 bytes", id="oversized"),
    pytest.param("[" * 10_000 + "]" * 10_000, 1, "nested deeper than 64 levels", id="deep-flow"),
    pytest.param("- " * 10_000 + "x\n", 1, "nested deeper than 64 levels", id="deep-block"),
    pytest.param(
        billion_laughs(), 1, "expands to more than 100000 nodes through aliases", id="billion-laughs"
    ),
    pytest.param(
        "a: &a x\nb: [" + ", ".join(["*a"] * 1001) + "]\n", 2, "uses more than 1000 aliases", id="aliases"
    ),
    pytest.param("---\na: 1\n" * 1001, 2001, "holds more than 1000 YAML documents", id="documents"),
    pytest.param(
        "a: 1\nrun: !!python/object/apply:os.system ['rm -rf /']\n",
        2,
        "tag !!python/object/apply:os.system is not allowed",
        id="python-object",
    ),
    pytest.param("password: !vault |\n  $ANSIBLE_VAULT;1.1\n", 1, "tag !vault is not allowed", id="vault"),
    pytest.param("a: !!binary aGk=\n", 1, "tag !!binary is not allowed", id="binary-tag"),
    pytest.param("a: 1\nb: 2\na: 3\n", 3, "duplicate key 'a' (first at line 1)", id="duplicate-key"),
    pytest.param("? [a, b]\n: 1\n", 1, "a mapping key must be a plain value, not a list", id="list-key"),
    pytest.param(b"name: caf\xe9\n", 1, "is not UTF-8 text (byte 0xe9 at offset 9)", id="latin-1"),
    pytest.param(
        bytes(range(256)) * 4, 2, "is not UTF-8 text (byte 0x80 at offset 128)", id="binary-garbage"
    ),
    pytest.param(b"\x00\x01\x02\x03", 1, "invalid YAML: character #x0000", id="control-characters"),
    pytest.param("spec:\n\tsteps: []\n", 2, "invalid YAML:", id="tab-indent"),
    pytest.param("a: [1, 2\nb: 3\n", 2, "(while parsing a flow sequence at line 1)", id="unclosed-flow"),
    pytest.param("a: 'open\n", 2, "invalid YAML:", id="unclosed-quote"),
    pytest.param(
        "a: *nowhere\n", 1, "alias *nowhere refers to no anchor defined before it", id="undefined-alias"
    ),
    pytest.param(
        "a: &x [1, *x]\n", 1, "an alias refers to a collection that contains it", id="recursive-alias"
    ),
    pytest.param("a: &x 1\nb: &x 2\n", 2, "anchor &x is defined twice (first at line 1)", id="reused-anchor"),
    pytest.param("%YAML 1.1\n---\na: yes\n", None, "%YAML 1.1 is not supported", id="yaml-1.1"),
    pytest.param("a: !!int twelve\n", 1, "cannot read 'twelve' as an integer", id="bad-int"),
    pytest.param("a: {<<: [1, 2]}\n", 1, "a merge key '<<' takes a mapping", id="bad-merge"),
]


@pytest.mark.parametrize(("content", "line", "message"), HOSTILE)
def test_hostile_input_gives_one_clear_error(
    parser: str, content: str | bytes, line: int | None, message: str
) -> None:
    started = time.perf_counter()
    result = parse_intents(content, "intents/bad.yaml")
    elapsed = time.perf_counter() - started

    assert result.intents == []
    (error,) = result.errors
    assert message in error.message
    assert str(error).startswith("intents/bad.yaml:")
    assert error.line is not None
    if line is not None:  # '%YAML 1.1': libyaml points at the directive, pure Python at the '---'
        assert error.line == line
    assert f"intents/bad.yaml:{error.line}: " in str(error)
    assert "\n" not in str(error)
    # ruamel's pure-Python scanner looks ahead up to 1024 characters for a possible
    # key, which costs it half a second on 10 000 '['; libyaml takes milliseconds.
    assert elapsed < (1.0 if parser == "libyaml" else 3.0), f"took {elapsed:.2f}s"


def test_billion_laughs_is_refused_in_milliseconds() -> None:
    started = time.perf_counter()
    with pytest.raises(ResourceError, match="expands to more than 100000 nodes through aliases"):
        load_yaml_documents(billion_laughs(), "bomb.yaml")
    assert time.perf_counter() - started < 0.2


def test_node_limit_without_aliases_says_so() -> None:
    with pytest.raises(ResourceError, match="holds more than 10 nodes"):
        load_yaml_documents("[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]", "x.yaml", YamlLimits(max_nodes=10))


@pytest.mark.parametrize(
    ("text", "line"),
    [
        pytest.param('a: "\\U00110000"\n', 1, id="past-U+10FFFF"),
        pytest.param('b: 1\na: "x\\UFFFFFFFF"\n', 2, id="past-a-C-int"),
        pytest.param('a: "\\ud800"\n', 1, id="lone-surrogate"),
        pytest.param('"\\udfff": 1\n', 1, id="lone-surrogate-key"),
    ],
)
def test_an_escape_that_names_no_character_is_a_yaml_error(parser: str, text: str, line: int) -> None:
    """Found by tests/fuzz: ruamel's pure-Python parser raised ValueError/OverflowError on the first two
    and read the others as text that cannot be encoded; libyaml refuses all four the same way."""
    with pytest.raises(ResourceError, match="invalid Unicode character escape code") as caught:
        load_yaml_documents(text, "x.yaml")
    assert caught.value.line == line


def test_too_many_nodes_are_refused_before_composing(parser: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by tests/fuzz: a 1 MiB list of small values was composed whole (seconds) before being refused."""

    def never(text: str, source: str) -> list[object]:
        raise AssertionError("composed a file the pre-scan should have refused")

    monkeypatch.setattr(yamlio, "_compose", never)
    text = "a: [" + "1," * (yamlio.DEFAULT_LIMITS.max_nodes + 10) + "1]\n"
    with pytest.raises(ResourceError, match=r"x.yaml:1: holds more than 100000 nodes"):
        load_yaml_documents(text, "x.yaml")


def test_node_limit_counts_the_whole_file() -> None:
    text = "---\n[1, 2, 3]\n" * 4  # 4 documents of 4 nodes
    assert len(load_yaml_documents(text, "x.yaml", YamlLimits(max_nodes=16))) == 4
    with pytest.raises(ResourceError, match="holds more than 15 nodes"):
        load_yaml_documents(text, "x.yaml", YamlLimits(max_nodes=15))


def test_aliases_cannot_nest_past_the_depth_limit() -> None:
    text = "a: &a [[[1]]]\nb: &b [[[*a]]]\nc: [[[*b]]]\n"
    assert load_yaml_documents(text, "x.yaml", YamlLimits(max_depth=10))
    with pytest.raises(ResourceError, match="nested deeper than 8 levels once aliases are expanded"):
        load_yaml_documents(text, "x.yaml", YamlLimits(max_depth=8))


def test_oversized_str_is_refused_before_encoding() -> None:
    with pytest.raises(ResourceError, match="more than 100 bytes"):
        load_yaml_documents("a" * 101, "x.yaml", YamlLimits(max_bytes=100))
    with pytest.raises(ResourceError, match="file is 102 bytes"):
        load_yaml_documents("é" * 51, "x.yaml", YamlLimits(max_bytes=100))


def test_lone_surrogate_in_text_is_an_error() -> None:
    with pytest.raises(ResourceError, match="lone surrogate") as caught:
        load_yaml_documents("a: 1\nb: \ud800\n", "x.yaml")
    assert caught.value.line == 2


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("error", "want"),
    [
        (
            ResourceError("x.yaml", "bad", line=12, field="spec.steps[0].playbook"),
            "x.yaml:12: spec.steps[0].playbook: bad",
        ),
        (ResourceError("x.yaml", "bad", line=3), "x.yaml:3: bad"),
        (ResourceError("x.yaml", "bad", field="kind"), "x.yaml: kind: bad"),
        (ResourceError("x.yaml", "first\nsecond\r\n  third"), "x.yaml: first second third"),
    ],
)
def test_resource_error_is_one_line(error: ResourceError, want: str) -> None:
    assert str(error) == want


def test_resource_error_to_file_error() -> None:
    error = ResourceError("x.yaml", "Extra inputs are not permitted", line=9, field="spec.stepz")
    file_error = error.to_file_error()
    assert file_error == FileError(
        path="x.yaml", line=9, field="spec.stepz", message="Extra inputs are not permitted"
    )
    assert str(file_error) == str(error)


def test_resource_error_message_is_bounded() -> None:
    assert len(ResourceError("x.yaml", "y" * 10_000).message) == 500


# --------------------------------------------------------------------------- intents


def test_parse_valid_file(parser: str) -> None:
    result = parse_intents(GOOD, "intents/kuma.yaml")
    assert result.errors == []
    assert [parsed.intent.metadata.name for parsed in result.intents] == ["uptime-kuma", "reverse-proxy"]
    assert [parsed.document.index for parsed in result.intents] == [0, 1]
    assert result.intents[0].source == "intents/kuma.yaml"
    assert result.intents[0].intent.spec.vars == {"kuma_port": 3001}


SCHEMA_ERRORS = """\
apiVersion: chiffon.dev/v1alpha1
kind: DeploymentIntent
metadata:
  name: Uptime_Kuma
spec:
  stepz: []
  steps:
    - name: deploy
      playbook: ../../etc/passwd
    - name: configure
      playbook: /etc/passwd
    - name: both
      playbook: a.yml
      role: caddy
  driftDetection:
    interval: 10s
"""


def test_schema_errors_name_the_field_and_line(parser: str) -> None:
    result = parse_intents(SCHEMA_ERRORS, "intents/kuma.yaml")

    assert result.intents == []
    found = {(error.field, error.line) for error in result.errors}
    assert found == {
        ("metadata.name", 4),
        ("spec.stepz", 6),
        ("spec.steps[0].playbook", 9),
        ("spec.steps[1].playbook", 11),
        ("spec.steps[2]", 12),
        ("spec.driftDetection.interval", 16),
    }
    messages = {error.field: error.message for error in result.errors}
    assert messages["spec.stepz"] == "Extra inputs are not permitted"
    assert messages["spec.steps[0].playbook"] == "'../../etc/passwd' escapes the homelab-infra repository"
    assert "must be relative to the homelab-infra repository" in messages["spec.steps[1].playbook"]
    assert messages["spec.steps[2]"] == "a step names either a playbook or a role, not both"
    assert "is not a DNS-1123 label" in messages["metadata.name"]
    assert str(result.errors[0]).startswith("intents/kuma.yaml:")


@pytest.mark.parametrize(
    ("text", "field", "line", "message"),
    [
        pytest.param(
            intent("kuma", extra_spec="  stepz: []\n"),
            "spec.stepz",
            9,
            "Extra inputs are not permitted",
            id="typo",
        ),
        pytest.param(
            intent("kuma", extra_spec="  drift_detection: {mode: Heal}\n"),
            "spec.drift_detection",
            9,
            "Extra inputs are not permitted",
            id="snake-case-is-not-the-wire-form",
        ),
        pytest.param(intent("Kuma"), "metadata.name", 4, "is not a DNS-1123 label", id="upper-case-name"),
        pytest.param(intent("kuma_1"), "metadata.name", 4, "is not a DNS-1123 label", id="underscore-name"),
        pytest.param(intent("k" * 64), "metadata.name", 4, "must be at most 63 characters", id="long-name"),
        pytest.param(
            intent("kuma", step="playbook: ../../etc/passwd"),
            "spec.steps[0].playbook",
            8,
            "escapes the homelab-infra repository",
            id="path-escape",
        ),
        pytest.param(
            intent("kuma", step="playbook: /etc/passwd"),
            "spec.steps[0].playbook",
            8,
            "must be relative",
            id="absolute-path",
        ),
        pytest.param(
            intent("kuma", step="role: caddy\n      vars: {a: .nan}"),
            "spec.steps[0].vars",
            9,
            "vars must not hold NaN or infinity",
            id="nan-vars",
        ),
        pytest.param(
            intent("kuma", extra_spec="  vars: {1: one}\n"),
            "spec.vars",
            9,
            "key 1: Input should be a valid string",
            id="int-key-vars",
        ),
        pytest.param(
            intent("kuma").replace("  name: kuma\n", "  name: kuma\n  labels:\n    Bad Key: x\n"),
            "metadata.labels",
            6,
            "label key 'Bad Key' must be at most 63 letters",
            id="bad-label-key",
        ),
        pytest.param(
            "apiVersion: chiffon.dev/v1alpha1\nkind: DeploymentIntent\nmetadata:\n  name: kuma\nspec: {}\n",
            "spec.steps",
            5,
            "Field required",
            id="missing-field-points-at-parent",
        ),
        pytest.param(
            intent("kuma").replace("kind: DeploymentIntent", "kind: Deployment"),
            "kind",
            2,
            "unknown kind 'Deployment'; Chiffon reads DeploymentIntent resources",
            id="unknown-kind",
        ),
        pytest.param(
            intent("kuma").replace("chiffon.dev/v1alpha1", "apps/v1"),
            "apiVersion",
            1,
            "apiVersion must be chiffon.dev/v1alpha1 (got 'apps/v1')",
            id="wrong-api-version",
        ),
        pytest.param(
            "kind: DeploymentIntent\nmetadata: {name: kuma}\n",
            "apiVersion",
            1,
            "apiVersion must be chiffon.dev/v1alpha1 (it is missing)",
            id="missing-api-version",
        ),
        pytest.param("- a\n- b\n", None, 1, "a resource must be a mapping", id="not-a-mapping"),
        pytest.param(
            intent("kuma", extra_spec="  dependsOn: [kuma]\n"),
            None,
            1,
            "cannot depend on itself",
            id="self-dependency",
        ),
    ],
)
def test_one_schema_error(parser: str, text: str, field: str | None, line: int, message: str) -> None:
    result = parse_intents(text, "intents/kuma.yaml")
    assert result.intents == []
    (error,) = result.errors
    assert (error.field, error.line) == (field, line)
    assert message in error.message
    assert not error.message.startswith("Value error")


def test_server_fields_are_refused_unless_allowed(parser: str) -> None:
    text = intent("kuma").replace("  name: kuma\n", "  name: kuma\n  uid: abc-1234\n  generation: 3\n")
    text += "status:\n  observedGeneration: 3\n"

    result = parse_intents(text, "intents/kuma.yaml")
    assert result.intents == []
    assert {(error.field, error.line) for error in result.errors} == {
        ("status", 11),
        ("metadata.uid", 5),
        ("metadata.generation", 6),
    }
    assert all("set by the server and never stored in git" in error.message for error in result.errors)

    allowed = parse_intents(text, "intents/kuma.yaml", allow_server_fields=True)
    assert allowed.errors == []
    assert allowed.intents[0].intent.metadata.generation == 3


def test_one_bad_document_does_not_hide_the_good_ones(parser: str) -> None:
    text = "---\n".join([intent("one"), intent("Two"), intent("three")])
    result = parse_intents(text, "intents/many.yaml")
    assert [parsed.intent.metadata.name for parsed in result.intents] == ["one", "three"]
    (error,) = result.errors
    assert (error.field, error.line) == ("metadata.name", 13)


def test_duplicate_name_in_one_file_is_reported_on_the_second(parser: str) -> None:
    text = intent("kuma") + "---\n" + intent("kuma")
    result = parse_intents(text, "intents/kuma.yaml")
    assert [parsed.document.index for parsed in result.intents] == [0]
    (error,) = result.errors
    assert (error.field, error.line) == ("metadata.name", 13)
    assert error.message == "metadata.name 'kuma' is already used by the document at line 1"


def test_empty_documents_are_skipped(parser: str) -> None:
    result = parse_intents("# nothing yet\n---\n---\n" + intent("kuma"), "x.yaml")
    assert (len(result.intents), result.errors) == (1, [])


def test_vars_keep_timestamps_as_text(parser: str) -> None:
    text = intent("kuma", extra_spec="  vars:\n    since: 2024-01-01\n    at: 2024-01-01T10:00:00Z\n")
    (parsed,) = parse_intents(text, "x.yaml").intents
    assert parsed.intent.spec.vars == {"since": "2024-01-01", "at": "2024-01-01T10:00:00Z"}


def test_merge_keys_in_an_intent(parser: str) -> None:
    text = intent("kuma").replace(
        "  name: kuma\n", "  name: kuma\n  labels: &labels {service: kuma}\n  annotations:\n    <<: *labels\n"
    )
    (parsed,) = parse_intents(text, "x.yaml").intents
    assert parsed.intent.metadata.annotations == {"service": "kuma"}


def test_file_level_error_is_the_only_error() -> None:
    result = parse_intents(intent("kuma") + "---\n" + "bad: [\n", "x.yaml")
    assert result.intents == []
    (error,) = result.errors
    assert error.message.startswith("invalid YAML:")


@pytest.mark.parametrize(
    ("text", "lines"),
    [
        pytest.param("apiVersion: v1\nk", 2, id="no-final-newline"),
        pytest.param("a: 1\nb: [\n", 3, id="after-a-final-newline"),
        pytest.param("a: 1\r\nb", 2, id="crlf"),
    ],
)
def test_an_error_at_the_end_points_at_the_last_line(parser: str, text: str, lines: int) -> None:
    """Found by tests/fuzz: ruamel puts it on the line after the last one, which the file does not have."""
    (error,) = parse_intents(text, "x.yaml").errors
    assert error.message.startswith("invalid YAML:")
    assert error.line == lines


# --------------------------------------------------------------------------- edits

EXPORTED = """\
# Exported with chiffonctl get -o yaml
apiVersion: chiffon.dev/v1alpha1
kind: DeploymentIntent
metadata:
  name: uptime-kuma  # keep this name
  uid: 3f2a
  generation: 4
  # labels drive audit queries
  labels: {service: uptime-kuma}
  creationTimestamp: "2024-05-01T10:00:00Z"
spec:
  steps:
    - name: deploy  # first step
      playbook: 'ansible/playbooks/kuma-deployment.yml'
  approval: Manual
status:
  observedGeneration: 4
  conditions:
    - type: Ready
      status: "True"
    # inside status, goes with it
# end of file
"""

STRIPPED = """\
# Exported with chiffonctl get -o yaml
apiVersion: chiffon.dev/v1alpha1
kind: DeploymentIntent
metadata:
  name: uptime-kuma  # keep this name
  # labels drive audit queries
  labels: {service: uptime-kuma}
spec:
  steps:
    - name: deploy  # first step
      playbook: 'ansible/playbooks/kuma-deployment.yml'
  approval: Manual
# end of file
"""


def test_strip_server_fields_keeps_comments_and_order() -> None:
    text, dropped = strip_server_fields(EXPORTED)
    assert text == STRIPPED
    assert dropped == ["status", "metadata.generation", "metadata.uid", "metadata.creationTimestamp"]
    assert parse_intents(text, "x.yaml").errors == []


def test_strip_server_fields_keeps_the_authors_indentation() -> None:
    kubectl_style = "metadata:\n  name: kuma\n  uid: x\nspec:\n  steps:\n  - name: deploy\n    role: caddy\n"
    text, dropped = strip_server_fields(kubectl_style)
    assert text == "metadata:\n  name: kuma\nspec:\n  steps:\n  - name: deploy\n    role: caddy\n"
    assert dropped == ["metadata.uid"]


def test_strip_server_fields_moves_a_comment_after_the_first_key() -> None:
    text, _ = strip_server_fields("metadata:\n  uid: x\n  # the name\n  name: kuma\n")
    assert text == "metadata:\n  # the name\n  name: kuma\n"


@pytest.mark.parametrize("text", [STRIPPED, "just: [a, b]   # odd   spacing\n", "- a\n", "", "# only\n"])
def test_strip_server_fields_leaves_clean_text_untouched(text: str) -> None:
    assert strip_server_fields(text) == (text, [])


def test_strip_server_fields_refuses_hostile_text() -> None:
    with pytest.raises(ResourceError, match="expands to more than"):
        strip_server_fields(billion_laughs())


MULTI = """\
# Intents for the monitoring stack.
---
apiVersion: chiffon.dev/v1alpha1  # first
kind: DeploymentIntent
# about the second one
---
b: 2   # two
...
# after two
---
c: 3  # three
"""


@pytest.mark.parametrize(
    ("index", "new", "want"),
    [
        pytest.param(
            1,
            "x: 9  # nine\n",
            "# Intents for the monitoring stack.\n---\napiVersion: chiffon.dev/v1alpha1  # first\n"
            "kind: DeploymentIntent\n---\nx: 9  # nine\n...\n# after two\n---\nc: 3  # three\n",
            id="replace-middle",
        ),
        pytest.param(
            2,
            "---\nc: 4\n...\n",  # the comment above a document belongs to it, and is replaced with it
            MULTI.replace("# after two\n---\nc: 3  # three\n", "---\nc: 4\n"),
            id="replace-last-markers-dropped",
        ),
        pytest.param(
            0,
            None,
            "# about the second one\n---\nb: 2   # two\n...\n# after two\n---\nc: 3  # three\n",
            id="remove-first",
        ),
        pytest.param(
            1,
            None,
            "# Intents for the monitoring stack.\n---\napiVersion: chiffon.dev/v1alpha1  # first\n"
            "kind: DeploymentIntent\n# after two\n---\nc: 3  # three\n",
            id="remove-middle",
        ),
        pytest.param(2, None, MULTI.replace("# after two\n---\nc: 3  # three\n", ""), id="remove-last"),
    ],
)
def test_replace_document_keeps_the_other_documents(index: int, new: str | None, want: str) -> None:
    assert replace_document(MULTI, index, new) == want


def test_replace_document_in_a_single_document_file() -> None:
    assert replace_document("a: 1  # old\n", 0, "b: 2") == "b: 2\n"
    assert replace_document("\ufeff---\na: 1\n", 0, "b: 2\n") == "\ufeff---\nb: 2\n"
    assert replace_document("a: 1\n", 0, None) == ""


def test_replace_document_round_trips_with_strip_server_fields() -> None:
    (document,) = load_yaml_documents(EXPORTED, "x.yaml")
    text, _ = strip_server_fields(document.text)
    assert replace_document(EXPORTED, 0, text) == STRIPPED


def test_replace_document_refuses_bad_input() -> None:
    with pytest.raises(IndexError):
        replace_document(MULTI, 3, None)
    with pytest.raises(ResourceError, match="exactly one YAML document"):
        replace_document(MULTI, 0, "a: 1\n---\nb: 2\n")
    with pytest.raises(ResourceError, match="invalid YAML"):
        replace_document("a: [\n", 0, None)


def test_dump_yaml_is_block_style_in_key_order() -> None:
    shared = {"x": 1}
    data = {"zeta": 1, "alpha": [shared, shared], "empty": None, "text": "two\nlines\n", "when": "2024-01-01"}
    assert dump_yaml(data) == (
        "zeta: 1\nalpha:\n  - x: 1\n  - x: 1\nempty: null\ntext: |\n  two\n  lines\nwhen: '2024-01-01'\n"
    )


# --------------------------------------------------------------------------- properties

FUZZ = settings(
    max_examples=150,
    deadline=timedelta(seconds=2),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# fmt: off
YAML_PIECES = st.sampled_from([
    "a", "b", "kind", "spec", ":", ": ", "- ", "-", "---\n", "...\n", "\n", "  ", "\t", "[", "]", "{", "}",
    ",", "'", '"', "#", "&a ", "*a", "&b ", "*b", "<<: ", "!!int ", "!!str ", "!!map ", "!!seq ", "!!bool ",
    "!!null ", "!!float ", "!x ", "? ", "|", ">", "%YAML 1.2\n", "%TAG !e! tag:yaml.org,2002:\n", "1",
    "0x", ".inf", "~", "true", "é", "\r\n", "\x85", "\u2028", "\ufeff", "\x00",
    "apiVersion: chiffon.dev/v1alpha1\n", "kind: DeploymentIntent\n", "metadata:\n  name: x\n",
    "spec:\n  steps:\n    - name: a\n      goal: b\n", "status: ", "  uid: x\n", "metadata:\n  uid: x\n",
])
# fmt: on


def assert_well_formed(result: ParseResult) -> None:
    assert isinstance(result, ParseResult)
    for error in result.errors:
        assert isinstance(error, ResourceError)
        assert "\n" not in str(error)


@FUZZ
@given(content=st.binary(max_size=2000))
def test_random_bytes_never_raise(content: bytes) -> None:
    assert_well_formed(parse_intents(content, "fuzz.yaml"))


@FUZZ
@given(content=st.text(max_size=2000))
def test_random_text_never_raises(content: str) -> None:
    assert_well_formed(parse_intents(content, "fuzz.yaml"))


@FUZZ
@given(pieces=st.lists(YAML_PIECES, max_size=60), pure=st.booleans())
def test_yaml_like_text_never_raises(pieces: list[str], pure: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(yamlio, "_PURE_PYTHON", pure)
    text = "".join(pieces)
    assert_well_formed(parse_intents(text, "fuzz.yaml"))
    try:
        documents = load_yaml_documents(text, "fuzz.yaml")
    except ResourceError:
        return
    if "\ufeff" in text[1:]:
        return  # the parsers disagree about a BOM inside a stream; a document alone drops it
    for document in documents:  # a document's text is that document, alone
        assert len(load_yaml_documents(document.text, "again.yaml")) <= 1
        assert replace_document(text, document.index, "a: 1\n").count("a: 1\n") >= 1
        with contextlib.suppress(ResourceError):  # e.g. a server field that comes from a merge key
            stripped, dropped = strip_server_fields(document.text)
            assert dropped == [] or "status" not in load_yaml_documents(stripped, "stripped.yaml")[0].data


PLAIN_DATA = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=40,
)


@FUZZ
@given(data=PLAIN_DATA)
def test_dumped_data_loads_back_the_same(data: object) -> None:
    text = dump_yaml(data)
    (document,) = load_yaml_documents(text, "dumped.yaml")
    assert document.data == data
    assert_well_formed(parse_intents(text, "dumped.yaml"))


@FUZZ
@given(spec=st.dictionaries(st.sampled_from(["steps", "vars", "limit", "stepz", "priority"]), PLAIN_DATA))
def test_random_intents_never_raise(spec: dict[str, object]) -> None:
    data = {
        "apiVersion": "chiffon.dev/v1alpha1",
        "kind": "DeploymentIntent",
        "metadata": {"name": "x"},
        "spec": spec,
    }
    assert_well_formed(parse_intents(dump_yaml(data), "fuzz.yaml"))
