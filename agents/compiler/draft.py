"""Drafts, and the one gate every draft passes before it becomes an intent.

Both compilers — the offline rules and the LLM — produce :class:`Draft`\\ s:
plain data that names catalog entries by id, hosts and groups by name, and
vars as plain values. A draft never carries a path, a shell command or a
template. :func:`build_intents` is the gate (DESIGN §6: "LLM output is
untrusted input"): it turns entry ids into the playbooks and roles the
catalog discovered inside homelab-infra, refuses hosts the inventory does not
name, refuses vars that are not plain data or that Jinja would evaluate, and
validates the result against the DeploymentIntent schema. What fails comes
back as :class:`DraftError` with one sentence per problem, naming the field,
so it can be shown to a person or fed back to the model once.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from chiffon.agents.catalog.discovery import Entry, Inventory
from chiffon.resources import DeploymentIntent
from chiffon.resources.base import validate_dns1123_label

__all__ = [
    "REQUEST_ANNOTATION",
    "Draft",
    "DraftError",
    "DraftStep",
    "RepoFacts",
    "build_intents",
    "slug",
]

REQUEST_ANNOTATION = "chiffon.dev/request"
COMPILER_ANNOTATION = "chiffon.dev/compiled-by"
MAX_REQUEST_ANNOTATION = 1000

# Anything Jinja would evaluate, and Ansible's tag for "do not template": a var that
# carries one could run a lookup or a filter on the agent; drafts carry values only.
_TEMPLATED = re.compile(r"\{\{|\{%|\{#|!unsafe|lookup\s*\(|query\s*\(")
_VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}$")
_HOST_SEPARATORS = re.compile(r"[:,]")
_HOST_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
MAX_VAR_DEPTH = 8


class DraftError(ValueError):
    """A draft that cannot become an intent; ``problems`` says why, one sentence each."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


@dataclass(frozen=True)
class DraftStep:
    entry: str  # a catalog entry id, e.g. "playbook:ansible/playbooks/kuma-deployment.yml"
    name: str | None = None
    vars: Mapping[str, Any] = field(default_factory=dict)
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Draft:
    name: str
    service: str
    steps: tuple[DraftStep, ...]
    limit: str | None = None
    vars: Mapping[str, Any] = field(default_factory=dict)
    depends_on: tuple[str, ...] = ()
    approval: str = "Manual"
    priority: str = "Normal"
    resources: Mapping[str, Any] = field(default_factory=dict)
    inventory: str | None = None


@dataclass(frozen=True)
class RepoFacts:
    """What a draft may refer to: homelab-infra's runnable entries and inventories, and existing intents."""

    entries: Mapping[str, Entry]
    inventories: tuple[Inventory, ...] = ()
    intents: Mapping[str, DeploymentIntent] = field(default_factory=dict)
    inputs: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # entry id -> vars it takes
    wraps: Mapping[str, frozenset[str]] = field(default_factory=dict)  # playbook entry id -> roles it runs
    own_inputs: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # the entry's, not its roles'

    @property
    def host_details(self) -> dict[str, tuple[str, ...]]:
        """What the inventories say about each host (its address, "RTX 4090"...)."""
        details: dict[str, tuple[str, ...]] = {}
        for inventory in self.inventories:
            for host, values in inventory.details.items():
                details[host] = details.get(host, ()) + tuple(values)
        return details

    @property
    def host_names(self) -> frozenset[str]:
        return frozenset(
            name for inventory in self.inventories for name in (*inventory.hosts, *inventory.groups)
        )

    def inventory_for(self, limit: str | None) -> str | None:
        """The inventory that names every host of ``limit`` (the first inventory when no limit)."""
        if not self.inventories:
            return None
        wanted = set(host_pattern_names(limit)) if limit else set()
        for inventory in self.inventories:
            if wanted <= {*inventory.hosts, *inventory.groups}:
                return inventory.path
        return self.inventories[0].path


