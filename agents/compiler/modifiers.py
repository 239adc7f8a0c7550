"""What a request says besides what to run: hosts, ports, versions, approval, priority, resources, vars.

:func:`read_modifiers` takes these out of a clause — so the catalog sees only
what to run — and :func:`apply_modifiers` writes them into a draft. Hosts
are the inventory's: by name ("on unraid", "the gpu desktop"), by address
("192.168.10.21"), by what the inventory says of them ("the 4090 box"), by
group ("all servers", "but not the lab"). Vars are those the chosen
playbooks and their roles take: a port becomes ``kuma_port`` when the
playbook reads ``kuma_port``; a var named in words ("prune monitors",
"keep_alive to 1m") gets the value said, or true. Nothing here invents a
var a playbook does not take, except a port or version, whose name is then
``<service>_port``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from chiffon.agents.catalog.discovery import Entry
from chiffon.agents.compiler.draft import Draft, DraftStep, RepoFacts

__all__ = ["Modifiers", "apply_modifiers", "read_modifiers", "words_of"]

_PORT = re.compile(
    r"\b(?:on\s+|at\s+|to\s+|use\s+|with\s+)?(?:the\s+)?port\s*(?:to\s+|=\s*|:\s*|of\s+|number\s+)?(\d{2,5})\b",
    re.I,
)
# "expose it on 3010": a bare number after on/at is a port unless a unit follows.
_BARE_PORT = re.compile(
    r"\b(?:(?:expose[ds]?|listen(?:ing)?|serve[ds]?|reachable)(?:\s+it)?\s+)?(?:on|at)\s+:?(\d{2,5})\b"
    r"(?![.:\d])(?!\s*(?:am|pm|gb|gib|mb|mib|%|cores?|cpus?|minutes?|mins?|hours?|seconds?|[mhs])\b)",
    re.I,
)
_VERSION = re.compile(
    r"\b(?:version|release|tag)\s*(?:to\s+|=\s*|:\s*)?v?(\d+(?:\.\d+){0,3}(?:[-+][\w.]+)?)\b", re.I
)
# "uptime-kuma 1.23.14", "bump it to v1.23.17": three parts (an address has four).
_BARE_VERSION = re.compile(r"(?<![\w.])v?(\d+\.\d+\.\d+(?:-[\w.]+)?)(?![\w.])", re.I)
_AUTO = re.compile(
    r"\bauto[- ]?approv\w*|\bautomatically\b|\bwithout (?:asking|approval)(?: me)?\b|\bno approval\b"
    r"|\bno need to (?:ask|approve)(?: me)?(?: first)?\b|\bdon'?t (?:ask|wait for) me\b"
    r"|\bskip (?:the )?approvals?(?: step)?\b",
    re.I,
)
_MANUAL = re.compile(
    r"\b(?:ask me(?: first)?|manual approval|needs? (?:my )?approval|let me approve|by hand|manually"
    r"|(?:i|we) (?:want to|will|'ll) approve|approve (?:it|this(?: one)?) (?:myself|ourselves))\b",
    re.I,
)
_HIGH = re.compile(r"\b(?:urgent|urgently|asap|high priority|right away|immediately|critical)\b", re.I)
_NORMAL = re.compile(
    r"\b(?:normal priority|low priority|not (?:that )?(?:urgent|important)|no rush|no hurry)\b", re.I
)
_SIZE = r"(\d+(?:\.\d+)?)\s*(gib|gb|g|mib|mb|m)\b"
_GPU = re.compile(rf"{_SIZE}\s*(?:of\s+)?(?:gpu\s*(?:memory|ram)?|vram)", re.I)
_MEMORY = re.compile(rf"{_SIZE}\s*(?:of\s+)?(?:ram|memory)", re.I)
_CORES = re.compile(r"(\d+(?:\.\d+)?)\s*(?:cpu\s*)?(?:cores?|cpus?|vcpus?)\b", re.I)
_AFTER = re.compile(
    r"\b(?:after|once|when|depends? on|following)\s+(?:the\s+)?([a-z0-9][a-z0-9 _-]{0,62}?)"
    r"(?:\s+(?:intent|one))?(?:\s+(?:is|are)\s+\w+)?\s*$",
    re.I,
)
_NO_WAIT = re.compile(
    r"\b(?:(?:does ?n[o']?t|do ?n[o']?t|no longer|never)\s+(?:need\s+to\s+)?(?:wait|depend)\s+(?:for|on)"
    r"|drop\s+(?:the\s+)?dependency\s+on|stop\s+waiting\s+for)\s+(?:the\s+)?(.+?)(?:\s+any ?more)?\s*$",
    re.I,
)
_ALL_WORDS = re.compile(
    r"\b(?:on\s+)?(?:all|every|each)\s+(?:of\s+the\s+)?(?:\w+\s+)?(?:servers?|hosts?|machines?|boxes|nodes?)\b"
    r"|\beverywhere\b",
    re.I,
)
_EXCEPT = re.compile(
    r",?\s*\b(?:but not|except(?: for)?|excluding|apart from|other than|not on)\s+(?:the\s+)?([\w-]+)"
    r"(?:\s+(?:one|host|box|machine|group))?",
    re.I,
)
_MODEL_TAG = re.compile(r"(?<![\w/.:-])([a-z][a-z0-9.\-]*:[a-z0-9][a-z0-9.\-]*)(?![\w/:-])", re.I)
_UPGRADE_MODE = re.compile(r"\b(full|safe|dist)[ -]?upgrade", re.I)
_URL = re.compile(r"\bhttps?://[^\s,;]+", re.I)
_URL_NAME = re.compile(
    r"(?:.*\b)(?:for|watch|monitor|add|check)\s+(?:the\s+|my\s+)?([\w .'-]{2,40}?)\s+(?:at|on|via)\s+$", re.I
)
_LOCAL_WORDS = re.compile(r"\b(?:this machine|locally|local machine|here|the lab|lab machine)\b", re.I)
_HOST_NOUN = r"(?:\s+(?:host|box|server|machine|group|hosts|boxes|servers|machines))?"
_ALIAS_NOUN = r"\s+(?:pc|box|machine|desktop|workstation|server|host|rig|node)s?\b"
_GENERIC_HOST_WORDS = frozenset(
    {"desktop", "workstation", "server", "box", "pc", "machine", "host", "node", "rig", "the"}
)
_HOST_PREPOSITION = re.compile(
    r"\b(?:on|to|onto|for|at|use|using|target|targeting|limit(?:ed)? to|only on)\s+(?:the\s+)?$", re.I
)
_ADDRESS = re.compile(r"^\d{1,3}(?:\.\d{1,3}){3}$")
_FILLER = re.compile(r"\b(?:both|all of them|each of them|please)\b", re.I)
_NEGATED = re.compile(r"\b(?:no|not|don'?t|do not|without|disable|never|stop)\s+(?:\w+\s+)?$", re.I)
_VALUE = re.compile(r"^\s*(?:to|=|:|of|for|at|as)?\s*([\w.:/-]+)", re.I)
_EXPLICIT_VALUE = re.compile(r"^\s*(?:to|=|:)\s*([\w.:/-]+)", re.I)


@dataclass
class Modifiers:
    """What the rules recognised in a request, apart from what to run."""

    hosts: list[str] = field(default_factory=list)
    port: int | None = None
    version: str | None = None
    approval: str | None = None
    priority: str | None = None
    resources: dict[str, float | int] = field(default_factory=dict)
    depends_on: list[str] = field(default_factory=list)
    drop_depends_on: list[str] = field(default_factory=list)
    # Values for vars a playbook takes only if it does ("models" → ollama_models), by var suffix.
    extras: dict[str, Any] = field(default_factory=dict)
    # The clause's words, where apply_modifiers looks for vars named in words ("prune monitors").
    said: list[str] = field(default_factory=list)

    def merge(self, other: Modifiers) -> None:
        self.hosts.extend(h for h in other.hosts if h not in self.hosts)
        self.port = other.port or self.port
        self.version = other.version or self.version
        self.approval = other.approval or self.approval
        self.priority = other.priority or self.priority
        self.resources.update(other.resources)
        self.depends_on.extend(d for d in other.depends_on if d not in self.depends_on)
        self.drop_depends_on.extend(d for d in other.drop_depends_on if d not in self.drop_depends_on)
        for key, value in other.extras.items():
            mine = self.extras.get(key)
            self.extras[key] = (
                [*mine, *value] if isinstance(mine, list) and isinstance(value, list) else value
            )
        self.said.extend(other.said)

    def without_hosts(self) -> Modifiers:
        return replace(self, hosts=[])

    @property
    def empty(self) -> bool:
        return replace(self, said=[]) == Modifiers()


def words_of(name: str) -> str:
    """``gpu-desktop`` → ``gpu desktop``: a name as people say it."""
    return " ".join(re.findall(r"[a-z0-9]+", name.lower()))


# =========================================================================== reading


def read_modifiers(text: str, facts: RepoFacts) -> tuple[str, Modifiers]:
    """The modifiers in ``text``, and ``text`` without them (what the catalog should see)."""
    found = Modifiers(said=[text])
    rest = text
    rest, found.extras = _take_extras(rest, facts)
    rest, found.port = _take_int(_PORT, rest)
    rest, found.version = _take(_VERSION, rest)
    rest, gpu = _take_size(_GPU, rest)
    rest, memory = _take_size(_MEMORY, rest)
    rest, cores = _take(_CORES, rest)
    found.resources = {
        key: value
        for key, value in (("gpuMemoryMiB", gpu), ("memoryMiB", memory), ("cpuCores", _number(cores)))
        if value
    }
    rest, found.approval, found.priority = _take_policy(rest)
    rest, found.drop_depends_on = _take_dropped_dependencies(rest, facts)
    rest, found.depends_on = _take_dependencies(rest, facts)
    rest, found.hosts = _take_hosts(rest, facts)
    if found.port is None:
        rest, found.port = _take_int(_BARE_PORT, rest)
    if found.version is None:
        rest, found.version = _take(_BARE_VERSION, rest)
    rest = _FILLER.sub(" ", rest)
    return " ".join(rest.split()).strip(" ,.:;-"), found


def _take_policy(text: str) -> tuple[str, str | None, str | None]:
    approval = priority = None
    if _AUTO.search(text):
        approval, text = "Auto", _AUTO.sub(" ", text)
    elif _MANUAL.search(text):
        approval, text = "Manual", _MANUAL.sub(" ", text)
    if _HIGH.search(text):
        priority, text = "High", _HIGH.sub(" ", text)
    elif _NORMAL.search(text):
        priority, text = "Normal", _NORMAL.sub(" ", text)
    return text, approval, priority


def _take_extras(text: str, facts: RepoFacts) -> tuple[str, dict[str, Any]]:
    """URLs to watch, model tags ("qwen2.5-coder:14b") and an upgrade mode ("a full upgrade")."""
    extras: dict[str, Any] = {}
    urls = []
    for match in list(_URL.finditer(text)):
        named = _URL_NAME.search(text[: match.start()])
        url = match.group(0).rstrip(".)")
        name = named.group(1).strip() if named else re.sub(r"^https?://", "", url).split("/")[0]
        urls.append({"name": name, "url": url})
    for item in urls:
        text = text.replace(item["url"], " ")
    if urls:
        extras["urls"] = urls
    names = facts.host_names
    tags = [t for t in _MODEL_TAG.findall(text) if not set(t.split(":")) <= names]
    if tags:
        extras["models"] = tags
        for tag in tags:
            text = text.replace(tag, " ")
    mode = _UPGRADE_MODE.search(text)
    if mode:
        extras["mode"] = "full" if mode.group(1).lower() in ("full", "dist") else "safe"
    return text, extras


def _take(pattern: re.Pattern[str], text: str) -> tuple[str, str | None]:
    match = pattern.search(text)
    if match is None:
        return text, None
    return text[: match.start()] + " " + text[match.end() :], match.group(1)


def _take_int(pattern: re.Pattern[str], text: str) -> tuple[str, int | None]:
    rest, value = _take(pattern, text)
    if value is None or not 0 < int(value) < 65536:
        return text, None
    return rest, int(value)


def _take_size(pattern: re.Pattern[str], text: str) -> tuple[str, int | None]:
    match = pattern.search(text)
    if match is None:
        return text, None
    amount, unit = float(match.group(1)), match.group(2).lower()
    mebibytes = amount if unit.startswith("m") else amount * 1024
    return text[: match.start()] + " " + text[match.end() :], int(mebibytes)


def _number(value: str | None) -> float | int | None:
    if value is None:
        return None
    number = float(value)
    return int(number) if number.is_integer() else number


def _intent_named(words: str, names: Sequence[str]) -> str | None:
    """The intent ``words`` name: exactly, or the one whose name holds all of them ("the proxy")."""
    wanted = words_of(words).removesuffix(" intent").split()
    for name in names:
        if words_of(name).split() == wanted:
            return name
    containing = [name for name in names if wanted and set(wanted) <= set(words_of(name).split())]
    return containing[0] if len(containing) == 1 else None


def _take_dependencies(text: str, facts: RepoFacts) -> tuple[str, list[str]]:
    match = _AFTER.search(text)
    if match is None:
        return text, []
    name = _intent_named(match.group(1), list(facts.intents))
    return (text[: match.start()], [name]) if name else (text, [])


def _take_dropped_dependencies(text: str, facts: RepoFacts) -> tuple[str, list[str]]:
    match = _NO_WAIT.search(text)
    if match is None:
        return text, []
    names = [d for intent in facts.intents.values() for d in intent.spec.depends_on] or list(facts.intents)
    name = _intent_named(match.group(1), list(dict.fromkeys(names)))
    return (text[: match.start()], [name]) if name else (text, [])


def _take_hosts(text: str, facts: RepoFacts) -> tuple[str, list[str]]:
    """Inventory hosts and groups named in ``text``: by name, address, what the inventory says, or group."""
    text, excluded = _take_exclusions(text, facts)
    text, hosts = _take_host_names(text, facts)
    text, aliased = _take_host_aliases(text, facts)
    hosts.extend(h for h in aliased if h not in hosts)
    if not hosts and "all" in facts.host_names and _ALL_WORDS.search(text):
        hosts.append("all")
        text = _ALL_WORDS.sub(" ", text)
    if not hosts and _LOCAL_WORDS.search(text):
        local = next((n for n in ("localhost", "lab") if n in facts.host_names), None)
        if local:
            hosts.append(local)
            text = _LOCAL_WORDS.sub(" ", text)
    if excluded:
        hosts = [*(hosts or ["all"]), *(f"!{name}" for name in excluded)]
    return text, hosts


def _take_exclusions(text: str, facts: RepoFacts) -> tuple[str, list[str]]:
    excluded = []
    for match in list(_EXCEPT.finditer(text)):
        name = next((n for n in facts.host_names if words_of(n) == words_of(match.group(1))), None)
        if name is not None:
            excluded.append(name)
            text = text.replace(match.group(0), " ")
    return text, excluded


def _take_host_names(text: str, facts: RepoFacts) -> tuple[str, list[str]]:
    hosts: list[str] = []
    for name in sorted(facts.host_names - {"all", "ungrouped"}, key=len, reverse=True):
        spoken = r"[\s_-]+".join(re.escape(word) for word in words_of(name).split())
        pattern = re.compile(rf"(?<![\w-])(?:the\s+)?{spoken}{_HOST_NOUN}(?![\w-])", re.I)
        match = pattern.search(text)
        if match is None:
            continue
        hosts.append(name)
        text = _cut_with_preposition(text, match)
    return text, hosts


def _take_host_aliases(text: str, facts: RepoFacts) -> tuple[str, list[str]]:
    """ "192.168.10.21", "the gaming pc", "the 4090 box": hosts by address or by a word of theirs."""
    hosts: list[str] = []
    for host, details in facts.host_details.items():
        words = [w for w in words_of(host).split() if w not in _GENERIC_HOST_WORDS]
        words += [w for value in details for w in words_of(value).split() if any(c.isdigit() for c in w)]
        addresses = [value for value in details if _ADDRESS.match(value)]
        patterns = [rf"(?<![\w.]){re.escape(a)}(?![\w.])" for a in addresses]
        patterns += [rf"\b(?:the\s+)?{re.escape(w)}{_ALIAS_NOUN}" for w in dict.fromkeys(words)]
        for pattern in patterns:
            match = re.search(pattern, text, re.I)
            if match is not None:
                hosts.append(host)
                text = _cut_with_preposition(text, match)
                break
    return text, hosts


def _cut_with_preposition(text: str, match: re.Match[str]) -> str:
    before = _HOST_PREPOSITION.search(text[: match.start()])
    start = before.start() if before else match.start()
    return text[:start] + " " + text[match.end() :]


# =========================================================================== applying


def apply_modifiers(draft: Draft, modifiers: Modifiers, entries: Sequence[Entry], facts: RepoFacts) -> Draft:
    """``draft`` with what the rules recognised: hosts, vars, approval, priority, resources, order."""
    changes: dict[str, Any] = {}
    if modifiers.hosts:
        changes["limit"] = ":".join(modifiers.hosts)
    new_vars = _vars(draft, modifiers, entries, facts)
    if new_vars != dict(draft.vars):
        steps, new_vars = _into_steps(draft, new_vars)
        changes["vars"], changes["steps"] = new_vars, steps
    if modifiers.approval:
        changes["approval"] = modifiers.approval
    if modifiers.priority:
        changes["priority"] = modifiers.priority
    if modifiers.resources:
        changes["resources"] = {**dict(draft.resources), **modifiers.resources}
    depends = [*draft.depends_on, *modifiers.depends_on]
    depends = [d for d in dict.fromkeys(depends) if d not in modifiers.drop_depends_on]
    if tuple(depends) != tuple(draft.depends_on):
        changes["depends_on"] = tuple(depends)
    return replace(draft, **changes) if changes else draft


def _into_steps(draft: Draft, new_vars: dict[str, Any]) -> tuple[tuple[DraftStep, ...], dict[str, Any]]:
    """A changed var a step sets itself is changed in that step: step vars win over the intent's."""
    changed = {k: v for k, v in new_vars.items() if draft.vars.get(k, _UNSET) != v}
    steps = []
    for step in draft.steps:
        own = {k: v for k, v in changed.items() if k in step.vars}
        steps.append(replace(step, vars={**dict(step.vars), **own}) if own else step)
    in_steps = {k for step in draft.steps for k in step.vars if k in changed}
    return tuple(steps), {k: v for k, v in new_vars.items() if k not in in_steps or k in draft.vars}


