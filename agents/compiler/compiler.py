"""Requests in words to DeploymentIntents: the LLM when one is configured, the rules otherwise.

:class:`Compiler` is what the chat API and ``chiffonctl chat`` call. It builds
the :class:`RepoFacts` from the catalog (runnable entries, inventories) and
the existing intents, then:

* with an LLM router: asks the model (see ``structured``), puts its answer
  through the gate, feeds the problems back once, and falls back to the
  offline rules when the model is unavailable or its answers are refused;
* without one: the offline rules (see ``rules``).

Either way the result went through :func:`build_intents`, so what a person
is asked to confirm only runs playbooks and roles of homelab-infra on hosts
of its inventory. A modification starts from the existing intent, keeps
what the compilers do not model (placement, drift detection, labels…), and
keeps the intent's name, so committing it makes a new generation.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from chiffon.agents.catalog.discovery import Entry
from chiffon.agents.compiler.draft import Draft, DraftError, RepoFacts, build_intents
from chiffon.agents.compiler.rules import compile_request, draft_of, modify_draft
from chiffon.agents.compiler.structured import feedback_message, menu_for, messages_for, parse_reply
from chiffon.resources import DeploymentIntent

if TYPE_CHECKING:
    from chiffon.agents.catalog.index import Catalog
    from chiffon.agents.llm import LlmRouter

__all__ = ["Compilation", "Compiler", "IntentChange"]

log = logging.getLogger(__name__)

Engine = Literal["offline", "llm"]
SEARCH_LIMIT = 8
MAX_REQUEST_CHARS = 4000


@dataclass(frozen=True)
class IntentChange:
    intent: DeploymentIntent
    action: Literal["create", "modify"]
    base: DeploymentIntent | None = None


@dataclass(frozen=True)
class Compilation:
    changes: list[IntentChange]
    engine: Engine
    reason: str
    model: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def intents(self) -> list[DeploymentIntent]:
        return [change.intent for change in self.changes]


class Compiler:
    def __init__(
        self, catalog: Catalog, *, router: LlmRouter | None = None, default_limit: str | None = None
    ) -> None:
        self.catalog = catalog
        self.router = router
        self.default_limit = default_limit

    def search(self, text: str) -> list[tuple[Entry, float]]:
        result = self.catalog.search(text, SEARCH_LIMIT, runnable_only=True)
        return [(match.entry, match.score) for match in result.matches]

    def facts(self, existing: Mapping[str, DeploymentIntent]) -> RepoFacts:
        entries = {entry.id: entry for entry in self.catalog.entries() if entry.runnable}
        inventories = tuple(self.catalog.discovery().inventories)
        root = self.catalog.root
        inputs = {key: entry_inputs(root, entry) for key, entry in entries.items()}
        wraps = {key: roles_run(root, entry) for key, entry in entries.items() if entry.playbook}
        own = {key: own_inputs(root, entry) for key, entry in entries.items()}
        return RepoFacts(
            entries=entries,
            inventories=inventories,
            intents=dict(existing),
            inputs=inputs,
            wraps=wraps,
            own_inputs=own,
        )

    async def compile(
        self,
        request: str,
        *,
        existing: Mapping[str, DeploymentIntent],
        modify: str | None = None,
        priority: str | None = None,
    ) -> Compilation:
        """The intents ``request`` asks for (or ``modify``'s new spec); DraftError when none can be made."""
        request = " ".join(request.split())
        if not request:
            raise DraftError(['message: say what you want, e.g. "deploy uptime kuma on unraid"'])
        if len(request) > MAX_REQUEST_CHARS:
            raise DraftError([f"message: longer than {MAX_REQUEST_CHARS} characters"])
        facts = await asyncio.to_thread(self.facts, existing)
        base = existing.get(modify) if modify else None
        if modify and base is None:
            raise DraftError([f"intent: deploymentintent/{modify} does not exist"])
        if self.router is not None:
            try:
                return await self._with_model(request, facts, base, priority)
            except DraftError as error:
                note = f"the model's answers were refused ({error}); compiled offline instead"
            except Exception as error:
                note = f"no model answered ({error}); compiled offline instead"
            log.warning("%s", note)
            compiled = await self._offline(request, facts, base, priority)
            return replace(compiled, warnings=[note, *compiled.warnings], reason=note)
        return await self._offline(request, facts, base, priority)

    async def _offline(
        self, request: str, facts: RepoFacts, base: DeploymentIntent | None, priority: str | None
    ) -> Compilation:
        try:
            return await self._by_rules(request, facts, base, priority)
        except DraftError:
            raise
        except Exception as error:  # a bug must not become a 500: say so, keep the trace in the log
            log.exception("the offline compiler failed on %r", request)
            raise DraftError(
                [f"the offline compiler could not read this request ({type(error).__name__}); rephrase it"]
            ) from error

    # -- offline -----------------------------------------------------------------------------

    async def _by_rules(
        self, request: str, facts: RepoFacts, base: DeploymentIntent | None, priority: str | None
    ) -> Compilation:
        if base is not None:
            current = draft_of(base.metadata.name, base.spec_wire(), facts)
            draft, warnings = await asyncio.to_thread(modify_draft, current, request, facts, self.search)
            drafts = [draft]
        else:
            drafts, warnings = await asyncio.to_thread(compile_request, request, facts, self.search)
        drafts, defaulted = self._defaults(drafts, priority, modifying=base is not None)
        changes = self._changes(build_intents(drafts, facts, request=request, engine="offline"), facts, base)
        reason = "no LLM is configured: catalog match and rules" if self.router is None else "offline"
        return Compilation(changes, "offline", reason, warnings=[*warnings, *defaulted])

    # -- with a model ------------------------------------------------------------------------

    async def _with_model(
        self, request: str, facts: RepoFacts, base: DeploymentIntent | None, priority: str | None
    ) -> Compilation:
        from chiffon.agents.llm import score_complexity

        assert self.router is not None
        menu = await asyncio.to_thread(menu_for, request, facts, self.search)
        current = draft_of(base.metadata.name, base.spec_wire(), facts) if base is not None else None
        messages = messages_for(request, menu, current=current)
        wanted_priority = priority or (base.spec.priority.value if base is not None else "Normal")
        complexity = score_complexity(request)
        problems: list[str] = []
        for attempt in range(2):  # the first answer, then one more with the problems fed back
            completion = await self.router.complete(
                messages, priority=wanted_priority, complexity=complexity, intent=modify_name(base)
            )
            try:
                drafts = parse_reply(completion.text)
                if base is not None:
                    drafts = [replace(drafts[0], name=base.metadata.name)]
                drafts, defaulted = self._defaults(drafts, priority, modifying=base is not None)
                intents = build_intents(drafts, facts, request=request, engine=f"llm:{completion.model}")
            except DraftError as error:
                problems = error.problems
                log.info("model answer %d refused: %s", attempt + 1, error)
                messages = [*messages, {"role": "assistant", "content": completion.text[:8000]}]
                messages.append(feedback_message(problems))
                continue
            return Compilation(
                self._changes(intents, facts, base),
                "llm",
                completion.reason,
                model=completion.model,
                warnings=defaulted,
            )
        raise DraftError(problems)

    # -- shared ------------------------------------------------------------------------------

    def _defaults(
        self, drafts: Sequence[Draft], priority: str | None, *, modifying: bool
    ) -> tuple[list[Draft], list[str]]:
        """Apply the server's defaults: the request's priority, and a limit when the request named no host."""
        warnings = []
        result = []
        for draft in drafts:
            if priority:
                draft = replace(draft, priority=priority)
            if not draft.limit and not modifying and self.default_limit:
                draft = replace(draft, limit=self.default_limit)
                warnings.append(
                    f"{draft.name}: no host named, so it targets {self.default_limit} "
                    '(the server\'s compiler_default_limit); say "on <host>" to choose'
                )
            result.append(draft)
        return result, warnings

    def _changes(
        self, intents: Sequence[DeploymentIntent], facts: RepoFacts, base: DeploymentIntent | None
    ) -> list[IntentChange]:
        changes = []
        for intent in intents:
            before = base if base is not None else facts.intents.get(intent.metadata.name)
            if before is None:
                changes.append(IntentChange(intent, "create"))
            else:
                changes.append(IntentChange(carry_over(before, intent), "modify", before))
        return changes


_DEFAULTED = re.compile(r"\{\{\s*([A-Za-z_]\w*)\s*\|\s*default\b")
_TOP_KEY = re.compile(r"^([A-Za-z_]\w*)\s*:", re.MULTILINE)
_ROLE_USE = re.compile(r"^\s*(?:-\s+)?(?:role|name):\s*['\"]?([A-Za-z0-9_.-]+)['\"]?\s*$", re.MULTILINE)


@functools.lru_cache(maxsize=2048)
def _inputs_of(path: Path, mtime_ns: int, defaults_file: bool) -> tuple[str, ...]:
    text = path.read_text(errors="replace")
    names = _TOP_KEY.findall(text) if defaults_file else _DEFAULTED.findall(text)
    return tuple(dict.fromkeys(names))


def _read_inputs(path: Path, defaults_file: bool) -> tuple[str, ...]:
    try:
        return _inputs_of(path, path.stat().st_mtime_ns, defaults_file)
    except OSError:
        return ()


@functools.lru_cache(maxsize=2048)
def _roles_named(path: Path, mtime_ns: int) -> frozenset[str]:
    return frozenset(_ROLE_USE.findall(path.read_text(errors="replace")))


def roles_run(root: Path, entry: Entry) -> frozenset[str]:
    """The roles a playbook entry names (``roles:`` and include/import_role)."""
    path = root / (entry.playbook or entry.path)
    try:
        return _roles_named(path, path.stat().st_mtime_ns)
    except OSError:
        return frozenset()


def _role_defaults(root: Path, playbook: Path) -> list[Path]:
    """Defaults files of the roles a playbook names, where Ansible would look for them."""
    try:
        names = _roles_named(playbook, playbook.stat().st_mtime_ns)
    except OSError:
        return []
    found = []
    for name in sorted(names):
        for base in (playbook.parent / "roles", playbook.parent.parent / "roles", root / "roles"):
            candidate = base / name / "defaults" / "main.yml"
            if candidate.is_file():
                found.append(candidate)
                break
    return found


def own_inputs(root: Path, entry: Entry) -> tuple[str, ...]:
    """The vars an entry takes itself: a playbook's ``{{ x | default(…) }}``, a role's defaults."""
    if entry.playbook is None:
        return _read_inputs(root / entry.path / "defaults" / "main.yml", True)
    return _read_inputs(root / entry.playbook, False)


def entry_inputs(root: Path, entry: Entry) -> tuple[str, ...]:
    """The vars a person may set for ``entry``: a playbook's ``{{ x | default(…) }}`` and its roles'
    defaults, or a role's defaults."""
    names = list(own_inputs(root, entry))
    if entry.playbook is None:
        return tuple(names)
    playbook = root / entry.playbook
    for defaults in _role_defaults(root, playbook):
        names.extend(_read_inputs(defaults, True))
    return tuple(dict.fromkeys(names))


def modify_name(base: DeploymentIntent | None) -> str | None:
    return base.metadata.name if base is not None else None


def carry_over(before: DeploymentIntent, after: DeploymentIntent) -> DeploymentIntent:
    """``after`` with what compilers do not model kept from ``before`` (placement, drift, labels…)."""
    old, new = before.spec_wire(), after.spec_wire()
    spec: dict[str, Any] = {**old, **{key: value for key, value in new.items() if key in _MODELLED}}
    for key in _MODELLED - new.keys():
        spec.pop(key, None)
    metadata = before.metadata.model_dump(by_alias=True, exclude_none=True, mode="json")
    for server_field in ("generation", "uid", "creationTimestamp", "resourceVersion"):
        metadata.pop(server_field, None)
    annotations = {**metadata.get("annotations", {}), **(after.metadata.annotations or {})}
    metadata["annotations"] = annotations
    return DeploymentIntent.model_validate(
        {"apiVersion": after.api_version, "kind": after.kind, "metadata": metadata, "spec": spec}
    )


# Spec fields a draft describes; the others are carried over from the intent being modified.
_MODELLED = frozenset(
    {"service", "steps", "inventory", "limit", "vars", "dependsOn", "approval", "priority", "resources"}
)