def slug(text: str, *, limit: int = 63) -> str:
    """``text`` as a DNS-1123 label: lower case, words joined by '-'."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    return "-".join(words)[:limit].strip("-")


def host_pattern_names(limit: str) -> list[str]:
    """The host and group names in an Ansible host pattern, without its operators."""
    return [part.lstrip("!&") for part in _HOST_SEPARATORS.split(limit) if part.lstrip("!&")]


# =========================================================================== the gate


def build_intents(
    drafts: Sequence[Draft], facts: RepoFacts, *, request: str, engine: str
) -> list[DeploymentIntent]:
    """The intents ``drafts`` describe, or DraftError listing every problem found."""
    problems: list[str] = []
    if not drafts:
        problems.append("the request produced no intent")
    names = {draft.name for draft in drafts}
    intents = []
    for index, draft in enumerate(drafts):
        where = f"intents[{index}]"
        found = list(_draft_problems(draft, facts, names, where))
        if found:
            problems.extend(found)
            continue
        try:
            intents.append(_intent(draft, facts, request=request, engine=engine))
        except ValidationError as error:
            problems.extend(_schema_problems(error, where))
    if problems:
        raise DraftError(problems)
    return intents


def _draft_problems(draft: Draft, facts: RepoFacts, names: set[str], where: str) -> Iterable[str]:
    for label, value in (("name", draft.name), ("service", draft.service)):
        try:
            validate_dns1123_label(value)
        except ValueError as error:
            yield f"{where}.{label}: {error}"
    if not draft.steps:
        yield f"{where}.steps: at least one step is needed"
    for number, step in enumerate(draft.steps):
        entry = facts.entries.get(step.entry)
        if entry is None or not entry.runnable:
            yield (
                f"{where}.steps[{number}].entry: {step.entry!r} is not a playbook or role of homelab-infra; "
                "choose one of the catalog entries offered"
            )
        yield from _vars_problems(step.vars, f"{where}.steps[{number}].vars")
    yield from _vars_problems(draft.vars, f"{where}.vars")
    if draft.limit:
        unknown = [name for name in host_pattern_names(draft.limit) if name not in facts.host_names]
        bad = [name for name in host_pattern_names(draft.limit) if not _HOST_NAME.match(name)]
        if bad or unknown:
            known = ", ".join(sorted(facts.host_names)) or "none"
            yield (
                f"{where}.limit: {', '.join(repr(n) for n in bad or unknown)} is not a host or group "
                f"of the inventory (known: {known})"
            )
    for dependency in draft.depends_on:
        if dependency not in names and dependency not in facts.intents:
            yield f"{where}.dependsOn: {dependency!r} is neither an existing intent nor one of this request's"


def _vars_problems(values: Mapping[str, Any], where: str) -> Iterable[str]:
    if not isinstance(values, Mapping):
        yield f"{where}: must be a mapping of variable names to values"
        return
    for key, value in values.items():
        if not isinstance(key, str) or not _VAR_NAME.match(key):
            yield f"{where}: {key!r} is not a variable name (letters, digits and '_')"
        else:
            yield from _value_problems(value, f"{where}.{key}", 0)


def _value_problems(value: Any, where: str, depth: int) -> Iterable[str]:
    if depth > MAX_VAR_DEPTH:
        yield f"{where}: nested deeper than {MAX_VAR_DEPTH} levels"
    elif isinstance(value, str):
        if _TEMPLATED.search(value):
            yield f"{where}: templates and lookups are not allowed in vars (found {value[:60]!r})"
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _value_problems(item, f"{where}[{index}]", depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                yield f"{where}: keys must be strings"
            else:
                yield from _value_problems(item, f"{where}.{key}", depth + 1)
    elif value is not None and not isinstance(value, (bool, int, float)):
        yield f"{where}: must be plain data (text, number, true/false, list or mapping)"


def _intent(draft: Draft, facts: RepoFacts, *, request: str, engine: str) -> DeploymentIntent:
    steps = [_step(step, facts.entries[step.entry], index) for index, step in enumerate(draft.steps)]
    spec: dict[str, Any] = {
        "service": draft.service,
        "steps": _unique_names(steps),
        "inventory": draft.inventory or facts.inventory_for(draft.limit),
        "approval": draft.approval,
        "priority": draft.priority,
    }
    optional = {
        "limit": draft.limit,
        "vars": dict(draft.vars),
        "dependsOn": list(draft.depends_on),
        "resources": dict(draft.resources),
    }
    spec.update({key: value for key, value in optional.items() if value})
    return DeploymentIntent.model_validate(
        {
            "apiVersion": "chiffon.dev/v1alpha1",
            "kind": "DeploymentIntent",
            "metadata": {
                "name": draft.name,
                "labels": {"service": draft.service},
                "annotations": {
                    REQUEST_ANNOTATION: request[:MAX_REQUEST_ANNOTATION],
                    COMPILER_ANNOTATION: engine,
                },
            },
            "spec": spec,
        }
    )


def _step(step: DraftStep, entry: Entry, index: int) -> dict[str, Any]:
    wire: dict[str, Any] = {"name": slug(step.name or entry.name) or f"step-{index + 1}"}
    if entry.playbook is not None:
        wire["playbook"] = entry.playbook
    else:
        wire["role"] = entry.role
    tags = list(dict.fromkeys((*entry.run_tags, *step.tags)))
    if tags:
        wire["tags"] = tags
    merged = {**dict(entry.run_vars), **dict(step.vars)}
    if merged:
        wire["vars"] = merged
    return wire


def _unique_names(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: dict[str, int] = {}
    for step in steps:
        base = step["name"]
        seen[base] = seen.get(base, 0) + 1
        if seen[base] > 1:
            step["name"] = f"{base[:60]}-{seen[base]}"
    return steps


def _schema_problems(error: ValidationError, where: str) -> list[str]:
    problems = []
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"])
        message = str(item["msg"]).removeprefix("Value error, ")
        problems.append(f"{where}.{location}: {message}")
    return problems