_UNSET = object()


def _vars(draft: Draft, modifiers: Modifiers, entries: Sequence[Entry], facts: RepoFacts) -> dict[str, Any]:
    new_vars = dict(draft.vars)
    for kind, value in (("port", modifiers.port), ("version", modifiers.version)):
        if value is not None:
            new_vars[var_for(kind, draft, entries, facts) or _invented(kind, draft)] = value
    extras = dict(modifiers.extras)
    urls = extras.pop("urls", None)
    if urls:
        # URLs to watch go to the list the playbooks take for them (portals, monitors...).
        kinds = ("portals", "monitors", "urls", "targets")
        name = next(filter(None, (var_for(kind, draft, entries, facts) for kind in kinds)), None)
        if name is not None:
            before = new_vars.get(name)
            new_vars[name] = [*before, *urls] if isinstance(before, list) else urls
    for kind, extra in extras.items():
        name = var_for(kind, draft, entries, facts)
        if name is not None:
            before = new_vars.get(name)
            if isinstance(before, list) and isinstance(extra, list):
                extra = list(dict.fromkeys([*before, *extra]))
            new_vars[name] = extra
    new_vars.update(_named_vars(modifiers.said, draft, entries, facts))
    return new_vars


def _invented(kind: str, draft: Draft) -> str:
    return f"{draft.service.replace('-', '_')}_{kind}"


