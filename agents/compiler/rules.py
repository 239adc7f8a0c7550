"""The offline compiler: catalog matches plus a few rules, no model (DESIGN §6).

It is what runs when no LLM is configured or reachable, so the embedded demo
works with nothing installed. Deterministic and fast (no network, one
catalog search per clause):

1. The request is cut into clauses at "and", "then", commas and semicolons;
   "then" / "after that" / "once that is done" mark an order.
2. Each clause gives up what the rules recognise — hosts and groups the
   inventory names, a port, a version, "auto-approve", "urgent", CPU, memory
   and GPU memory, "after <intent>" — and the rest is searched in the
   catalog. A clause that matches nothing on its own is searched again with
   the previous clause's service in front ("add the portals" after "deploy
   Kuma").
3. Clauses that matched the same service become ordered steps of one
   intent; other services become intents of their own, depending on the
   previous one when the request said "then".

A modification ("use the staging host", "change the port to 3002") is
applied to an existing intent's draft with the same rules. Ports and
versions become the vars the chosen playbooks read (``kuma_port``), found in
their text.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from chiffon.agents.catalog.discovery import Entry
from chiffon.agents.compiler.draft import Draft, DraftError, DraftStep, RepoFacts, slug

__all__ = ["MIN_SCORE", "Clause", "Modifiers", "Search", "compile_request", "modify_draft", "split_clauses"]

#: The same floor as the planner's goal resolver: below it a match is a guess.
MIN_SCORE = 0.33

#: Search(text) -> runnable catalog entries with their scores, best first.
Search = Callable[[str], Sequence[tuple[Entry, float]]]

_ORDERED = (
    r"(?:,?\s*\band then\b|,?\s*\bthen\b|,?\s*\bafter that\b|,?\s*\bafterwards\b"
    r"|,?\s*\bonce (?:that|it) is (?:done|up|ready)\b|,?\s*\bnext\b)"
)
_PLAIN = r"(?:;|,\s*and\b|,|\band\b|\balso\b|\bplus\b|\bas well as\b)"
_SPLIT = re.compile(rf"\s*({_ORDERED}|{_PLAIN})\s*", re.IGNORECASE)
_FILLER = re.compile(
    r"^\s*(?:please|pls|can you|could you|would you|i want to|i'd like to|i want|i need|let's|lets"
    r"|go ahead and)\b[\s,]*",
    re.IGNORECASE,
)
_PORT = re.compile(
    r"\b(?:on\s+|at\s+|to\s+|use\s+|with\s+)?(?:the\s+)?port\s*(?:to\s+|=\s*|:\s*|of\s+|number\s+)?(\d{2,5})\b",
    re.I,
)
_VERSION = re.compile(
    r"\b(?:version|release|tag)\s*(?:to\s+|=\s*|:\s*)?v?(\d+(?:\.\d+){0,3}(?:[-+][\w.]+)?)\b", re.I
)
_AUTO = re.compile(
    r"\bauto[- ]?approv\w*|\bautomatically\b|\bwithout (?:asking|approval)\b|\bno approval\b", re.I
)
_MANUAL = re.compile(r"\b(?:ask me|manual approval|needs? (?:my )?approval|let me approve)\b", re.I)
_HIGH = re.compile(r"\b(?:urgent|urgently|asap|high priority|right away|immediately|critical)\b", re.I)
_SIZE = r"(\d+(?:\.\d+)?)\s*(gib|gb|g|mib|mb|m)\b"
_GPU = re.compile(rf"{_SIZE}\s*(?:of\s+)?(?:gpu\s*(?:memory|ram)?|vram)", re.I)
_MEMORY = re.compile(rf"{_SIZE}\s*(?:of\s+)?(?:ram|memory)", re.I)
_CORES = re.compile(r"(\d+(?:\.\d+)?)\s*(?:cpu\s*)?(?:cores?|cpus?|vcpus?)\b", re.I)
_AFTER = re.compile(
    r"\b(?:after|once|when|depends? on|following)\s+(?:the\s+)?([a-z0-9][a-z0-9 _-]{0,62}?)"
    r"(?:\s+(?:is|are)\s+\w+)?\s*$",
    re.I,
)
_ALL_WORDS = re.compile(
    r"\b(?:on\s+)?(?:all|every|each)\s+(?:of\s+the\s+)?(?:servers?|hosts?|machines?|boxes|nodes?)\b|\beverywhere\b",
    re.I,
)
_LOCAL_WORDS = re.compile(r"\b(?:this machine|locally|local machine|here|the lab|lab machine)\b", re.I)
_HOST_NOUN = r"(?:\s+(?:host|box|server|machine|group|hosts|servers|machines))?"
_HOST_PREPOSITION = re.compile(
    r"\b(?:on|to|onto|for|at|use|using|target|targeting|limit(?:ed)? to|only on)\s+(?:the\s+)?$", re.I
)


@dataclass(frozen=True)
class Clause:
    text: str  # what is left for the catalog once the rules took their part
    ordered: bool  # joined to the previous clause by "then"


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

    def merge(self, other: Modifiers) -> None:
        self.hosts.extend(h for h in other.hosts if h not in self.hosts)
        self.port = other.port or self.port
        self.version = other.version or self.version
        self.approval = other.approval or self.approval
        self.priority = other.priority or self.priority
        self.resources.update(other.resources)
        self.depends_on.extend(d for d in other.depends_on if d not in self.depends_on)

    @property
    def empty(self) -> bool:
        return self == Modifiers()


# =========================================================================== clauses


def split_clauses(request: str) -> list[Clause]:
    """``request`` cut at its conjunctions; each clause knows whether "then" led to it."""
    parts = _SPLIT.split(" ".join(request.split()))
    clauses: list[Clause] = []
    ordered = False
    for index, part in enumerate(parts):
        if index % 2:  # a separator
            ordered = ordered or not re.fullmatch(_PLAIN, part.strip(), re.IGNORECASE)
            continue
        text = _FILLER.sub("", part).strip(" .!?,")
        if text:
            clauses.append(Clause(text, ordered and bool(clauses)))
            ordered = False
    return clauses


def read_modifiers(text: str, facts: RepoFacts) -> tuple[str, Modifiers]:
    """The modifiers in ``text``, and ``text`` without them (what the catalog should see)."""
    found = Modifiers()
    rest = text
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
    if _AUTO.search(rest):
        found.approval, rest = "Auto", _AUTO.sub(" ", rest)
    elif _MANUAL.search(rest):
        found.approval, rest = "Manual", _MANUAL.sub(" ", rest)
    if _HIGH.search(rest):
        found.priority, rest = "High", _HIGH.sub(" ", rest)
    rest, found.depends_on = _take_dependencies(rest, facts)
    rest, found.hosts = _take_hosts(rest, facts)
    return " ".join(rest.split()).strip(" ,."), found


def _take(pattern: re.Pattern[str], text: str) -> tuple[str, str | None]:
    match = pattern.search(text)
    if match is None:
        return text, None
    return text[: match.start()] + " " + text[match.end() :], match.group(1)


def _take_int(pattern: re.Pattern[str], text: str) -> tuple[str, int | None]:
    text, value = _take(pattern, text)
    return text, int(value) if value and 0 < int(value) < 65536 else None


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


def _words(name: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", name.lower()))


def _take_dependencies(text: str, facts: RepoFacts) -> tuple[str, list[str]]:
    match = _AFTER.search(text)
    if match is None:
        return text, []
    wanted = _words(match.group(1))
    for name in facts.intents:
        if _words(name) == wanted or _words(name) == wanted.removesuffix(" intent"):
            return text[: match.start()], [name]
    return text, []


def _take_hosts(text: str, facts: RepoFacts) -> tuple[str, list[str]]:
    """Inventory hosts and groups named in ``text`` ("on unraid", "the gpu desktop", "locally")."""
    hosts: list[str] = []
    names = sorted(facts.host_names - {"all", "ungrouped"}, key=len, reverse=True)
    for name in names:
        spoken = r"[\s_-]+".join(re.escape(word) for word in _words(name).split())
        pattern = re.compile(rf"(?<![\w-])(?:the\s+)?{spoken}{_HOST_NOUN}(?![\w-])", re.I)
        match = pattern.search(text)
        if match is None:
            continue
        hosts.append(name)
        before = _HOST_PREPOSITION.search(text[: match.start()])
        start = before.start() if before else match.start()
        text = text[:start] + " " + text[match.end() :]
    if not hosts and "all" in facts.host_names and _ALL_WORDS.search(text):
        hosts.append("all")
        text = _ALL_WORDS.sub(" ", text)
    if not hosts and _LOCAL_WORDS.search(text):
        local = next((n for n in ("localhost", "lab") if n in facts.host_names), None)
        if local:
            hosts.append(local)
            text = _LOCAL_WORDS.sub(" ", text)
    return text, hosts


# =========================================================================== matching


@dataclass(frozen=True)
class _Matched:
    entry: Entry
    score: float
    clause: Clause
    modifiers: Modifiers


#: How much a clause must lean to an entry on its own before its context may pick it.
CONTEXT_MIN_SCORE = 0.2
#: Entries of the same service this close to the best score are told apart by the clause's verb.
VERB_MARGIN = 0.1
_VERBS = (
    ("deploy", re.compile(r"\b(?:deploy|install|set up|setup|spin up|bring up|start|host)\b", re.I)),
    ("configure", re.compile(r"\b(?:config\w*|add|monitor\w*|register|portals?)\b", re.I)),
    ("update", re.compile(r"\b(?:update|upgrade|patch)\w*\b", re.I)),
    ("backup", re.compile(r"\bback\s?up\w*\b", re.I)),
)


def _best(search: Search, text: str) -> tuple[Entry, float] | None:
    """The entry ``text`` asks for: the best match, or a close one of its service whose kind fits the verb."""
    if not text.strip():
        return None
    found = search(text)
    if not found or found[0][1] < MIN_SCORE:
        return None
    verb = next((name for name, pattern in _VERBS if pattern.search(text)), None)
    top, top_score = found[0]
    if verb is None or _step_name(top) == verb:
        return found[0]
    close = (
        (entry, score)
        for entry, score in found[1:]
        if score >= top_score - VERB_MARGIN and entry.service == top.service and _step_name(entry) == verb
    )
    return next(close, found[0])


def _match_clauses(
    clauses: Sequence[Clause], facts: RepoFacts, search: Search
) -> tuple[list[_Matched], Modifiers, list[str]]:
    matched: list[_Matched] = []
    shared = Modifiers()
    unmatched: list[str] = []
    for clause in clauses:
        text, modifiers = read_modifiers(clause.text, facts)
        best = _best(search, text)
        if best is None and matched and text:
            best = _in_context(search, text, matched[-1].entry.service)
        if best is None:
            shared.merge(modifiers)
            if (text and len(text.split()) > 1) or (text and modifiers.empty):
                unmatched.append(clause.text)
            continue
        matched.append(_Matched(best[0], best[1], clause, modifiers))
    return matched, shared, unmatched


def _in_context(search: Search, text: str, service: str) -> tuple[Entry, float] | None:
    """``text`` read as about ``service`` ("add the portals" after "deploy Kuma").

    Only an entry of that service counts, and only if the clause alone already
    leaned towards it: "and bake a cake" must not become a Kuma step.
    """
    best = _best(search, f"{service.replace('-', ' ')} {text}")
    if best is None or best[0].service != service:
        return None
    alone = {entry.id: score for entry, score in search(text)}
    return best if alone.get(best[0].id, 0.0) >= CONTEXT_MIN_SCORE else None


# =========================================================================== drafts


def compile_request(request: str, facts: RepoFacts, search: Search) -> tuple[list[Draft], list[str]]:
    """Drafts for a request in words, and warnings for the parts no rule or catalog entry took."""
    clauses = split_clauses(request)
    matched, shared, unmatched = _match_clauses(clauses, facts, search)
    if not matched:
        raise DraftError([_nothing_matched(request, search)])
    warnings = [f'nothing in homelab-infra matches "{text}"; it was left out' for text in unmatched]
    drafts: list[Draft] = []
    by_service: dict[str, int] = {}
    for item in matched:
        service = slug(item.entry.service) or slug(item.entry.name)
        if service in by_service:
            index = by_service[service]
            drafts[index] = _with_step(drafts[index], item, facts)
            continue
        depends = (drafts[-1].name,) if item.clause.ordered and drafts else ()
        by_service[service] = len(drafts)
        drafts.append(_new_draft(service, item, depends, facts))
    drafts = [_finish(draft, shared, facts) for draft in drafts]
    return drafts, warnings


def _new_draft(service: str, item: _Matched, depends_on: tuple[str, ...], facts: RepoFacts) -> Draft:
    draft = Draft(name=service, service=service, steps=(_draft_step(item.entry),), depends_on=depends_on)
    return _apply(draft, item.modifiers, (item.entry,), facts)


def _with_step(draft: Draft, item: _Matched, facts: RepoFacts) -> Draft:
    if all(step.entry != item.entry.id for step in draft.steps):
        draft = replace(draft, steps=(*draft.steps, _draft_step(item.entry)))
    return _apply(draft, item.modifiers, _entries_of(draft, facts), facts)


def _entries_of(draft: Draft, facts: RepoFacts) -> list[Entry]:
    return [facts.entries[step.entry] for step in draft.steps if step.entry in facts.entries]


def _draft_step(entry: Entry) -> DraftStep:
    return DraftStep(entry=entry.id, name=_step_name(entry))


def _step_name(entry: Entry) -> str:
    """A short verb for a step: ``kuma-deployment`` → ``deploy``, ``kuma-config-update`` → ``configure``."""
    words = set(re.findall(r"[a-z]+", entry.name.lower()))
    for name, hints in (
        ("deploy", {"deploy", "deployment", "install", "setup"}),
        ("configure", {"config", "configure", "configuration", "settings"}),
        ("update", {"update", "upgrade", "patch"}),
        ("backup", {"backup", "backups"}),
    ):
        if words & hints:
            return name
    return slug(entry.name) or "run"


def _apply(draft: Draft, modifiers: Modifiers, entries: Sequence[Entry], facts: RepoFacts) -> Draft:
    """``draft`` with what the rules recognised: hosts, vars, approval, priority, resources, order."""
    changes: dict[str, Any] = {}
    if modifiers.hosts:
        changes["limit"] = ":".join(modifiers.hosts)
    new_vars = dict(draft.vars)
    for kind, value in (("port", modifiers.port), ("version", modifiers.version)):
        if value is not None:
            new_vars[_var_for(kind, draft, entries, facts)] = value
    if new_vars != dict(draft.vars):
        changes["vars"] = new_vars
    if modifiers.approval:
        changes["approval"] = modifiers.approval
    if modifiers.priority:
        changes["priority"] = modifiers.priority
    if modifiers.resources:
        changes["resources"] = {**dict(draft.resources), **modifiers.resources}
    if modifiers.depends_on:
        changes["depends_on"] = tuple(dict.fromkeys((*draft.depends_on, *modifiers.depends_on)))
    return replace(draft, **changes) if changes else draft


def _var_for(kind: str, draft: Draft, entries: Sequence[Entry], facts: RepoFacts) -> str:
    """The var the playbooks read for ``kind`` ("port"): one they take as input, else ``<service>_<kind>``."""
    for name in draft.vars:
        if name.endswith(f"_{kind}") or name == kind:
            return name
    service_words = set(draft.service.replace("-", " ").split())
    candidates = [
        name
        for entry in entries
        for name in facts.inputs.get(entry.id, ())
        if name == kind or name.endswith(f"_{kind}")
    ]
    preferred = [name for name in candidates if service_words & set(name.split("_"))]
    if preferred or candidates:
        return min(preferred or candidates, key=len)
    return f"{draft.service.replace('-', '_')}_{kind}"


def _finish(draft: Draft, shared: Modifiers, facts: RepoFacts) -> Draft:
    """Modifiers said apart from any service ("…, on unraid") apply to every draft."""
    draft = _apply(draft, shared, _entries_of(draft, facts), facts)
    if draft.name in draft.depends_on:
        draft = replace(draft, depends_on=tuple(d for d in draft.depends_on if d != draft.name))
    return draft


def _nothing_matched(request: str, search: Search) -> str:
    closest = search(request)[:3]
    names = ", ".join(f"{entry.target} ({score:.2f})" for entry, score in closest)
    return (
        f'nothing in homelab-infra matches "{request}"'
        + (f"; the closest are {names}" if names else "")
        + "; name a playbook, or write one with `chiffonctl template new`"
    )


# =========================================================================== modifications


_REMOVE = re.compile(
    r"\b(?:remove|drop|skip|without|delete|no longer run)\s+(?:the\s+)?(.+?)(?:\s+step)?$", re.I
)


def modify_draft(base: Draft, request: str, facts: RepoFacts, search: Search) -> tuple[Draft, list[str]]:
    """``base`` changed as ``request`` says: modifiers, steps added ("also add the portals") or removed."""
    draft = base
    warnings: list[str] = []
    changed = False
    for clause in split_clauses(request):
        removal = _REMOVE.search(clause.text)
        if removal is not None:
            kept = _without_step(draft, removal.group(1), facts)
            if kept is not None:
                draft, changed = kept, True
                continue
        text, modifiers = read_modifiers(clause.text, facts)
        if not modifiers.empty:
            draft, changed = _apply(draft, modifiers, _entries_of(draft, facts), facts), True
        best = _best(search, f"{draft.service.replace('-', ' ')} {text}") if _asks_to_add(text) else None
        if best is not None and all(step.entry != best[0].id for step in draft.steps):
            draft, changed = replace(draft, steps=(*draft.steps, _draft_step(best[0]))), True
        elif modifiers.empty and text:
            warnings.append(f'"{clause.text}" changed nothing; say a host, a port, a version or a step')
    if not changed:
        raise DraftError([f'"{request}" does not say what to change in deploymentintent/{base.name}'])
    return draft, warnings


def _asks_to_add(text: str) -> bool:
    return bool(re.search(r"\b(?:add|also|run|include|plus|deploy|configure|set up)\b", text, re.I))


def _without_step(draft: Draft, what: str, facts: RepoFacts) -> Draft | None:
    wanted = set(_words(what).split()) - {"the", "step", "steps", "playbook"}
    for step in draft.steps:
        entry = facts.entries.get(step.entry)
        words = set(_words(" ".join(filter(None, [step.name, entry.name if entry else ""]))).split())
        if wanted and wanted <= words | {_words(step.name or "")} and len(draft.steps) > 1:
            return replace(draft, steps=tuple(s for s in draft.steps if s is not step))
    return None


def draft_of(intent_name: str, spec: Mapping[str, Any], facts: RepoFacts) -> Draft:
    """An existing intent's spec as a draft, so a modification goes through the same gate."""
    steps = []
    for step in spec.get("steps", []):
        entry = _entry_for_step(step, facts)
        if entry is None:
            raise DraftError(
                [
                    f"deploymentintent/{intent_name} step {step.get('name')!r} runs something the catalog "
                    "does not know; edit its YAML instead"
                ]
            )
        steps.append(
            DraftStep(
                entry=entry.id,
                name=step.get("name"),
                vars=dict(step.get("vars") or {}),
                tags=tuple(step.get("tags") or ()),
            )
        )
    return Draft(
        name=intent_name,
        service=str(spec.get("service") or intent_name),
        steps=tuple(steps),
        limit=spec.get("limit"),
        vars=dict(spec.get("vars") or {}),
        depends_on=tuple(spec.get("dependsOn") or ()),
        approval=str(spec.get("approval") or "Manual"),
        priority=str(spec.get("priority") or "Normal"),
        resources=dict(spec.get("resources") or {}),
        inventory=spec.get("inventory"),
    )


def _entry_for_step(step: Mapping[str, Any], facts: RepoFacts) -> Entry | None:
    for entry in facts.entries.values():
        if step.get("playbook") and entry.playbook == step["playbook"] and not entry.run_tags:
            return entry
        if step.get("role") and entry.role == step["role"] and entry.playbook is None:
            return entry
    return None
