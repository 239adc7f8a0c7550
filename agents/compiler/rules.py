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
from dataclasses import dataclass, replace
from typing import Any

from chiffon.agents.catalog.discovery import Entry
from chiffon.agents.compiler.draft import Draft, DraftError, DraftStep, RepoFacts, slug
from chiffon.agents.compiler.modifiers import Modifiers, apply_modifiers, read_modifiers, words_of

__all__ = ["MIN_SCORE", "Clause", "Search", "compile_request", "draft_of", "modify_draft", "split_clauses"]

#: The same floor as the planner's goal resolver: below it a match is a guess.
MIN_SCORE = 0.33

#: Search(text) -> runnable catalog entries with their scores, best first.
Search = Callable[[str], Sequence[tuple[Entry, float]]]

_ORDERED = (
    r"(?:,?\s*\band then\b|,?\s*\bthen\b|,?\s*\bafter that\b|,?\s*\bafterwards\b"
    r"|,?\s*\bonce (?:that|it)(?: is|'s) (?:done|up|ready|finished)\b|,?\s*\bnext\b)"
)
_PLAIN = r"(?:;|,\s*and\b|,|\band\b|\balso\b|\bplus\b|\bas well as\b)"
_SPLIT = re.compile(rf"\s*({_ORDERED}|{_PLAIN})\s*", re.IGNORECASE)
_FILLER = re.compile(
    r"^\s*(?:please|pls|can you|could you|would you|i want to|i'd like to|i want|i need|let's|lets"
    r"|go ahead and)\b[\s,]*",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Clause:
    text: str  # what is left for the catalog once the rules took their part
    ordered: bool  # joined to the previous clause by "then"


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


# =========================================================================== matching


@dataclass(frozen=True)
class _Matched:
    entry: Entry
    score: float
    clause: Clause
    modifiers: Modifiers
    verb: str | None = None
    candidates: tuple[tuple[Entry, float], ...] = ()


#: How much a clause must lean to an entry on its own before its context may pick it.
CONTEXT_MIN_SCORE = 0.2
#: A match this strong needs no other evidence; below it the clause must name what the entry is about.
STRONG_SCORE = 0.6
#: A clause with no verb that matches less than this is a detail of the clause before it.
OWN_CLAUSE_SCORE = 0.5
#: Entries of the same service this close to the best score are told apart by verb and kind.
CLOSE_MARGIN = 0.1
_VERBS = (
    (
        "deploy",
        re.compile(r"\b(?:deploy|install|set up|setup|spin up|bring up|start|host|get \w+ going)\b", re.I),
    ),
    ("configure", re.compile(r"\b(?:config\w*|add|register|sync|portals?)\b", re.I)),
    ("update", re.compile(r"\b(?:update|upgrade|patch)\w*\b", re.I)),
    ("backup", re.compile(r"\bback\s?up\w*\b", re.I)),
)
_ANY_VERB = re.compile(
    r"\b(?:deploy|install|set|setup|spin|bring|start|run|host|add|configure|update|upgrade|patch|back"
    r"|backup|take|do|make|get|put|roll|use|enable|create|sync|monitor|register|apply|rebuild|redeploy"
    r"|restart|refresh)\b",
    re.I,
)
# Verbs that never name what a clause is about (unlike "backup", "update" or "config").
_PURE_VERB = re.compile(
    r"(?:deploy|install|set|setup|spin|bring|start|run|host|add|configure|take|do|make|get|put|roll|use"
    r"|enable|create|sync|register|apply|rebuild|redeploy|restart|refresh|hook|keep|want|need)",
    re.I,
)
# Homelab words people use for what playbooks call otherwise; appended to the catalog query.
_SYNONYMS = (
    (
        re.compile(r"\bstatus (?:page|dashboard)\b|\buptime monitor\w*", re.I),
        "uptime kuma status page monitoring",
    ),
    (
        re.compile(r"\bfront door\b|\bhttps\b|\btls\b|\bcerts?\b|\bcertificates?\b", re.I),
        "reverse proxy caddy tls",
    ),
    (re.compile(r"\bcaddy\b|\bproxy\b", re.I), "reverse proxy caddy"),
    (
        re.compile(r"\bllms?\b|\blanguage models?\b|\bai models?\b|\blocal ai\b|\bchatbot\b", re.I),
        "ollama llm server",
    ),
    (
        re.compile(
            r"\bpatch\w*|\bapt\b|\bos updates?\b|\bsecurity updates?\b|\bpackages?\b"
            r"|\b(?:full|safe|dist)[ -]?upgrades?\b",
            re.I,
        ),
        "system update upgrade",
    ),
    (re.compile(r"\bback\s?ups?\b", re.I), "backup"),
    (
        re.compile(
            r"\bthe whole (?:homelab|lab|stack|setup)\b|\ball (?:the )?services\b|\bfull site\b"
            r"|^\W*(?:\w+\s+){0,2}everything\b(?!.*\bback\s?up)",
            re.I,
        ),
        "site whole homelab everything",
    ),
)
_NOISE = re.compile(
    r"\b(?:for|in|on|across|of)\s+(?:the|my|our)\s+(?:home\s?lab|network|house)\b|\b(?:my|our|the)\s+home\s?lab\b",
    re.I,
)
_STOP_WORDS = """
    a an the my our your it its this that these those some and or of for to on in at with up please get going
    i we you me us want need would like can could new all every each service services stuff thing things box
    boxes machine machines server servers homelab lab existing already have has is are be so just also too as
    now again there here them they what which home arpa
"""
_STOP = frozenset(_STOP_WORDS.split())


def _verb(text: str) -> str | None:
    return next((name for name, pattern in _VERBS if pattern.search(text)), None)


def _query(text: str) -> str:
    """What the catalog is asked: the clause without homelab noise, with the homelab synonyms it uses."""
    text = _NOISE.sub(" ", text)
    expansions = [expansion for pattern, expansion in _SYNONYMS if pattern.search(text)]
    return " ".join([text, *expansions]).strip()


def _stem(word: str) -> str:
    return word[:-1] if len(word) > 3 and word.endswith("s") else word


def _objectwords_of(text: str) -> set[str]:
    """The words naming *what* a clause is about: neither verbs nor filler."""
    words = {_stem(w) for w in re.findall(r"[a-z0-9]+", _NOISE.sub(" ", text.lower()))}
    return {w for w in words if w not in _STOP and not _PURE_VERB.fullmatch(w) and not w.isdigit()}


def _identity(entry: Entry) -> set[str]:
    """Words an entry answers to: its names, tags, description and images (not the repo text around it)."""
    text = " ".join(
        [entry.name, entry.service, *entry.aliases, *entry.tags, entry.description, *entry.images]
    )
    return {_stem(w) for w in re.findall(r"[a-z0-9]+", text.lower())}


def _about(entry: Entry, score: float, text: str) -> bool:
    """A weak match counts only if the clause names what the entry is about ("deploy nextcloud" ≠ backup)."""
    if score >= STRONG_SCORE:
        return True
    wanted = _objectwords_of(text)
    if not wanted:
        return True
    expanded = wanted | _objectwords_of(" ".join(e for p, e in _SYNONYMS if p.search(text)))
    return bool(expanded & _identity(entry))


def _choose(
    found: Sequence[tuple[Entry, float]], verb: str | None, text: str, takes: Callable[[Entry], bool] = bool
) -> tuple[Entry, float] | None:
    """The entry ``text`` asks for among ``found``: above the floor, about what it names, fitting its verb,
    taking the vars the clause sets ("kuma on port 3010" → the deployment), a playbook over its role."""
    usable = [(e, s) for e, s in found if s >= MIN_SCORE and _about(e, s, text)]
    if not usable:
        return None
    top, top_score = usable[0]
    close = [(e, s) for e, s in usable if s >= top_score - CLOSE_MARGIN and e.service == top.service]
    if verb is not None:
        fitting = [(e, s) for e, s in close if _step_name(e) == verb]
        close = fitting or close
    close = [(e, s) for e, s in close if takes(e)] or close
    playbooks = [(e, s) for e, s in close if e.playbook is not None]
    return (playbooks or close)[0]


def _best(search: Search, text: str, verb: str | None = None) -> tuple[Entry, float] | None:
    if not text.strip():
        return None
    return _choose(search(_query(text)), verb or _verb(text), text)


def _match_clauses(
    clauses: Sequence[Clause], facts: RepoFacts, search: Search
) -> tuple[list[_Matched], Modifiers, list[str]]:
    matched: list[_Matched] = []
    shared = Modifiers()
    unmatched: list[str] = []
    last_unmatched = False
    for clause in clauses:
        text, modifiers = read_modifiers(_unglue(clause.text, facts), facts)
        # Urgency and approval are said of the whole request ("urgent: back up, then upgrade").
        shared.merge(Modifiers(approval=modifiers.approval, priority=modifiers.priority))
        modifiers.approval = modifiers.priority = None
        verbless = not _ANY_VERB.search(text)
        if not text and matched:
            # Only modifiers ("…, and the nas", ", auto-approve"): hosts join the clause before,
            # the rest applies to the whole request.
            matched[-1].modifiers.merge(Modifiers(hosts=modifiers.hosts))
            shared.merge(modifiers.without_hosts())
            continue
        if verbless and last_unmatched and unmatched:
            unmatched[-1] += f", {clause.text}"  # "deploy grafana and prometheus": still grafana's list
            continue
        verb = _verb(text) if not verbless else (matched[-1].verb if matched else None)
        found = tuple(search(_query(text))) if text.strip() else ()
        best = _choose(found, verb, text, _takes(modifiers, facts)) if found else None
        weak = (best is None and not modifiers.empty) or (best is not None and best[1] < OWN_CLAUSE_SCORE)
        if matched and text and verbless and weak:
            matched[-1].modifiers.merge(modifiers)  # "… and config on the infra boxes": a detail
            continue
        if best is None and matched and text:
            best = _in_context(search, text, matched[-1].entry.service)
            if best is not None and _already_run(best[0], matched, facts):
                matched[-1].modifiers.merge(modifiers)  # says more about a step already there
                continue
        if not modifiers.hosts and clause.ordered and matched:
            modifiers.hosts = list(matched[-1].modifiers.hosts)  # "back up unraid, after that upgrade it"
        last_unmatched = best is None and bool(text)
        if best is None:
            shared.merge(modifiers)
            if text:
                unmatched.append(clause.text)
            continue
        matched.append(_Matched(best[0], best[1], clause, modifiers, verb, found))
    return _distinct(matched), shared, unmatched


def _already_run(entry: Entry, matched: Sequence[_Matched], facts: RepoFacts) -> bool:
    chosen = [item.entry for item in matched]
    return any(
        entry.id == other.id
        or (entry.role is not None and entry.role in facts.wraps.get(other.id, frozenset()))
        or (other.role is not None and other.role in facts.wraps.get(entry.id, frozenset()))
        for other in chosen
    )


def _takes(modifiers: Modifiers, facts: RepoFacts) -> Callable[[Entry], bool]:
    """Whether an entry itself (not a role it uses) takes every var the clause sets a value for."""
    kinds = [kind for kind, value in (("port", modifiers.port), ("version", modifiers.version)) if value]

    def takes(entry: Entry) -> bool:
        own = facts.own_inputs.get(entry.id, ())
        return all(any(name == kind or name.endswith(f"_{kind}") for name in own) for kind in kinds)

    return takes


def _unglue(text: str, facts: RepoFacts) -> str:
    """ "uptimekuma" → "uptime kuma": service names people type without their hyphen."""
    for entry in facts.entries.values():
        for name in (entry.service, entry.name):
            glued = name.replace("-", "").replace("_", "")
            if glued != name and len(glued) > 4:
                text = re.sub(rf"\b{re.escape(glued)}\b", words_of(name), text, flags=re.I)
    return text


def _distinct(matched: list[_Matched]) -> list[_Matched]:
    """Two clauses of one service that chose the same entry: the one whose verb does not fit takes the
    next close entry of that service ("monitor with uptime kuma and add the portals")."""
    result = list(matched)
    for index, item in enumerate(result):
        twins = [other for other in result if other is not item and other.entry.id == item.entry.id]
        if not twins or (item.verb is not None and _step_name(item.entry) == item.verb):
            continue
        taken = {other.entry.id for other in result}
        alternatives = [
            (e, s)
            for e, s in item.candidates
            if e.service == item.entry.service
            and e.id not in taken
            and s >= item.score - CLOSE_MARGIN
            and e.runnable
        ]
        alternatives.sort(key=lambda pair: (pair[0].playbook is None, -pair[1]))
        if alternatives:
            result[index] = replace(item, entry=alternatives[0][0], score=alternatives[0][1])
    return result


def _in_context(search: Search, text: str, service: str) -> tuple[Entry, float] | None:
    """``text`` read as about ``service`` ("add the portals" after "deploy Kuma").

    Only an entry of that service counts, and only if the clause alone already
    leaned towards it: "and bake a cake" must not become a Kuma step.
    """
    best = _best(search, f"{service.replace('-', ' ')} {text}")
    if best is None or best[0].service != service:
        return None
    alone = {entry.id: score for entry, score in search(_query(text))}
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
    hosted = [item for item in matched if item.modifiers.hosts]
    if len(hosted) == 1 and hosted[0] is matched[-1] and not shared.hosts:
        # Hosts said once, at the end, apply to every service before them ("kuma and the proxy on unraid").
        drafts = [d if d.limit else replace(d, limit=":".join(hosted[0].modifiers.hosts)) for d in drafts]
    drafts = [_finish(draft, shared, facts) for draft in drafts]
    return drafts, warnings


def _new_draft(service: str, item: _Matched, depends_on: tuple[str, ...], facts: RepoFacts) -> Draft:
    draft = Draft(name=service, service=service, steps=(_draft_step(item.entry),), depends_on=depends_on)
    return apply_modifiers(draft, item.modifiers, (item.entry,), facts)


def _with_step(draft: Draft, item: _Matched, facts: RepoFacts) -> Draft:
    if all(step.entry != item.entry.id for step in draft.steps) and not _wrapped(item.entry, draft, facts):
        draft = replace(draft, steps=(*draft.steps, _draft_step(item.entry)))
    return apply_modifiers(draft, item.modifiers, _entries_of(draft, facts), facts)


def _wrapped(entry: Entry, draft: Draft, facts: RepoFacts) -> bool:
    """A role a playbook of the draft already runs, or a playbook running a role the draft runs."""
    for step in draft.steps:
        if entry.role is not None and entry.role in facts.wraps.get(step.entry, frozenset()):
            return True
        other = facts.entries.get(step.entry)
        if other is not None and other.role is not None and other.role in facts.wraps.get(entry.id, ()):
            return True
    return False


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


def _finish(draft: Draft, shared: Modifiers, facts: RepoFacts) -> Draft:
    """Modifiers said apart from any service ("…, on unraid") apply to every draft."""
    draft = apply_modifiers(draft, shared, _entries_of(draft, facts), facts)
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
    said = Modifiers()  # gathered over every clause: "infra and the desktops" is one limit
    for clause in split_clauses(request):
        removal = _REMOVE.search(clause.text)
        if removal is not None:
            kept = _without_step(draft, removal.group(1), facts)
            if kept is not None:
                draft, changed = kept, True
                continue
        text, modifiers = read_modifiers(clause.text, facts)
        said.merge(modifiers)
        best = _step_to_add(search, text, draft) if _asks_to_add(text) else None
        if best is not None and all(step.entry != best[0].id for step in draft.steps):
            draft, changed = replace(draft, steps=(*draft.steps, _draft_step(best[0]))), True
        elif modifiers.empty and text:
            warnings.append(f'"{clause.text}" changed nothing; say a host, a port, a version or a step')
    modified = apply_modifiers(draft, said, _entries_of(draft, facts), facts)
    modified = replace(modified, depends_on=tuple(d for d in modified.depends_on if d != base.name))
    if modified != draft:
        draft, changed = modified, True
    if not changed:
        raise DraftError([f'"{request}" does not say what to change in deploymentintent/{base.name}'])
    return draft, warnings


def _step_to_add(search: Search, text: str, draft: Draft) -> tuple[Entry, float] | None:
    """The entry a "add a step …" clause names: on its own first, then read as about the service."""
    taken = {step.entry for step in draft.steps}
    for query in (text, f"{draft.service.replace('-', ' ')} {text}"):
        best = _best(search, query)
        if best is not None and best[0].id not in taken:
            return best
    return None


def _asks_to_add(text: str) -> bool:
    return bool(re.search(r"\b(?:add|also|run|include|plus|deploy|configure|set up)\b", text, re.I))


def _without_step(draft: Draft, what: str, facts: RepoFacts) -> Draft | None:
    wanted = set(words_of(what).split()) - {"the", "step", "steps", "playbook"}
    for step in draft.steps:
        entry = facts.entries.get(step.entry)
        words = set(words_of(" ".join(filter(None, [step.name, entry.name if entry else ""]))).split())
        if wanted and wanted <= words | {words_of(step.name or "")} and len(draft.steps) > 1:
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
