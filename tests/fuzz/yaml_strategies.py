"""Hypothesis strategies for YAML that people, chat models and attackers write.

* :func:`yaml_documents` — YAML-shaped text built from a recursive tree of
  scalars, block and flow collections, anchors, aliases, merge keys, tags,
  comments and document markers; most of it parses, much of it does not.
* :func:`mutated_examples` — the real intents under ``examples/intents``,
  changed the way edits go wrong: keys dropped, replaced, duplicated, values of
  the wrong type, huge numbers, odd Unicode, tags like ``!!python/object``,
  aliases, bombs and deep nesting spliced in, lines cut, bytes flipped.
* :func:`alias_bombs` and :func:`deep_nesting` — the classic hostile files,
  sized by Hypothesis.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from chiffon.resources.yamlio import DEFAULT_LIMITS, dump_yaml, load_yaml_documents
from tests.fuzz.harness import node_paths

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples" / "intents"
EXAMPLE_FILES: dict[str, str] = {
    path.name: path.read_text(encoding="utf-8") for path in sorted(EXAMPLES_DIR.glob("*.yaml"))
}

ANCHORS = ("a", "b", "base", "x1")

# Plain scalars the YAML 1.1 / 1.2 resolvers disagree on, or that look like something else.
# fmt: off
TRICKY_PLAIN = (
    "yes", "no", "on", "off", "y", "n", "true", "False", "TRUE", "null", "Null", "~", "",
    "0x1F", "0o17", "017", "0b101", "1_000", "+1", "-0", "1e3", "1e400", "-1e400", "1.5e-400",
    ".inf", "-.Inf", "+.INF", ".nan", ".NaN", "0x", "0o", "0b", "-0x_", "1__0", "_1",
    "2001-12-14", "2001-12-14t21:59:43.10-05:00", "12:30:45", "1:20", "190:20:30",
    "=", "<<", "?", "-", "--", "...", "---", "%", "@x", "`x", "|", ">", "&x", "*x", "!x", "#x",
    "kuma", "uptime-kuma", "ansible/playbooks/deploy.yml", "../../etc/passwd", "/etc/shadow",
    "chiffon.dev/v1alpha1", "DeploymentIntent", "Manual", "Auto", "Report", "Heal", "High",
    "9" * 40, "-" + "9" * 400, "1" + "0" * 5000,
)
TAGS = (
    "!!str", "!!int", "!!float", "!!bool", "!!null", "!!map", "!!seq", "!!binary", "!!timestamp",
    "!!set", "!!omap", "!!pairs", "!!python/object:os.system", "!!python/object/apply:os.system",
    "!!python/name:builtins.eval", "!vault", "!include", "!<tag:yaml.org,2002:str>", "!<!>", "!",
    "!!merge", "!unsafe",
)
KEYS = (
    "apiVersion", "kind", "metadata", "name", "labels", "annotations", "spec", "steps", "playbook",
    "role", "goal", "vars", "tags", "skipTags", "inventory", "limit", "resources", "gpuMemoryMiB",
    "cpuCores", "memoryMiB", "placement", "agentSelector", "approval", "driftDetection", "interval",
    "mode", "dependsOn", "priority", "suspend", "status", "generation", "uid", "creationTimestamp",
    "service", "<<", "?", "", " ", "a b", "ключ", "🔑",
)
# fmt: on

unicode_text = st.text(st.characters(codec="utf-8"), max_size=40)
odd_text = st.text(
    st.sampled_from(
        "\t\r\n\x00\x07\x0b\x0c\x1b\x7f\x85\xa0\u2028\u2029\ufeff\ufffe\u200b\u202e\U0001f600é\\\"'#:-{}[],&*!|>%@`"
    ),
    max_size=12,
)


@st.composite
def _double_quoted(draw: st.DrawFn) -> str:
    pieces = draw(
        st.lists(
            st.one_of(
                unicode_text.map(lambda text: text.replace("\\", "\\\\").replace('"', '\\"')),
                st.sampled_from(
                    [
                        "\\x00",
                        "\\x85",
                        "\\u2028",
                        "\\ud800",
                        "\\udfff",
                        "\\U0010ffff",
                        "\\U00110000",
                        "\\N",
                        "\\_",
                        "\\L",
                        "\\P",
                        "\\e",
                        "\\q",
                        "\\",
                        "\\\n",
                        "\\x4",
                    ]
                ),
            ),
            max_size=5,
        )
    )
    return '"' + "".join(pieces) + '"'


def _single_quoted(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


scalar_text = st.one_of(
    st.sampled_from(TRICKY_PLAIN),
    st.integers().map(str),
    st.integers(min_value=2**63 - 2, max_value=2**200).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True),
    _double_quoted(),
    unicode_text.map(_single_quoted),
    odd_text,
)


# --------------------------------------------------------------------------- a tree of YAML nodes


@dataclass(frozen=True)
class Scalar:
    text: str
    block: str | None = None  # '|', '>', '|-', '>+', '|2' ... for a block scalar


@dataclass(frozen=True)
class Alias:
    name: str


@dataclass(frozen=True)
class Collection:
    kind: str  # "map" or "seq"
    items: tuple[tuple[Any, Any], ...] | tuple[Any, ...]
    flow: bool


@dataclass(frozen=True)
class Decorated:
    node: Any
    anchor: str | None
    tag: str | None


scalars = st.one_of(
    scalar_text.map(Scalar),
    st.tuples(st.sampled_from(["|", ">", "|-", ">+", "|2", ">1-", "|+"]), unicode_text).map(
        lambda pair: Scalar(pair[1], block=pair[0])
    ),
)
leaf = st.one_of(scalars, st.sampled_from((*ANCHORS, "nowhere")).map(Alias))
keys = st.one_of(st.sampled_from(KEYS), scalar_text)


def _extend(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    mapping = st.builds(
        lambda items, flow: Collection("map", tuple(items), flow),
        st.lists(st.tuples(keys, children), max_size=6),
        st.booleans(),
    )
    sequence = st.builds(
        lambda items, flow: Collection("seq", tuple(items), flow),
        st.lists(children, max_size=6),
        st.booleans(),
    )
    merge = st.builds(
        lambda name, items: Collection("map", (("<<", Alias(name)), *items), False),
        st.sampled_from(ANCHORS),
        st.lists(st.tuples(keys, children), max_size=3),
    )
    collection = st.one_of(mapping, sequence, merge)
    return st.one_of(
        collection,
        st.builds(
            Decorated,
            collection,
            st.none() | st.sampled_from(ANCHORS),
            st.none() | st.sampled_from(TAGS),
        ),
    )


nodes = st.recursive(
    st.one_of(
        leaf,
        st.builds(
            Decorated, scalars, st.none() | st.sampled_from(ANCHORS), st.none() | st.sampled_from(TAGS)
        ),
    ),
    _extend,
    max_leaves=40,
)


def _flow(node: Any) -> str:
    if isinstance(node, Scalar):
        return node.text if node.block is None else _single_quoted(node.text)
    if isinstance(node, Alias):
        return f"*{node.name}"
    if isinstance(node, Decorated):
        prefix = "".join(
            part + " " for part in (f"&{node.anchor}" if node.anchor else "", node.tag or "") if part
        )
        return prefix + _flow(node.node)
    if node.kind == "map":
        return "{" + ", ".join(f"{_key(key)}: {_flow(value)}" for key, value in node.items) + "}"
    return "[" + ", ".join(_flow(item) for item in node.items) + "]"


def _key(key: Any) -> str:
    return key if isinstance(key, str) else _flow(key)


def _block(node: Any, indent: int) -> str:
    """The node's text after 'key:' or '- ': inline for scalars and flow, on the next lines for blocks."""
    pad = " " * indent
    if isinstance(node, Scalar) and node.block is not None:
        body = "".join(f"{pad}  {line}\n" for line in node.text.splitlines()) or "\n"
        return f" {node.block}\n{body}"
    if isinstance(node, Scalar | Alias) or (isinstance(node, Collection) and (node.flow or not node.items)):
        return " " + _flow(node) + "\n"
    if isinstance(node, Decorated):
        prefix = " ".join(part for part in (f"&{node.anchor}" if node.anchor else "", node.tag or "") if part)
        rest = _block(node.node, indent)
        return (" " + prefix + rest) if prefix else rest
    lines = []
    for item in node.items:
        if node.kind == "map":
            key, value = item
            lines.append(f"{pad}{_key(key)}:{_block(value, indent + 2)}")
        else:
            lines.append(f"{pad}-{_block(item, indent + 2)}")
    return "\n" + "".join(lines)


