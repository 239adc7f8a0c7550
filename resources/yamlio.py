"""Safe YAML for Chiffon: hostile-input-proof loading, line-aware errors, comment-keeping edits.

Everything that reads YAML written by a person, a chat model or a git
repository goes through :func:`load_yaml_documents`, which is built for input
nobody has vetted (DESIGN §9):

1. **Size first.** The byte count is checked before any parser runs; then the
   bytes must be UTF-8.
2. **Pre-scan the event stream.** ruamel's parser emits events without building
   anything and without recursion, so it is safe even on a file nested 10 000
   levels deep. One walk over the events enforces the depth, node, alias and document
   limits, refuses every tag outside the YAML core schema (``!!python/object``,
   ``!vault``, ...) and records where each document starts and ends in the text.
   ruamel runs libyaml here when ruamel.yaml.clib is installed (the usual
   case: about twenty times faster) and its pure-Python parser otherwise; the
   tests run both, and the rare constructs on which they disagree ('%YAML 1.1',
   a reused anchor name) are refused.
3. **Compose, then convert ourselves.** Only a file that passed the pre-scan is
   composed into node trees, and ruamel's constructors never run. Our converter
   resolves scalars by their YAML 1.2 core tag, keeps timestamps as text, applies
   merge keys and refuses duplicate keys. Before converting, the size a document
   expands to is measured on the node graph (each shared node once), so an alias
   bomb is refused in milliseconds, before any of it is built; the converter
   still counts every node it produces against ``max_nodes``.

Every problem becomes one :class:`ResourceError` naming the file, the line and
the field, on one line, ready for the CLI, an API answer or a source status.

Edits keep what people wrote. :func:`replace_document` slices the file at
document boundaries, so the documents it does not touch are copied byte for
byte; :func:`strip_server_fields` edits one document in ruamel's round-trip
mode, so its comments and key order survive.

Nothing here touches the filesystem or the network: callers pass text.
"""

from __future__ import annotations

import bisect
import io
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar, NoReturn

from pydantic import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import CommentMark, MarkedYAMLError, YAMLError
from ruamel.yaml.events import (
    AliasEvent,
    CollectionEndEvent,
    CollectionStartEvent,
    DocumentEndEvent,
    DocumentStartEvent,
    Event,
    ScalarEvent,
)
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from ruamel.yaml.reader import ReaderError
from ruamel.yaml.representer import RoundTripRepresenter
from ruamel.yaml.scalarstring import DoubleQuotedScalarString
from ruamel.yaml.tokens import CommentToken

from chiffon.resources.base import API_VERSION
from chiffon.resources.intent import KIND, DeploymentIntent
from chiffon.resources.meta import SERVER_SET_METADATA
from chiffon.resources.source import FileError

__all__ = [
    "DEFAULT_LIMITS",
    "ParseResult",
    "ParsedIntent",
    "ResourceError",
    "YamlDocument",
    "YamlLimits",
    "dump_yaml",
    "load_yaml_documents",
    "parse_intents",
    "replace_document",
    "strip_server_fields",
]

KeyPath = tuple[str | int, ...]

# ruamel uses libyaml (the ruamel.yaml.clib wheel) for the event parser and the
# composer when it is installed, and its pure-Python parser otherwise. Both must
# give the same answers; the unit tests flip this switch to check that.
_PURE_PYTHON = False


# --------------------------------------------------------------------------- limits and errors


@dataclass(frozen=True)
class YamlLimits:
    """Caps that make hostile YAML cheap to refuse; real intent files stay far below them."""

    max_bytes: int = 1_048_576
    max_depth: int = 64
    max_nodes: int = 100_000
    max_aliases: int = 1_000
    max_documents: int = 1_000


DEFAULT_LIMITS = YamlLimits()

_MAX_MESSAGE_CHARS = 500
_LINE_BREAKS = re.compile(r"\s*[\r\n\x0b\x0c\x85\u2028\u2029]+\s*")


def _one_line(text: str, limit: int) -> str:
    """Messages end up in logs, tables and HTTP answers: one line, bounded length."""
    flat = _LINE_BREAKS.sub(" ", text).strip()
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


class ResourceError(ValueError):
    """One problem in one file: where it is and what is wrong.

    ``str(error)`` reads ``examples/x.yaml:12: spec.steps[0].playbook: Extra
    inputs are not permitted`` and is always a single line.
    """

    def __init__(self, source: str, message: str, line: int | None = None, field: str | None = None) -> None:
        # Keep every constructor argument in args so the error pickles and copies.
        super().__init__(source, message, line, field)
        self.source = _one_line(source, 1_000)
        self.message = _one_line(message, _MAX_MESSAGE_CHARS)
        self.line = line
        self.field = _one_line(field, _MAX_MESSAGE_CHARS) if field else None

    def __str__(self) -> str:
        where = self.source + (f":{self.line}" if self.line is not None else "")
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"

    def to_file_error(self) -> FileError:
        return FileError(path=self.source, line=self.line, field=self.field, message=self.message)


# --------------------------------------------------------------------------- public data


@dataclass(frozen=True)
class YamlDocument:
    """One document of a YAML file, as plain data plus what is needed to point at its lines."""

    index: int
    line: int
    data: Any
    text: str
    lines: Mapping[KeyPath, int]


@dataclass(frozen=True)
class ParsedIntent:
    intent: DeploymentIntent
    document: YamlDocument
    source: str


@dataclass
class ParseResult:
    intents: list[ParsedIntent]
    errors: list[ResourceError]