def _inputs(entries: Sequence[Entry], facts: RepoFacts) -> list[str]:
    return list(dict.fromkeys(name for entry in entries for name in facts.inputs.get(entry.id, ())))


def var_for(kind: str, draft: Draft, entries: Sequence[Entry], facts: RepoFacts) -> str | None:
    """The var the playbooks read for ``kind`` ("port"): one they take as input, or None."""
    for name in draft.vars:
        if name.endswith(f"_{kind}") or name == kind:
            return name
    candidates = [name for name in _inputs(entries, facts) if name == kind or name.endswith(f"_{kind}")]
    service_words = set(draft.service.replace("-", "_").split("_"))

    def rank(name: str) -> tuple[int, int]:
        """``port`` first, then ``kuma_port`` (a service word and the kind), then longer names."""
        prefix = name.removesuffix(kind).rstrip("_")
        return (0 if not prefix else 1 if prefix in service_words else 2, len(name))

    return min(candidates, key=rank) if candidates else None


_HANDLED_KINDS = frozenset({"port", "version", "models", "mode", "portals"})


def _named_vars(
    said: Sequence[str], draft: Draft, entries: Sequence[Entry], facts: RepoFacts
) -> list[tuple[str, Any]]:
    """Vars named in words: "prune monitors" → ``prune_monitors: true``, "keep_alive to 1m" → "1m".

    A var of one word needs an explicit value ("image to x"); a longer name alone means true,
    or false after "no", "don't", "without"."""
    found = []
    service_words = draft.service.replace("-", " ").split()
    for name in _inputs(entries, facts):
        words = name.lower().split("_")
        while len(words) > 1 and words[0] in service_words:
            words = words[1:]
        if " ".join(words) in _HANDLED_KINDS:
            continue
        phrase = r"[\s_-]+".join(re.escape(w) for w in words)
        for text in said:
            match = re.search(rf"(?<![\w-]){phrase}(?![\w-])", text, re.I)
            if match is None:
                continue
            value = _value_after(text[match.end() :], single=len(words) == 1)
            if value is None and len(words) > 1:
                value = not _NEGATED.search(text[: match.start()])
            if value is not None:
                found.append((name, value))
                break
    return found


def _value_after(text: str, *, single: bool) -> Any:
    match = (_EXPLICIT_VALUE if single else _VALUE).match(text)
    if match is None:
        return None
    token = match.group(1)
    lowered = token.lower()
    if lowered in ("true", "yes", "on"):
        return True
    if lowered in ("false", "no", "off"):
        return False
    if re.fullmatch(r"\d+", token):
        return int(token)
    if single or re.fullmatch(r"\d+(?:\.\d+)?[smhd]?|[\w.:/-]*\d[\w.:/-]*", token):
        return token
    return None