def render(node: Any) -> str:
    """One document's text: a block collection at the top, or a scalar."""
    text = _block(node, 0)
    return text[1:] if text.startswith(("\n", " ")) else text


comments = st.sampled_from(["", "# a comment\n", "#\n", "  # indented comment\n", "# ünïcødé ☃\n"])
directives = st.sampled_from(
    ["", "%YAML 1.2\n", "%YAML 1.1\n", "%TAG !e! tag:example.com,2000:\n", "%FOO bar\n"]
)
separators = st.sampled_from(["---\n", "--- ", "...\n---\n", "---\n...\n", "\n"])


@st.composite
def yaml_documents(draw: st.DrawFn) -> str:
    """A file of one to four documents from the node tree, with comments, directives and markers."""
    parts = []
    for index in range(draw(st.integers(min_value=1, max_value=4))):
        if index or draw(st.booleans()):
            parts.append(draw(directives) + draw(separators))
        parts.append(draw(comments) + render(draw(nodes)))
    return "".join(parts)


# --------------------------------------------------------------------------- hostile classics


@st.composite
def alias_bombs(draw: st.DrawFn) -> str:
    """Billion laughs: each level a list of ``width`` aliases of the one before."""
    depth = draw(st.integers(min_value=3, max_value=30))
    width = draw(st.integers(min_value=2, max_value=12))
    flow = draw(st.booleans())
    lines = ["a0: &a0 [lol]" if flow else "a0: &a0\n  - lol"]
    for level in range(1, depth):
        aliases = [f"*a{level - 1}"] * width
        if flow:
            lines.append(f"a{level}: &a{level} [{', '.join(aliases)}]")
        else:
            lines.append(
                f"a{level}: &a{level}\n" + "".join(f"  - {alias}\n" for alias in aliases).rstrip("\n")
            )
    if draw(st.booleans()):
        # Inside an intent's vars, where a careless loader would expand it.
        body = "\n".join("    " + line for line in "\n".join(lines).splitlines())
        return (
            "apiVersion: chiffon.dev/v1alpha1\nkind: DeploymentIntent\nmetadata:\n  name: bomb\n"
            "spec:\n  steps:\n    - name: s\n      playbook: p.yml\n  vars:\n" + body + "\n"
        )
    return "\n".join(lines) + "\n"