# --------------------------------------------------------------------------- step 1: bytes to text


def _decode(content: str | bytes, source: str, limits: YamlLimits) -> str:
    """The file's text once the size cap and the UTF-8 check pass; a leading BOM is dropped."""
    if isinstance(content, str):
        if len(content) > limits.max_bytes:  # every character takes at least one byte
            line = content.count("\n", 0, limits.max_bytes) + 1
            raise _too_big(source, f"more than {limits.max_bytes}", line, limits)
        raw = _encode(content, source)
    else:
        raw = content
    if len(raw) > limits.max_bytes:
        raise _too_big(source, str(len(raw)), raw.count(b"\n", 0, limits.max_bytes) + 1, limits)
    text = content if isinstance(content, str) else _decode_utf8(raw, source)
    return text.removeprefix("\ufeff")


def _too_big(source: str, size: str, line: int, limits: YamlLimits) -> ResourceError:
    message = f"file is {size} bytes, over the limit of {limits.max_bytes} bytes (reached at line {line})"
    return ResourceError(source, message, line=line)


def _encode(text: str, source: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        line = text.count("\n", 0, exc.start) + 1
        raise ResourceError(source, "holds a lone surrogate, which is not valid Unicode", line=line) from None


def _decode_utf8(raw: bytes, source: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        message = f"is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); save it as UTF-8"
        raise ResourceError(source, message, line=line) from None


# --------------------------------------------------------------------------- step 2: the pre-scan

_CORE = "tag:yaml.org,2002:"
_STR, _INT, _FLOAT, _BOOL, _NULL, _MAP, _SEQ, _MERGE = (
    _CORE + name for name in ("str", "int", "float", "bool", "null", "map", "seq", "merge")
)
_ALLOWED_TAGS = frozenset({_STR, _INT, _FLOAT, _BOOL, _NULL, _MAP, _SEQ, _MERGE})


@dataclass
class _DocumentMarks:
    """Character offsets of one document, recorded by the pre-scan."""

    explicit_start: bool
    line: int  # 1-based line of the '---' or of the first token
    body_start: int  # just after '---', or the first token of a document without one
    content_end: int | None = None  # end of the last scalar, alias or flow collection
    explicit_end: bool = False
    end_start: int = 0  # where the '...' starts, when there is one


def _display_tag(tag: str) -> str:
    return "!!" + tag[len(_CORE) :] if tag.startswith(_CORE) else tag


class _PreScan:
    """One pass over the parser's events: limits, tags and anchors checked, documents located.

    ruamel's parser keeps its own state stack instead of recursing, so this is
    safe at any nesting depth, and it stops at the first event over a limit.
    """

    def __init__(self, source: str, limits: YamlLimits) -> None:
        self.source = source
        self.limits = limits
        self.documents: list[_DocumentMarks] = []
        self.aliases = 0
        self.nodes = 0
        self._open: list[bool] = []  # flow style of every open collection; its length is the depth
        self._anchors: dict[str, int] = {}

    def run(self, events: Iterable[Event]) -> None:
        for event in events:
            match event:
                case DocumentStartEvent():
                    self._start_document(event)
                case DocumentEndEvent():
                    self._end_document(event)
                case AliasEvent():
                    self._alias(event)
                case ScalarEvent() | CollectionStartEvent():
                    self._node(event)
                case CollectionEndEvent():
                    self._close(event)

    def _error(self, event: Event, message: str) -> ResourceError:
        return ResourceError(self.source, message, line=_mark_line(event.start_mark))

    def _start_document(self, event: DocumentStartEvent) -> None:
        if len(self.documents) >= self.limits.max_documents:
            raise self._error(event, f"holds more than {self.limits.max_documents} YAML documents")
        version = event.version
        if version is not None and tuple(version) != (1, 2):
            # The pure-Python parser honours '%YAML 1.1' (yes/no become booleans) and
            # libyaml does not; refusing it keeps one meaning for every file.
            shown = ".".join(str(part) for part in version)
            raise self._error(event, f"%YAML {shown} is not supported: Chiffon reads YAML 1.2")
        self._anchors = {}
        self.documents.append(
            _DocumentMarks(
                explicit_start=bool(event.explicit),
                line=_mark_line(event.start_mark),
                body_start=int(event.end_mark.index),
            )
        )

    def _end_document(self, event: DocumentEndEvent) -> None:
        document = self.documents[-1]
        document.explicit_end = bool(event.explicit)
        document.end_start = int(event.start_mark.index)

    def _alias(self, event: AliasEvent) -> None:
        self.aliases += 1
        if self.aliases > self.limits.max_aliases:
            raise self._error(event, f"uses more than {self.limits.max_aliases} aliases")
        if event.anchor not in self._anchors:
            raise self._error(event, f"alias *{event.anchor} refers to no anchor defined before it")
        self.documents[-1].content_end = int(event.end_mark.index)

    def _node(self, event: ScalarEvent | CollectionStartEvent) -> None:
        # Counted here too, so a file of a million small values is refused after the first
        # max_nodes of them, not after composing all of them (seconds for a 1 MiB file).
        self.nodes += 1
        if self.nodes > self.limits.max_nodes:
            raise self._error(event, f"holds more than {self.limits.max_nodes} nodes")
        tag = event.ctag
        if tag is not None and str(tag) not in _ALLOWED_TAGS:
            raise self._error(
                event,
                f"tag {_display_tag(str(tag))} is not allowed: Chiffon reads plain data only "
                "(YAML core tags !!str !!int !!float !!bool !!null !!map !!seq)",
            )
        self._remember_anchor(event)
        if isinstance(event, CollectionStartEvent):
            self._open.append(bool(event.flow_style))
            if len(self._open) > self.limits.max_depth:
                raise self._error(event, f"nested deeper than {self.limits.max_depth} levels")
        else:
            if _SURROGATE.search(event.value):
                # Only the pure-Python parser lets "\\ud800" through; libyaml refuses it so.
                raise self._error(event, f"invalid YAML: {_BAD_ESCAPE}")
            if event.value or event.start_mark.index != event.end_mark.index:
                # An empty plain scalar (an empty document, 'key:' with no value) sits at
                # the next token, so it says nothing about where the content ends.
                self.documents[-1].content_end = int(event.end_mark.index)

    def _remember_anchor(self, event: ScalarEvent | CollectionStartEvent) -> None:
        anchor = event.anchor
        if anchor is None:
            return
        if anchor in self._anchors:
            # YAML allows redefining an anchor but libyaml refuses it; a clear error
            # beats two parsers disagreeing about the same file.
            first = self._anchors[anchor]
            raise self._error(event, f"anchor &{anchor} is defined twice (first at line {first})")
        self._anchors[anchor] = _mark_line(event.start_mark)

    def _close(self, event: CollectionEndEvent) -> None:
        if self._open.pop():
            self.documents[-1].content_end = int(event.end_mark.index)


def _mark_line(mark: Any) -> int:
    return int(mark.line) + 1


class _YAML(YAML):
    """ruamel's YAML, minus a filesystem glob for plug-ins on every instance (a fifth of a parse)."""

    _plug_ins: ClassVar[list[str] | None] = None

    def official_plug_ins(self) -> Any:
        if _YAML._plug_ins is None:
            _YAML._plug_ins = list(super().official_plug_ins())
        return _YAML._plug_ins


def _new_yaml() -> YAML:
    return _YAML(typ="safe", pure=_PURE_PYTHON)


_BAD_ESCAPE = "found invalid Unicode character escape code (while parsing a quoted scalar)"
_SURROGATE = re.compile("[\ud800-\udfff]")
_LONG_ESCAPE = re.compile(r"\\U([0-9A-Fa-f]{8})")


def _prescan(text: str, source: str, limits: YamlLimits) -> _PreScan:
    scan = _PreScan(source, limits)
    with _yaml_errors(text, source):
        try:
            scan.run(_new_yaml().parse(text))
        except (ValueError, OverflowError) as exc:
            if isinstance(exc, ResourceError):
                raise
            # ruamel's pure-Python scanner hands an escape past U+10FFFF ("\\U00110000") to
            # chr() and lets its error out; libyaml reports it as a YAML error. Found by tests/fuzz.
            raise ResourceError(source, f"invalid YAML: {_BAD_ESCAPE}", line=_escape_line(text)) from None
    return scan


def _escape_line(text: str) -> int | None:
    """The line of the first ``\\UXXXXXXXX`` escape that names no Unicode character."""
    for match in _LONG_ESCAPE.finditer(text):
        if int(match.group(1), 16) > 0x10FFFF:
            return len(_LINE_BREAK.findall(text, 0, match.start())) + 1
    return None


def _compose(text: str, source: str) -> list[Node]:
    with _yaml_errors(text, source):
        return list(_new_yaml().compose_all(text))


@contextmanager
def _yaml_errors(text: str, source: str) -> Iterator[None]:
    """Turns whatever ruamel raises on bad input into a ResourceError with a line."""
    try:
        yield
    except ResourceError:
        raise
    except YAMLError as exc:
        raise _from_yaml_error(exc, text, source) from None
    except RecursionError:
        raise ResourceError(source, "is nested too deeply to read") from None


def _from_yaml_error(exc: YAMLError, text: str, source: str) -> ResourceError:
    if isinstance(exc, MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        last = len(_LINE_BREAK.findall(text)) + 1
        # At the end of a text without a final line break ruamel points at the line after
        # the last one; the last line is where the problem is.
        line = min(_mark_line(mark), last) if mark is not None else None
        context = ""
        if exc.problem and exc.context:
            # "while parsing a flow sequence at line 3" says where the unclosed '[' is.
            start = min(_mark_line(exc.context_mark), last) if exc.context_mark is not None else line
            context = f" ({exc.context})" if start == line else f" ({exc.context} at line {start})"
        return ResourceError(source, f"invalid YAML: {problem}{context}", line=line)
    if isinstance(exc, ReaderError) and isinstance(exc.position, int):
        line = text.count("\n", 0, exc.position) + 1
        character = exc.character if isinstance(exc.character, int) else 0
        return ResourceError(source, f"invalid YAML: character #x{character:04x}: {exc.reason}", line=line)
    return ResourceError(source, f"invalid YAML: {exc}")


# --------------------------------------------------------------------------- where documents lie


@dataclass(frozen=True)
class _Span:
    """Where one document lies in its file.

    The spans of a file's documents partition it (``start:end``), so documents
    can be replaced or removed by slicing. ``text`` is what the author wrote for
    the document, comments included and the '---', directive and '...' lines
    left out; ``suffix`` is the '...' line and what follows it in the span.
    """

    start: int
    end: int
    explicit_start: bool
    text: str
    suffix: str


def _spans(text: str, documents: Sequence[_DocumentMarks]) -> list[_Span]:
    if not documents:
        return []
    lines = _LineIndex(text)
    starts = [0] + [_boundary(lines, documents[i - 1], documents[i]) for i in range(1, len(documents))]
    ends = [*starts[1:], len(text)]
    return [
        _span(lines, marks, start, end) for marks, start, end in zip(documents, starts, ends, strict=True)
    ]


# ruamel ends a line at any of these, not only at '\n'.
_LINE_BREAK = re.compile("\r\n|[\r\n\x85\u2028\u2029]")


class _LineIndex:
    """Where each line of a text starts, found once so that every lookup is a bisection."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.starts = [0] + [match.end() for match in _LINE_BREAK.finditer(text)]

    def start(self, position: int) -> int:
        """Start of the line that holds ``position``."""
        return self.starts[bisect.bisect_right(self.starts, position) - 1]

    def next_start(self, position: int) -> int:
        """Start of the line after the one that holds ``position`` (the end of the text on the last)."""
        index = bisect.bisect_right(self.starts, position)
        return self.starts[index] if index < len(self.starts) else len(self.text)


def _first_token(marks: _DocumentMarks) -> int:
    return marks.body_start - 3 if marks.explicit_start else marks.body_start


def _boundary(lines: _LineIndex, previous: _DocumentMarks, current: _DocumentMarks) -> int:
    """Where ``current``'s span starts: at its '---' line, or above it to take the comments just there.

    A run of comment (or directive) lines directly above a '---', with no blank
    line in between, describes the document below it, not the one above.
    """
    ceiling = lines.start(_first_token(current))
    if previous.explicit_end:
        floor = lines.next_start(previous.end_start)
    elif previous.content_end is not None:
        floor = lines.next_start(max(previous.content_end - 1, 0))
    else:
        return ceiling  # an empty document keeps its comments
    while ceiling > floor:
        above = lines.start(ceiling - 1)
        if not lines.text[above:ceiling].lstrip().startswith(("#", "%")):
            break
        ceiling = above
    return ceiling


def _span(lines: _LineIndex, marks: _DocumentMarks, start: int, end: int) -> _Span:
    text = lines.text
    if marks.explicit_start:
        header = _without_directives(text[start : lines.start(_first_token(marks))])
        body_start = _after_marker(lines, marks.body_start)
    else:
        header, body_start = "", start
    body_end = max(marks.end_start, body_start) if marks.explicit_end else end
    return _Span(
        start=start,
        end=end,
        explicit_start=marks.explicit_start,
        text=header + text[body_start:body_end],
        suffix=text[body_end:end],
    )


def _without_directives(header: str) -> str:
    return "".join(line for line in header.splitlines(keepends=True) if not line.startswith("%"))


def _after_marker(lines: _LineIndex, position: int) -> int:
    """Where a document's own text starts after its '---': the next line, or a comment on that line."""
    line_end = lines.next_start(position)
    rest = lines.text[position:line_end]
    if not rest.strip():
        return line_end
    if rest.lstrip().startswith("#"):
        return position + len(rest) - len(rest.lstrip())
    return position  # content on the '---' line, such as '--- |'


# --------------------------------------------------------------------------- step 3: nodes to plain data


class _NodeBudget:
    """Counts the nodes produced for a whole file, aliases expanded, and stops at the limit."""

    def __init__(self, source: str, limit: int, has_aliases: bool) -> None:
        self.source = source
        self.limit = limit
        self.left = limit
        self.has_aliases = has_aliases

    def spend(self, node: Node) -> None:
        self.left -= 1
        if self.left < 0:
            self.exhausted(node)

    def exhausted(self, node: Node) -> NoReturn:
        if self.has_aliases:
            message = f"expands to more than {self.limit} nodes through aliases"
        else:
            message = f"holds more than {self.limit} nodes"
        raise ResourceError(self.source, message, line=_node_line(node))


def _node_line(node: Node) -> int:
    return _mark_line(node.start_mark)


def _is_merge_key(node: Node) -> bool:
    return isinstance(node, ScalarNode) and str(node.tag) == _MERGE


class _Converter:
    """Turns one composed document into plain Python, recording the line of every key and item.

    Recursion is bounded by ``max_depth`` (the pre-scan proved the text itself
    is shallower; aliases can still nest deeper, which is checked here), and an
    alias that refers to a collection containing it is reported, not followed.
    """

    def __init__(self, source: str, limits: YamlLimits, budget: _NodeBudget) -> None:
        self.source = source
        self.limits = limits
        self.budget = budget
        self.lines: dict[KeyPath, int] = {}
        self._active: set[int] = set()  # ids of the collections being converted

    def _error(self, node: Node, message: str) -> ResourceError:
        return ResourceError(self.source, message, line=_node_line(node))

    def convert(self, root: Node) -> Any:
        return self._value(root, (), 0)

    def _value(self, node: Node, path: KeyPath, depth: int) -> Any:
        self.budget.spend(node)
        if isinstance(node, ScalarNode):
            return self._scalar(node)
        with self._entering(node, depth):
            if isinstance(node, SequenceNode):
                return self._sequence(node, path, depth)
            if isinstance(node, MappingNode):
                return self._mapping(node, path, depth)
        raise self._error(node, f"cannot read a {type(node).__name__}")

    @contextmanager
    def _entering(self, node: Node, depth: int) -> Iterator[None]:
        if depth >= self.limits.max_depth:
            message = f"nested deeper than {self.limits.max_depth} levels once aliases are expanded"
            raise self._error(node, message)
        if id(node) in self._active:
            raise self._error(node, "an alias refers to a collection that contains it")
        self._active.add(id(node))
        try:
            yield
        finally:
            self._active.discard(id(node))

    def _scalar(self, node: ScalarNode) -> Any:
        tag, text = str(node.tag), str(node.value)  # node.tag is the resolved tag as text
        if tag == _NULL:
            return None
        if tag == _BOOL:
            return self._parse(node, _to_bool, "a boolean (true or false)")
        if tag == _INT:
            return self._parse(node, _to_int, "an integer")
        if tag == _FLOAT:
            return self._parse(node, _to_float, "a number")
        if tag in (_MAP, _SEQ):
            raise self._error(node, f"a plain value cannot be tagged {_display_tag(tag)}")
        return text  # strings, and timestamps, which stay the text that was written

    def _parse(self, node: ScalarNode, parse: Callable[[str], Any], what: str) -> Any:
        try:
            return parse(str(node.value))
        except ValueError:
            message = f"cannot read {str(node.value)!r} as {what}; quote it if it is text"
            raise self._error(node, message) from None

    def _sequence(self, node: SequenceNode, path: KeyPath, depth: int) -> list[Any]:
        if str(node.tag) != _SEQ:
            raise self._error(node, f"a list cannot be tagged {_display_tag(str(node.tag))}")
        items = []
        for index, item in enumerate(node.value):
            self.lines[(*path, index)] = _node_line(item)
            items.append(self._value(item, (*path, index), depth + 1))
        return items

    def _mapping(self, node: MappingNode, path: KeyPath, depth: int) -> dict[Any, Any]:
        result: dict[Any, Any] = {}
        for key, (key_node, value_node) in self._entries(node, depth).items():
            element = _path_element(key)
            self.lines[(*path, element)] = _node_line(key_node)
            result[key] = self._value(value_node, (*path, element), depth + 1)
        return result

    def _entries(self, node: MappingNode, depth: int) -> dict[Any, tuple[Node, Node]]:
        """A mapping's entries by key, merge keys ('<<') applied: its own keys win, then earlier merges."""
        if str(node.tag) != _MAP:
            raise self._error(node, f"a mapping cannot be tagged {_display_tag(str(node.tag))}")
        own: dict[Any, tuple[Node, Node]] = {}
        merged: dict[Any, tuple[Node, Node]] = {}
        merge_key: Node | None = None
        for key_node, value_node in node.value:
            if _is_merge_key(key_node):
                if merge_key is not None:
                    raise self._error(key_node, f"duplicate key '<<' (first at line {_node_line(merge_key)})")
                merge_key = key_node
                for source in self._merge_sources(value_node):
                    for key, entry in self._merged_entries(source, depth).items():
                        merged.setdefault(key, entry)
                continue
            key = self._key(key_node)
            if key in own:
                first = _node_line(own[key][0])
                raise self._error(key_node, f"duplicate key {key!r} (first at line {first})")
            own[key] = (key_node, value_node)
        return {**merged, **own}

    def _merged_entries(self, source: MappingNode, depth: int) -> dict[Any, tuple[Node, Node]]:
        with self._entering(source, depth + 1):
            entries = self._entries(source, depth + 1)
        for key_node, _value in entries.values():
            self.budget.spend(key_node)  # merging copies entries: count them like alias expansion
        return entries

    def _merge_sources(self, value: Node) -> list[MappingNode]:
        if isinstance(value, MappingNode):
            return [value]
        if isinstance(value, SequenceNode) and all(isinstance(item, MappingNode) for item in value.value):
            return list(value.value)
        raise self._error(value, "a merge key '<<' takes a mapping or a list of mappings")

    def _key(self, node: Node) -> Any:
        if not isinstance(node, ScalarNode):
            kind = "list" if isinstance(node, SequenceNode) else "mapping"
            raise self._error(node, f"a mapping key must be a plain value, not a {kind}")
        self.budget.spend(node)
        return self._scalar(node)


def _path_element(key: Any) -> str | int:
    if isinstance(key, str) or (isinstance(key, int) and not isinstance(key, bool)):
        return key
    return str(key)


def _to_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered not in ("true", "false"):
        raise ValueError(text)
    return lowered == "true"


def _to_int(text: str) -> int:
    digits = text.replace("_", "")
    sign = -1 if digits.startswith("-") else 1
    digits = digits[1:] if digits[:1] in ("+", "-") else digits
    base = {"0x": 16, "0o": 8, "0b": 2}.get(digits[:2].lower(), 10)
    return sign * int(digits[2:] if base != 10 else digits, base)


def _to_float(text: str) -> float:
    cleaned = text.replace("_", "").lower()
    special = {".inf": math.inf, "+.inf": math.inf, "-.inf": -math.inf, ".nan": math.nan}
    return special[cleaned] if cleaned in special else float(cleaned)


# --------------------------------------------------------------------------- loading


def load_yaml_documents(
    content: str | bytes, source: str, limits: YamlLimits = DEFAULT_LIMITS
) -> list[YamlDocument]:
    """Every document of a YAML file as plain data, or a ResourceError for the whole file.

    Documents that hold nothing (only comments, or an explicit null) come back
    with ``data`` None. A file of only comments has no documents at all.
    """
    text = _decode(content, source, limits)
    scan = _prescan(text, source, limits)
    spans = _spans(text, scan.documents)
    roots = _compose(text, source)
    budget = _NodeBudget(source, limits.max_nodes, scan.aliases > 0)
    documents = []
    for index, (root, marks, span) in enumerate(zip(roots, scan.documents, spans, strict=True)):
        converter = _Converter(source, limits, budget)
        with _yaml_errors(text, source):
            if _expanded_size(root, budget.left, limits.max_depth) > budget.left:
                budget.exhausted(root)  # refuse an alias bomb before building any of it
            data = converter.convert(root)
        line = marks.line if _is_empty(root) else _node_line(root)
        converter.lines[()] = line
        lines = MappingProxyType(converter.lines)
        documents.append(YamlDocument(index=index, line=line, data=data, text=span.text, lines=lines))
    return documents


def _expanded_size(root: Node, limit: int, max_depth: int) -> int:
    """How many nodes a document expands to, aliases included, visiting each node once.

    Sizes are memoised per node, so an alias bomb is measured in microseconds
    instead of being expanded. Counting stops a little past ``limit``; cycles
    and excessive depth count as nothing here, the converter reports them.
    """
    memo: dict[int, int] = {}

    def size(node: Node, depth: int) -> int:
        known = memo.get(id(node))
        if known is not None:
            return known
        if depth > max_depth:
            return 0
        memo[id(node)] = 0  # a cycle back to this node adds nothing
        total = 1
        for child in _children(node):
            total += size(child, depth + 1)
            if total > limit:
                break
        memo[id(node)] = total
        return total

    return size(root, 0)


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [child for pair in node.value for child in pair]
    return []


def _is_empty(root: Node) -> bool:
    return isinstance(root, ScalarNode) and root.value == "" and root.start_mark.index == root.end_mark.index


# --------------------------------------------------------------------------- intents


def parse_intents(
    content: str | bytes,
    source: str,
    *,
    allow_server_fields: bool = False,
    limits: YamlLimits = DEFAULT_LIMITS,
) -> ParseResult:
    """Every DeploymentIntent in a file, and every problem, each document judged on its own.

    One bad document does not hide the good ones next to it; a problem with the
    file as a whole (size, encoding, syntax, an alias bomb) is its only error.
    """
    try:
        documents = load_yaml_documents(content, source, limits)
    except ResourceError as error:
        return ParseResult([], [error])
    result = ParseResult([], [])
    first_line_of: dict[str, int] = {}
    for document in documents:
        if document.data is None:
            continue
        intent, errors = _read_intent(document, source, allow_server_fields)
        if intent is not None:
            errors = _duplicate_name_errors(intent, document, source, first_line_of)
            if not errors:
                result.intents.append(ParsedIntent(intent=intent, document=document, source=source))
        result.errors.extend(errors)
    return result


def _read_intent(
    document: YamlDocument, source: str, allow_server_fields: bool
) -> tuple[DeploymentIntent | None, list[ResourceError]]:
    data = document.data
    if not isinstance(data, dict):
        got = _kind_of(data)
        message = f"a resource must be a mapping with apiVersion, kind, metadata and spec (got {got})"
        return None, [_error_at(document, source, (), message)]
    errors = _header_errors(data, document, source)
    if errors:
        return None, errors  # the schema of some other kind says nothing useful
    if not allow_server_fields:
        errors = [_server_field_error(path, document, source) for path in _server_field_paths(data)]
    try:
        # Files hold the wire form only: 'driftDetection', never 'drift_detection'.
        intent = DeploymentIntent.model_validate(data, by_alias=True, by_name=False)
    except ValidationError as exc:
        return None, errors + [_from_pydantic(error, document, source) for error in exc.errors()]
    return (None, errors) if errors else (intent, [])


def _kind_of(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "text"
    if isinstance(value, bool):
        return "a boolean"
    return "a number" if isinstance(value, int | float) else "a mapping"


def _header_errors(data: dict[Any, Any], document: YamlDocument, source: str) -> list[ResourceError]:
    errors = []
    if data.get("apiVersion") != API_VERSION:
        got = f"got {data['apiVersion']!r}" if "apiVersion" in data else "it is missing"
        message = f"apiVersion must be {API_VERSION} ({got})"
        errors.append(_error_at(document, source, ("apiVersion",), message))
    if data.get("kind") != KIND:
        message = f"unknown kind {data['kind']!r}" if "kind" in data else "kind is missing"
        errors.append(_error_at(document, source, ("kind",), f"{message}; Chiffon reads {KIND} resources"))
    return errors


def _server_field_paths(data: Any) -> list[tuple[str, ...]]:
    """Where a document holds fields only the server sets (status, metadata.uid, ...)."""
    if not isinstance(data, dict):
        return []
    paths: list[tuple[str, ...]] = [("status",)] if "status" in data else []
    metadata = data.get("metadata")
    if isinstance(metadata, dict):
        paths += [("metadata", name) for name in SERVER_SET_METADATA if name in metadata]
    return paths


def _server_field_error(path: tuple[str, ...], document: YamlDocument, source: str) -> ResourceError:
    message = (
        f"{_wire_path(path)} is set by the server and never stored in git; remove it "
        "(chiffonctl apply strips it for you)"
    )
    return _error_at(document, source, path, message)


def _from_pydantic(error: Any, document: YamlDocument, source: str) -> ResourceError:
    path = tuple(error["loc"])
    message = _clean_message(str(error["msg"]))
    if "[key]" in path[1:]:
        # A bad mapping key: name the mapping as the field and the key in the message.
        at = path.index("[key]")
        key, path = path[at - 1], path[: at - 1]
        line = _line_of(document, (*path, key))
        message = message if repr(key) in message else f"key {key!r}: {message}"
        return ResourceError(source, message, line=line, field=_wire_path(path) or None)
    return _error_at(document, source, path, message)


def _clean_message(message: str) -> str:
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            return message[len(prefix) :]
    return message


def _duplicate_name_errors(
    intent: DeploymentIntent, document: YamlDocument, source: str, first_line_of: dict[str, int]
) -> list[ResourceError]:
    name = intent.metadata.name
    if name not in first_line_of:
        first_line_of[name] = document.line
        return []
    message = f"metadata.name {name!r} is already used by the document at line {first_line_of[name]}"
    return [_error_at(document, source, ("metadata", "name"), message)]


def _error_at(document: YamlDocument, source: str, path: KeyPath, message: str) -> ResourceError:
    return ResourceError(source, message, line=_line_of(document, path), field=_wire_path(path) or None)


def _line_of(document: YamlDocument, path: KeyPath) -> int:
    """The line of the deepest part of ``path`` the document has (a missing field points at its parent)."""
    for length in range(len(path), 0, -1):
        line = document.lines.get(path[:length])
        if line is not None:
            return line
    return document.line


_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def _wire_path(path: Sequence[str | int]) -> str:
    """``("spec", "steps", 0, "playbook")`` -> ``spec.steps[0].playbook``; odd keys are quoted."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif _PLAIN_KEY.match(part):
            text += f".{part}" if text else part
        else:
            text += '["' + part.replace("\\", "\\\\").replace('"', '\\"') + '"]'
    return text


# --------------------------------------------------------------------------- round-trip edits


def strip_server_fields(document_text: str) -> tuple[str, list[str]]:
    """Remove ``status`` and the server-set metadata from one document, keeping everything else.

    Returns the new text and the wire paths dropped, e.g. ``["status",
    "metadata.uid"]``. Text without such fields comes back unchanged, byte for
    byte. Otherwise the result is the document's own text (as in
    :attr:`YamlDocument.text`: no '---' or '...' lines) edited in ruamel's
    round-trip mode, so comments, key order and quoting survive. Comment lines
    that ruamel filed under a removed key but that sit outside it (above the
    next key) are moved, not lost.
    """
    source = "<document>"
    documents = load_yaml_documents(document_text, source)
    if len(documents) > 1:
        raise ResourceError(source, f"expected one YAML document, found {len(documents)}")
    paths = _server_field_paths(documents[0].data) if documents else []
    if not paths:
        return document_text, []
    text = documents[0].text
    yaml = _round_trip_yaml(text)
    output = io.StringIO()
    with _yaml_errors(text, source):
        tree = yaml.load(text)
        for path in paths:
            _drop_key(_parent_of(tree, path), path[-1], _wire_path(path))
        yaml.dump(tree, output)
    return output.getvalue(), [_wire_path(path) for path in paths]


def _round_trip_yaml(text: str) -> YAML:
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096  # never re-wrap a long line someone wrote
    mapping, offset = _guess_indent(text)
    yaml.indent(mapping=mapping, sequence=offset + 2, offset=offset)
    return yaml


def _guess_indent(text: str) -> tuple[int, int]:
    """(mapping indent, dash offset of block lists) as the author wrote them; (2, 2) when unknown.

    ruamel writes one indentation for the whole document, so it must be told
    the author's, or every line of an edited file would move.
    """
    mapping: int | None = None
    offset: int | None = None
    parent: int | None = None  # indentation of the previous line when it was a bare 'key:'
    for line in text.splitlines():
        content = line.lstrip(" ")
        if not content or content.startswith("#"):
            continue
        indent = len(line) - len(content)
        if parent is not None and content.startswith("- ") and offset is None and indent >= parent:
            offset = indent - parent
        elif parent is not None and indent > parent and mapping is None and not content.startswith("-"):
            mapping = indent - parent
        bare_key = content.split(" #")[0].rstrip().endswith(":") and not content.startswith("-")
        parent = indent if bare_key else None
    return mapping or 2, 2 if offset is None else offset


def _parent_of(tree: Any, path: tuple[str, ...]) -> CommentedMap:
    parent = tree if len(path) == 1 else tree.get(path[0]) if isinstance(tree, CommentedMap) else None
    if not isinstance(parent, CommentedMap) or path[-1] not in parent:
        # Only for text the two readers see differently (odd line breaks and such).
        message = "cannot be removed in place: the round-trip reader reads this document differently"
        raise ResourceError("<document>", message, field=_wire_path(path))
    return parent


def _drop_key(mapping: CommentedMap, key: str, field: str) -> None:
    """Delete ``key`` from a round-trip mapping without losing the comments around it.

    ruamel files each comment line under the item just before it, so the
    comment above the next key (or at the end of the document) may live in the
    removed entry. Lines indented no deeper than the key are moved to the item
    now before them; deeper ones were inside the removed value and go with it.
    """
    where = mapping.lc.key(key)
    if where is None:  # the key comes from a merge ('<<'): deleting it here changes nothing
        message = "comes from a merge key ('<<'); remove it where the anchor defines it"
        raise ResourceError("<document>", message, field=field)
    kept = [line for line in _comments_of(mapping, key) if not line.strip() or _indent(line) <= where[1]]
    keys = list(mapping)
    position = keys.index(key)
    del mapping[key]
    if not any(line.strip() for line in kept):
        return
    if position > 0:
        _append_comment(*_last_leaf(mapping, keys[position - 1]), kept)
    elif position + 1 < len(keys):
        _prepend_comment(mapping, keys[position + 1], kept)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _comments_of(mapping: CommentedMap, key: str) -> list[str]:
    """The comment lines ruamel attached to an entry: those above it and those after its value."""
    entry = mapping.ca.items.get(key) or [None, None, None, None]
    above = [" " * token.start_mark.column + token.value for token in entry[1] or []]
    leaf, leaf_key = _last_leaf(mapping, key)
    slot = leaf.ca.items.get(leaf_key) or [None, None, None]
    token = slot[_post_slot(leaf)]
    after = token.value.splitlines(keepends=True)[1:] if token is not None else []  # [0] is the eol comment
    return above + after


def _post_slot(container: CommentedMap | CommentedSeq) -> int:
    # ruamel's comment slot for "after this item": [2] in a mapping entry, [0] in a list item.
    return 2 if isinstance(container, CommentedMap) else 0


def _is_block_collection(value: Any) -> bool:
    return isinstance(value, (CommentedMap, CommentedSeq)) and len(value) > 0 and not value.fa.flow_style()


def _last_leaf(container: CommentedMap | CommentedSeq, key: Any) -> tuple[CommentedMap | CommentedSeq, Any]:
    """The innermost last item of an entry's value: where ruamel files comments that follow it."""
    value = container[key]
    while _is_block_collection(value):
        container = value
        key = list(value)[-1] if isinstance(value, CommentedMap) else len(value) - 1
        value = container[key]
    return container, key


def _append_comment(container: CommentedMap | CommentedSeq, key: Any, lines: list[str]) -> None:
    slot = _post_slot(container)
    entry = container.ca.items.setdefault(key, [None] * (4 if slot == 2 else 2))
    if entry[slot] is None:
        # A leading newline tells ruamel the item has no end-of-line comment of its own.
        entry[slot] = CommentToken("\n" + "".join(lines), CommentMark(0))
    else:
        entry[slot].value = entry[slot].value + "".join(lines)


def _prepend_comment(mapping: CommentedMap, key: str, lines: list[str]) -> None:
    entry = mapping.ca.items.setdefault(key, [None, None, None, None])
    tokens = [CommentToken(line.lstrip(" ") or "\n", CommentMark(_indent(line))) for line in lines]
    entry[1] = tokens + (entry[1] or [])


def replace_document(file_text: str, index: int, new_document_text: str | None) -> str:
    """Replace the ``index``-th document of a file, or remove it when the new text is None.

    The file is cut at document boundaries and only the one document changes:
    the others are copied byte for byte, comments and all. A run of comment
    lines just above a '---' belongs to the document below it, so it is
    replaced or removed with that document. The new text must be one YAML
    document; its own '---', '...' and directive lines are dropped. Raises
    IndexError for a document the file does not have and ResourceError for
    unreadable YAML; the edited file is read back to prove it still splits
    into the documents it should.
    """
    bom = "\ufeff" if file_text.startswith("\ufeff") else ""
    text = file_text[len(bom) :]
    scan = _prescan(text, "<file>", DEFAULT_LIMITS)
    spans = _spans(text, scan.documents)
    if not 0 <= index < len(spans):
        raise IndexError(f"the file holds {len(spans)} YAML documents; there is no document {index}")
    span = spans[index]
    if new_document_text is None:
        replacement = ""
    else:
        marker = "---\n" if index > 0 or span.explicit_start else ""
        replacement = marker + _single_document_text(new_document_text) + span.suffix
    result = bom + text[: span.start] + replacement + text[span.end :]
    _check_document_count(result, len(spans) - (new_document_text is None))
    return result


def _single_document_text(text: str) -> str:
    documents = load_yaml_documents(text, "<new document>")
    if len(documents) != 1:
        raise ResourceError("<new document>", f"must hold exactly one YAML document (found {len(documents)})")
    body = documents[0].text
    return body if body.endswith("\n") else body + "\n"


def _check_document_count(text: str, expected: int) -> None:
    found = len(load_yaml_documents(text, "<edited file>"))
    if found != expected:
        message = f"the edit would leave {found} YAML documents instead of {expected}; edit the file by hand"
        raise ResourceError("<edited file>", message)


# --------------------------------------------------------------------------- dumping


class _PlainRepresenter(RoundTripRepresenter):
    """Plain data for people to read: block style, 'null' spelled out, no anchors or aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_none(representer: RoundTripRepresenter, _data: None) -> Any:
    return representer.represent_scalar(_NULL, "null")


# What may appear unescaped in a block scalar; anything else needs double quotes.
_BLOCK_SAFE = re.compile(
    "^[\t\n\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufefe\uff00-\ufffd\U00010000-\U0010ffff]*$"
)


def _represent_str(representer: RoundTripRepresenter, data: str) -> Any:
    if not _BLOCK_SAFE.match(data):
        style: str | None = '"'  # only double quotes can escape '\r', NEL, control characters
    elif "\n" in data:
        # Multi-line text reads best as a literal block; the emitter falls back to
        # quotes by itself when a block cannot hold the text exactly.
        style = "|"
    else:
        style = None
    return representer.represent_scalar(_STR, str(data), style=style)


_PlainRepresenter.add_representer(type(None), _represent_none)
_PlainRepresenter.add_representer(str, _represent_str)


def dump_yaml(data: Any) -> str:
    """Plain data as block-style YAML in the key order given, as ``chiffonctl get -o yaml`` prints it."""
    yaml = YAML(typ="rt")
    yaml.Representer = _PlainRepresenter
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 4096
    if isinstance(data, str):
        # ruamel writes a top-level literal block unindented, which no parser reads back.
        data = DoubleQuotedScalarString(data)
    output = io.StringIO()
    yaml.dump(data, output)
    return output.getvalue()