@st.composite
def deep_nesting(draw: st.DrawFn) -> str:
    depth = draw(st.integers(min_value=DEFAULT_LIMITS.max_depth + 1, max_value=5_000))
    style = draw(st.sampled_from(["flow-seq", "flow-map", "block-seq", "block-map", "mixed"]))
    if style == "flow-seq":
        return "[" * depth + "]" * depth
    if style == "flow-map":
        return "{a: " * depth + "x" + "}" * depth
    depth = min(depth, 1_500)  # block nesting costs indentation: 1 500 levels is about the 1 MiB cap
    if style == "block-seq":
        return "".join(" " * level + "-\n" for level in range(depth))
    if style == "block-map":
        return "".join(" " * level + "k:\n" for level in range(depth))
    return "a: " + "[{b: " * depth + "1" + "}]" * depth + "\n"


# --------------------------------------------------------------------------- mutating the examples


def _example_data() -> list[tuple[str, Any]]:
    data = []
    for name, text in EXAMPLE_FILES.items():
        for document in load_yaml_documents(text, name):
            if document.data is not None:
                data.append((name, document.data))
    return data


EXAMPLE_DATA = _example_data()

plain_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.integers(min_value=2**63 - 1, max_value=2**300),
        st.floats(allow_nan=False, allow_infinity=False),
        unicode_text,
        odd_text,
        st.sampled_from(TRICKY_PLAIN),
    ),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(unicode_text, children, max_size=4),
    max_leaves=12,
)


def _mutate_data(data: Any, path: tuple[Any, ...], action: str, value: Any) -> Any:
    """A copy of ``data`` with the node at ``path`` dropped, replaced, wrapped or given a sibling."""
    if not path:
        return value if action != "wrap" else [data]
    head, rest = path[0], path[1:]
    if isinstance(data, dict):
        copy: Any = dict(data)
        if rest:
            copy[head] = _mutate_data(data[head], rest, action, value)
        elif action == "drop":
            copy.pop(head)
        elif action == "wrap":
            copy[head] = [data[head]] if not isinstance(data[head], list) else {"x": data[head]}
        elif action == "sibling":
            copy[f"{head}x" if isinstance(head, str) else str(head)] = value
        else:
            copy[head] = value
        return copy
    copy = list(data)
    if rest:
        copy[head] = _mutate_data(data[head], rest, action, value)
    elif action == "drop":
        copy.pop(head)
    elif action == "sibling":
        copy.insert(head, value)
    elif action == "wrap":
        copy[head] = {"item": data[head]}
    else:
        copy[head] = value
    return copy


@st.composite
def mutated_example_data(draw: st.DrawFn) -> tuple[str, str]:
    """An example intent, its data changed at one to three places, dumped back to YAML."""
    name, data = draw(st.sampled_from(EXAMPLE_DATA))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        path = draw(st.sampled_from(node_paths(data)))
        action = draw(st.sampled_from(["drop", "replace", "sibling", "wrap"]))
        data = _mutate_data(data, path, action, draw(plain_values))
    return name, dump_yaml(data)


# fmt: off
SPLICES = (
    "  <<: *nowhere\n",
    "  x: &a [1, 2]\n  y: *a\n",
    "  z: !!python/object/apply:os.system ['touch /tmp/pwned']\n",
    "  z: !!python/name:builtins.eval\n",
    "!vault |\n  $ANSIBLE_VAULT;1.1;AES256\n  6162\n",
    "  t: !!binary aGVsbG8=\n",
    "%YAML 1.1\n---\n",
    "...\n",
    "---\n",
    "\t\n",
    "? [complex, key]\n: value\n",
    "  &a a: &a b\n",
    "\ufeff",
    "\x00",
    "\x85",
    "\u2028",
    "\r",
    "a: 'unterminated\n",
    'a: "unterminated\n',
    "{\n",
    "]\n",
    "  - &x [*x]\n",
)
# fmt: on


@st.composite
def mutated_example_text(draw: st.DrawFn) -> tuple[str, str | bytes]:
    """An example file edited as text: lines dropped, doubled, moved, re-indented, spliced or cut."""
    name = draw(st.sampled_from(sorted(EXAMPLE_FILES)))
    lines = EXAMPLE_FILES[name].splitlines(keepends=True)
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        if not lines:
            break
        at = draw(st.integers(min_value=0, max_value=len(lines) - 1))
        action = draw(
            st.sampled_from(["drop", "duplicate", "move", "indent", "dedent", "splice", "replace", "cut"])
        )
        if action == "drop":
            del lines[at]
        elif action == "duplicate":  # a duplicated line is usually a duplicate key
            lines.insert(at, lines[at])
        elif action == "move":
            lines.insert(draw(st.integers(min_value=0, max_value=len(lines))), lines.pop(at))
        elif action == "indent":
            lines[at] = " " * draw(st.integers(min_value=1, max_value=5)) + lines[at]
        elif action == "dedent":
            lines[at] = lines[at].lstrip(" ")
        elif action == "splice":
            lines.insert(at, draw(st.sampled_from(SPLICES) | deep_nesting() | alias_bombs()))
        elif action == "replace":
            key, _, _ = lines[at].partition(":")
            lines[at] = f"{key}: {draw(scalar_text)}\n"
        else:
            column = draw(st.integers(min_value=0, max_value=len(lines[at])))
            lines[at] = lines[at][:column]
            del lines[at + 1 :]
    text = "".join(lines)
    if draw(st.booleans()):
        return name, text
    raw = bytearray(text.encode("utf-8"))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        if not raw:
            break
        at = draw(st.integers(min_value=0, max_value=len(raw) - 1))
        raw[at] = draw(st.integers(min_value=0, max_value=255))
    return name, bytes(raw)


# --------------------------------------------------------------------------- valid intents

# A NUL cannot be stored (PostgreSQL), so a valid intent never holds one.
storable_text = st.characters(codec="utf-8", exclude_characters="\x00")
dns_label = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?", fullmatch=True)
label_key = st.from_regex(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,20}[A-Za-z0-9])?", fullmatch=True)
label_value = st.from_regex(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,20}[A-Za-z0-9])?)?", fullmatch=True)
repo_path = st.lists(
    st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,15}", fullmatch=True), min_size=1, max_size=4
).map("/".join)
role_name = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,15}", fullmatch=True)
tag_name = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,15}", fullmatch=True)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(storable_text, max_size=30),
)
plain_vars = st.dictionaries(
    st.text(storable_text, max_size=15),
    st.recursive(
        json_scalars,
        lambda children: (
            st.lists(children, max_size=3)
            | st.dictionaries(st.text(storable_text, max_size=8), children, max_size=3)
        ),
        max_leaves=8,
    ),
    max_size=4,
)


@st.composite
def valid_intent_data(draw: st.DrawFn) -> dict[str, Any]:
    """The wire form of a DeploymentIntent that the schema accepts, optional fields drawn at random."""
    name = draw(dns_label)
    step_names = draw(st.lists(dns_label, min_size=1, max_size=4, unique=True))
    steps = []
    for step_name in step_names:
        step: dict[str, Any] = {"name": step_name}
        target = draw(st.sampled_from(["playbook", "role", "goal"]))
        step[target] = draw(
            repo_path
            if target == "playbook"
            else role_name
            if target == "role"
            else st.text(storable_text, min_size=1)
        )
        if draw(st.booleans()):
            step["vars"] = draw(plain_vars)
        if draw(st.booleans()):
            step["tags"] = draw(st.lists(tag_name, max_size=3))
        steps.append(step)
    spec: dict[str, Any] = {"steps": steps}
    optional = {
        "service": dns_label,
        "inventory": repo_path,
        "limit": st.from_regex(r"[A-Za-z0-9_.:*!&,\-]{1,20}", fullmatch=True),
        "vars": plain_vars,
        "resources": st.fixed_dictionaries(
            {},
            optional={
                "gpuMemoryMiB": st.integers(0, 10_000_000),
                "cpuCores": st.floats(0, 4096) | st.integers(0, 4096),
                "memoryMiB": st.integers(0, 100_000_000),
            },
        ),
        "placement": st.fixed_dictionaries(
            {"agentSelector": st.dictionaries(tag_name, label_value, max_size=3)}
        ),
        "approval": st.sampled_from(["Manual", "Auto"]),
        "driftDetection": st.fixed_dictionaries(
            {
                "interval": st.sampled_from(["1m", "90m", "1h", "24h", "1h30m"]),
                "mode": st.sampled_from(["Report", "Heal", "Off"]),
            }
        ),
        "dependsOn": st.lists(dns_label.filter(lambda other: other != name), max_size=3, unique=True),
        "priority": st.sampled_from(["Normal", "High"]),
        "suspend": st.booleans(),
    }
    for key, strategy in optional.items():
        if draw(st.booleans()):
            spec[key] = draw(strategy)
    metadata: dict[str, Any] = {"name": name}
    if draw(st.booleans()):
        metadata["labels"] = draw(st.dictionaries(label_key, label_value, max_size=3))
    if draw(st.booleans()):
        metadata["annotations"] = {"chiffon.dev/request": draw(st.text(storable_text, max_size=200))}
    return {
        "apiVersion": "chiffon.dev/v1alpha1",
        "kind": "DeploymentIntent",
        "metadata": metadata,
        "spec": spec,
    }


_NOT_RAW_IN_YAML = re.compile("[\x7f-\x9f\u2028\u2029\ufffe\uffff]")


@st.composite
def valid_intent_files(draw: st.DrawFn) -> tuple[list[dict[str, Any]], str]:
    """One to three valid intents (distinct names) in one file, written as block YAML or as JSON."""
    intents = draw(
        st.lists(valid_intent_data(), min_size=1, max_size=3, unique_by=lambda i: i["metadata"]["name"])
    )
    style = draw(st.sampled_from(["yaml", "json", "json-flow"]))
    if style == "yaml":
        text = "---\n".join(dump_yaml(intent) for intent in intents)
    else:
        # JSON is YAML 1.2. Escapes of characters outside the BMP are surrogate pairs, which YAML
        # does not allow, so those are written as themselves.
        indent = 2 if style == "json" else None
        text = "\n---\n".join(json.dumps(intent, ensure_ascii=False, indent=indent) for intent in intents)
        # ... and what YAML may not hold raw (DEL, C1 controls, U+FFFE/F) or would fold (its own line
        # breaks U+0085, U+2028, U+2029) is escaped; JSON allows all of them raw inside a string.
        text = _NOT_RAW_IN_YAML.sub(lambda match: f"\\u{ord(match.group()):04x}", text)
    return intents, text
