"""The planner: turns a DeploymentIntent into a Plan whose digest an approval binds to (DESIGN §2).

A plan answers "what exactly will run if this is approved?". For every step
the planner

1. **resolves** the playbook or role inside the homelab-infra checkout. A path
   that is missing gets ``PlaybookNotFound`` with a "did you mean"; a symlink
   that leads out of the repo gets ``InvalidSpec``, because the repo would be
   vouching for content it does not hold. A step naming only a ``goal`` is
   resolved through a :class:`GoalResolver` (the playbook catalog, wired in by
   the composition root): the chosen playbook or role, with its tags and vars,
   then counts like one the step named, and the plan records the choice, its
   score and the runner-up (``PlannedStep.catalog``). Without a resolver, or
   without a match, such a step is ``PlaybookNotFound``;
2. **hashes its content**: the playbook and every file it pulls in, found by
   reading the YAML (``import_playbook``, ``roles:``, ``include_role`` /
   ``import_role``, ``include_tasks`` / ``import_tasks``, ``vars_files``,
   ``include_vars``, ``template``/``copy`` sources), every file of every role
   and of its ``meta/main.yml`` dependencies, ``group_vars``/``host_vars``
   beside the playbook, and ``ansible.cfg``. Paths enter the hash relative to
   the repo, so two checkouts at different places hash the same. References
   that Ansible resolves at run time (Jinja in a name), roles of collections
   installed outside the repo, and absolute paths outside it are not repo
   content and are left out;
3. **checks the syntax** with ``ansible-playbook --syntax-check`` (a role step
   through a throw-away wrapper playbook), cached by content hash, so a broken
   playbook is ``LintFailed`` at plan time rather than at 3 a.m.;
4. **digests** what decides the run (:func:`plan_digest`), **assesses risk**
   (:func:`assess_risk`) and **estimates the duration** from past runs
   (:func:`estimate_duration`).

The decisions (digest, risk, estimate, what a YAML file pulls in) are pure
module-level functions tested with tables; the filesystem and the subprocess
stay in :class:`Planner`.

Re-planning must be cheap: the controller re-plans every intent on every
resync. File hashes are cached by (path, mtime, ctime, size, inode) and what a
YAML file pulls in is cached by its content hash, so planning an unchanged
intent costs a ``stat`` per file and no YAML parsing; syntax checks are cached
by content hash. A file modified in the last two seconds is never cached: its
timestamp could still be shared with the next write (git's "racy clean"
problem), and re-reading a fresh file is cheap.
"""

# Path walking uses os.path on str, not pathlib: re-planning an unchanged intent is mostly path
# arithmetic, and pathlib's parsing cost five times the stat calls it wraps (see _Collector).
# ruff: noqa: PTH110, PTH112, PTH113, PTH116, PTH118, PTH120

from __future__ import annotations

import asyncio
import configparser
import difflib
import hashlib
import json
import os
import re
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any, Generic, Protocol, TypeVar

from chiffon import ansible_cli
from chiffon.resources.ansible import BLOCK_SECTIONS, PLAY_TASK_SECTIONS, is_module_key
from chiffon.resources.conditions import Reason
from chiffon.resources.intent import DeploymentIntent, Step
from chiffon.resources.plan import CatalogChoice, Plan, PlannedStep, Risk
from chiffon.resources.yamlio import DEFAULT_LIMITS, ResourceError, load_yaml_documents

__all__ = [
    "DIGEST_SCHEME",
    "GoalMatch",
    "GoalResolver",
    "PlanError",
    "Planner",
    "YamlFacts",
    "assess_risk",
    "estimate_duration",
    "history_key",
    "intent_digest",
    "inventory_groups",
    "limit_risk",
    "needs_person",
    "plan_digest",
    "planned_steps",
    "read_facts",
    "risk_from_facts",
    "tasks_risk",
]

#: Names the digest's canonical form; bump it when the form changes, so old approvals lapse visibly.
DIGEST_SCHEME = "chiffon.dev/plan-digest/v1"
#: How many past runs the duration estimate averages.
HISTORY_WINDOW = 5
#: A step that pulls in more files than this is refused: no real playbook does.
MAX_FILES_PER_STEP = 10_000
#: Folders that are never part of what runs.
SKIP_DIRS = frozenset({".git", "__pycache__", ".ansible"})
DEFAULT_ROLES_DIRS = ("roles", "ansible/roles")
YAML_SUFFIXES = (".yml", ".yaml")
SYNTAX_TIMEOUT_SECONDS = 120.0
#: ansible-playbook processes one Planner runs at once; each takes ~1 s of CPU.
MAX_CONCURRENT_CHECKS = 4

_RACY_NS = 2_000_000_000
_HASH_CHUNK = 1 << 20
_CACHE_ENTRIES = 50_000
_NO_GOAL_MATCHING = (
    "names only a goal, and no playbook catalog is configured to match goals to playbooks "
    "(the controller runs with one); name a playbook or a role"
)


class PlanError(Exception):
    """The intent cannot be planned; ``reason`` is the ``Planned`` condition's reason.

    One of ``Reason.PLAYBOOK_NOT_FOUND``, ``Reason.INVALID_SPEC`` or
    ``Reason.LINT_FAILED``: each needs a person to change the intent or
    homelab-infra; retrying the same inputs gives the same answer.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


# =========================================================================== goals


class GoalMatch(Protocol):
    """What a goal resolved to: a playbook or a role, the tags and vars to run it with, how sure."""

    @property
    def playbook(self) -> str | None: ...
    @property
    def role(self) -> str | None: ...
    @property
    def tags(self) -> Sequence[str]: ...
    @property
    def vars(self) -> Mapping[str, Any]: ...
    @property
    def score(self) -> float: ...
    @property
    def confident(self) -> bool: ...
    @property
    def runner_up(self) -> str | None: ...
    @property
    def runner_up_score(self) -> float | None: ...


class GoalResolver(Protocol):
    """Matches a step's goal in words to what homelab-infra can run (the playbook catalog).

    ``resolve`` blocks (it may embed the goal); the planner calls it in a worker
    thread. It raises ``LookupError`` when nothing matches — the planner turns
    that into ``PlaybookNotFound`` with its message — and anything else when it
    could not answer (retried with backoff).
    """

    def resolve(self, goal: str) -> GoalMatch: ...


def needs_person(plan: Plan) -> bool:
    """Whether a person must approve ``plan`` whatever the policy: a goal matched with low confidence."""
    return any(step.catalog is not None and not step.catalog.confident for step in plan.steps)


def resolved_step(step: Step, match: GoalMatch) -> Step:
    """``step`` running what its goal matched: the match's tags first, the step's vars winning."""
    wire = step.model_dump(mode="json", by_alias=True, exclude_none=True)
    wire.update(
        playbook=match.playbook,
        role=match.role,
        tags=list(dict.fromkeys([*match.tags, *step.tags])),
        vars={**dict(match.vars), **step.vars},
    )
    return Step.model_validate({key: value for key, value in wire.items() if value is not None})


# =========================================================================== pure: the digest


def plan_digest(
    steps: Sequence[PlannedStep],
    *,
    shared_vars: Mapping[str, Any],
    inventory: str | None,
    inventory_hash: str,
    limit: str | None,
) -> str:
    """sha256 (hex) over the canonical JSON of everything that decides what will run.

    In: each step's name, playbook or role, content hash, vars, tags and skip
    tags; the spec's shared vars; the inventory, its content hash; the limit.
    Out, on purpose: the git revisions, timestamps, labels, annotations, the
    approval policy, priority, resources and placement — a comment-only commit
    or switching ``approval: Auto`` must not ask for a new approval.
    Canonical JSON (sorted keys, no whitespace, ASCII) makes it the same in
    every process and on every machine.
    """
    document = {
        "scheme": DIGEST_SCHEME,
        "steps": [
            {
                "name": step.name,
                "playbook": step.playbook,
                "role": step.role,
                "contentHash": step.content_hash,
                "vars": step.vars,
                "tags": step.tags,
                "skipTags": step.skip_tags,
            }
            for step in steps
        ],
        "vars": dict(shared_vars),
        "inventory": inventory,
        "inventoryHash": inventory_hash,
        "limit": limit,
    }
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def planned_steps(
    intent: DeploymentIntent,
    content_hashes: Sequence[str],
    choices: Sequence[CatalogChoice | None] | None = None,
) -> list[PlannedStep]:
    """The plan's steps: each spec step with the content hash of what it runs, its own vars and tags.

    ``choices`` records, per step, how a goal was resolved through the catalog (None: named).
    """
    return [
        PlannedStep(
            name=step.name,
            playbook=step.playbook,
            role=step.role,
            content_hash=digest,
            vars=step.vars,
            tags=list(step.tags),
            skip_tags=list(step.skip_tags),
            catalog=choice,
        )
        for step, digest, choice in zip(
            intent.spec.steps, content_hashes, choices or [None] * len(content_hashes), strict=True
        )
    ]


def intent_digest(
    intent: DeploymentIntent, content_hashes: Sequence[str], *, inventory: str | None, inventory_hash: str
) -> str:
    """:func:`plan_digest` of an intent whose steps hash to ``content_hashes``.

    Only the spec's steps, vars and limit are read: labels, annotations, the
    approval policy, priority, drift settings, resources and dependencies can
    change without asking for a new approval.
    """
    return plan_digest(
        planned_steps(intent, content_hashes),
        shared_vars=intent.spec.vars,
        inventory=inventory,
        inventory_hash=inventory_hash,
        limit=intent.spec.limit,
    )


def content_hash(files: Mapping[str, str]) -> str:
    """sha256 over (repo-relative path, file sha256) pairs, sorted: a renamed or deleted file counts."""
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(f"{path}\0{files[path]}\n".encode())
    return digest.hexdigest()


# =========================================================================== pure: the duration estimate


def history_key(step: Step) -> str:
    """What past runs are filed under: the playbook path or the role name."""
    return step.playbook or step.role or step.name


def estimate_duration(keys: Sequence[str], history: Mapping[str, Sequence[float]]) -> float | None:
    """Sum over steps of the mean of each one's last ≤ 5 successful runs; None if any step never ran."""
    total = 0.0
    for key in keys:
        recent = list(history.get(key, ()))[-HISTORY_WINDOW:]
        if not recent:
            return None
        total += sum(recent) / len(recent)
    return total


# =========================================================================== pure: what a YAML file says

_PLAY_KEYS = frozenset({"hosts", "import_playbook", "roles", "tasks", "pre_tasks", "post_tasks"})
_SOURCE_MODULES = frozenset({"template", "copy", "script", "unarchive"})
# ruamel refuses tags outside the YAML core schema; Ansible's own two are harmless to blank out
# for discovery (same length, so line numbers in errors stay right). The hash uses the raw bytes.
_ANSIBLE_TAGS = re.compile(r"!(?:vault|unsafe)(?=\s)")
_TRUE_WORDS = frozenset({"true", "yes", "on", "1", "y"})


@dataclass(frozen=True)
class YamlFacts:
    """What one playbook or tasks file pulls in, and what its tasks do.

    References are as written (relative to the file, or names); the planner
    resolves them. ``modules`` holds short module names (``shell`` for
    ``ansible.builtin.shell``); ``become`` is True when any play, role entry
    or task asks for it, or leaves it to a template.
    """

    playbooks: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    task_files: tuple[str, ...] = ()
    vars_files: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    modules: frozenset[str] = frozenset()
    become: bool = False


@dataclass
class _FactsBuilder:
    playbooks: list[str] = field(default_factory=list)
    roles: list[str] = field(default_factory=list)
    task_files: list[str] = field(default_factory=list)
    vars_files: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    modules: set[str] = field(default_factory=set)
    become: bool = False

    def build(self) -> YamlFacts:
        return YamlFacts(
            playbooks=tuple(self.playbooks),
            roles=tuple(self.roles),
            task_files=tuple(self.task_files),
            vars_files=tuple(self.vars_files),
            sources=tuple(self.sources),
            modules=frozenset(self.modules),
            become=self.become,
        )


def read_facts(text: str | bytes, source: str) -> YamlFacts:
    """Parse a playbook or a tasks file; raises ResourceError (file, line) when it is not YAML we read.

    Both shapes are lists: items with ``hosts``/``import_playbook``/``roles``
    are plays, others are tasks. A mapping (vars, defaults) pulls nothing in.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    builder = _FactsBuilder()
    for document in load_yaml_documents(_ANSIBLE_TAGS.sub("      ", text), source):
        if isinstance(document.data, list):
            for item in document.data:
                if isinstance(item, dict):
                    (_read_play if _is_play(item) else _read_task)(item, builder)
    return builder.build()


def role_dependencies(text: str | bytes, source: str) -> tuple[str, ...]:
    """Role names listed under ``dependencies`` in a role's ``meta/main.yml``."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    names: list[str] = []
    for document in load_yaml_documents(_ANSIBLE_TAGS.sub("      ", text), source):
        if isinstance(document.data, dict):
            names.extend(_role_names(document.data.get("dependencies")))
    return tuple(names)


def _is_play(item: dict[Any, Any]) -> bool:
    return any(_short(key) in _PLAY_KEYS for key in item)


def _read_play(play: dict[Any, Any], into: _FactsBuilder) -> None:
    for key, value in play.items():
        if _short(key) == "import_playbook" and isinstance(value, str):
            into.playbooks.append(value.split()[0] if value.split() else value)
    into.become |= _truthy(play.get("become"))
    into.roles.extend(_role_names(play.get("roles")))
    for entry in _as_list(play.get("roles")):
        if isinstance(entry, dict):
            into.become |= _truthy(entry.get("become"))
    for entry in _as_list(play.get("vars_files")):
        # A nested list is "the first of these that exists": any of them may run.
        into.vars_files.extend(item for item in _as_list(entry) if isinstance(item, str))
    for section in PLAY_TASK_SECTIONS:
        for task in _as_list(play.get(section)):
            if isinstance(task, dict):
                _read_task(task, into)


def _read_task(task: dict[Any, Any], into: _FactsBuilder) -> None:
    into.become |= _truthy(task.get("become"))
    for section in BLOCK_SECTIONS:
        for inner in _as_list(task.get(section)):
            if isinstance(inner, dict):
                _read_task(inner, into)
    for key, value in task.items():
        if not is_module_key(key):
            if key in {"action", "local_action"}:
                _read_action(_action_module(value), value, into)
            continue
        _read_action(key, value, into)


def _action_module(value: Any) -> str:
    """The module of ``action: shell echo hi`` or ``action: {module: shell, ...}``."""
    if isinstance(value, dict):
        return str(value.get("module", ""))
    words = str(value).split()
    return words[0] if words else ""


def _read_action(module: str, value: Any, into: _FactsBuilder) -> None:
    short = _short(module)
    if not short:
        return
    into.modules.add(short)
    if short in {"include_role", "import_role"}:
        name = _arg(value, "name")
        if name:
            into.roles.append(name)
    elif short in {"include_tasks", "import_tasks"}:
        into.task_files.extend(_free_form_path(value, "file"))
    elif short == "include_vars":
        into.vars_files.extend(_free_form_path(value, "file"))
    elif short in _SOURCE_MODULES:
        into.sources.extend(_free_form_path(value, "src") if short != "script" else _script_path(value))


def _short(module: Any) -> str:
    """``ansible.builtin.shell`` → ``shell``; collections' modules keep their last name part too."""
    return str(module).rsplit(".", 1)[-1] if module else ""


def _arg(value: Any, key: str) -> str | None:
    """One argument of a module, given as a mapping or as ``key=value`` words."""
    if isinstance(value, dict):
        found = value.get(key)
        return found if isinstance(found, str) else None
    if isinstance(value, str):
        match = re.search(rf"(?:^|\s){re.escape(key)}=(\S+)", value)
        return match.group(1).strip("'\"") if match else None
    return None


def _free_form_path(value: Any, key: str) -> list[str]:
    """``include_tasks: x.yml``, ``include_tasks: {file: x.yml}`` or ``file=x.yml``."""
    found = _arg(value, key) or _arg(value, "_raw_params")
    if found:
        return [found]
    if isinstance(value, str) and "=" not in value and value.strip():
        return [value.strip()]
    return []


def _script_path(value: Any) -> list[str]:
    """``script: files/x.sh --flag`` or ``script: {cmd: x.sh}``: the script is the first word."""
    found = _arg(value, "cmd") or _arg(value, "_raw_params")
    if found is None and isinstance(value, str):
        found = next((word for word in value.split() if "=" not in word), None)
    words = found.split() if found else []
    return words[:1]


def _role_names(entries: Any) -> list[str]:
    names = []
    for entry in _as_list(entries):
        name = entry.get("role", entry.get("name")) if isinstance(entry, dict) else entry
        if isinstance(name, str) and name.strip():
            names.append(name.strip())
    return names


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _truthy(value: Any) -> bool:
    """``become``'s value; a Jinja expression counts as yes — the planner cannot know it is not."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value != 0
    if isinstance(value, str):
        return _is_templated(value) or value.strip().lower() in _TRUE_WORDS
    return False


def _is_templated(text: str) -> bool:
    return "{{" in text or "{%" in text


# =========================================================================== pure: risk

_RANK = {Risk.LOW: 0, Risk.MEDIUM: 1, Risk.HIGH: 2}
_EVERY_HOST = frozenset({"all", "*"})
_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
#: Run arbitrary commands: nothing can be said about what they change.
HIGH_RISK_MODULES = frozenset({"shell", "command", "raw", "script"})
#: Restart services, change packages or containers, reboot.
MEDIUM_RISK_MODULES = frozenset(
    {"service", "systemd", "systemd_service", "sysvinit", "apt", "dnf", "yum", "package", "reboot",
     "docker_container"}
)  # fmt: skip
_MEDIUM_RISK_PREFIXES = ("docker_compose",)
# Host pattern terms: names, wildcards, regexes (~), ranges in brackets; ':' and ',' separate them.
_PATTERN_TERM = re.compile(r"(?:[^:,\[]|\[[^\]]*\])+")


def _highest(risks: Iterable[Risk]) -> Risk:
    return max(risks, key=_RANK.__getitem__, default=Risk.LOW)


def limit_risk(limit: str | None, groups: Collection[str] | None) -> Risk:
    """How many hosts the limit reaches. ``groups`` are the inventory's groups, None when unknown.

    High: no limit, or ``all``/``*`` not narrowed by an ``&`` term. Medium: a
    group, several terms, a wildcard, regex or range, or a single name that
    might be a group (inventory unknown). Low: one host.
    """
    if limit is None or not limit.strip():
        return Risk.HIGH
    if limit in _LOCAL_HOSTS:
        return Risk.LOW
    terms = _PATTERN_TERM.findall(limit)
    narrowed = any(term.startswith("&") for term in terms)
    positive = [term for term in terms if not term.startswith(("!", "&"))]
    if any(term in _EVERY_HOST for term in positive) and not narrowed:
        return Risk.HIGH
    if len(positive) != 1:
        return Risk.MEDIUM
    (term,) = positive
    if term in _EVERY_HOST or any(mark in term for mark in "*?[~"):
        return Risk.MEDIUM
    if term in _LOCAL_HOSTS:
        return Risk.LOW
    if groups is None or term in groups or term == "ungrouped":
        return Risk.MEDIUM
    return Risk.LOW


def tasks_risk(facts: Iterable[YamlFacts]) -> Risk:
    """High for shell/command/raw/script or any ``become``; Medium for services and packages."""
    risk = Risk.LOW
    for fact in facts:
        if fact.become or fact.modules & HIGH_RISK_MODULES:
            return Risk.HIGH
        if fact.modules & MEDIUM_RISK_MODULES or any(
            m.startswith(_MEDIUM_RISK_PREFIXES) for m in fact.modules
        ):
            risk = Risk.MEDIUM
    return risk


def risk_from_facts(limit: str | None, facts: Iterable[YamlFacts], groups: Collection[str] | None) -> Risk:
    """The higher of :func:`limit_risk` and :func:`tasks_risk`."""
    return _highest([limit_risk(limit, groups), tasks_risk(facts)])


def assess_risk(
    intent: DeploymentIntent,
    playbook_texts: Mapping[str, str],
    *,
    inventory_groups: Collection[str] | None = None,
) -> Risk:
    """Low, Medium or High: how much could go wrong if this plan runs. The rule, highest wins:

    * **High** — no ``limit``, or a limit of ``all``/``*`` (every host); or any
      task uses ``shell``, ``command``, ``raw`` or ``script`` (short or FQCN);
      or ``become`` is true (or templated) on any play, role entry or task; or
      a file cannot be read (assume the worst).
    * **Medium** — the limit names a group, several hosts or a pattern; or a
      task touches services, packages or containers (``service``, ``systemd``,
      ``apt``, ``dnf``, ``yum``, ``package``, ``reboot``, ``docker_compose*``,
      ``docker_container``).
    * **Low** — otherwise: one host (``localhost``, say) and only tasks such as
      file, template, copy, uri, stat or debug.

    ``playbook_texts`` maps a path to the text of each playbook and tasks file
    that will run (role ``tasks/`` and ``handlers/`` included); ``inventory_groups``
    tells a group from a host, and when it is None a single unknown name counts
    as a group.
    """
    facts = []
    for source in sorted(playbook_texts):
        try:
            facts.append(read_facts(playbook_texts[source], source))
        except (ResourceError, UnicodeDecodeError):
            return Risk.HIGH
    return risk_from_facts(intent.spec.limit, facts, inventory_groups)


# =========================================================================== pure: inventory groups

_INI_SECTION = re.compile(r"^\s*\[([^\]:\s]+)(?::(?:children|vars))?\]\s*$", re.MULTILINE)


def inventory_groups(sources: Mapping[str, str]) -> frozenset[str] | None:
    """Group names declared by inventory files (YAML or INI); None when any file cannot be read."""
    groups: set[str] = {"all", "ungrouped"}
    for path in sorted(sources):
        text = sources[path]
        if not path.endswith((*YAML_SUFFIXES, ".json")):
            sections = _INI_SECTION.findall(text)
            if sections:
                groups.update(sections)
                continue
        try:
            documents = load_yaml_documents(text, path)
        except ResourceError:
            return None
        for document in documents:
            _yaml_groups(document.data, groups)
    return frozenset(groups)


def _yaml_groups(data: Any, into: set[str]) -> None:
    if not isinstance(data, dict):
        return
    for name, body in data.items():
        into.add(str(name))
        if isinstance(body, dict):
            _yaml_groups(body.get("children"), into)


# =========================================================================== impure: files and caches

K = TypeVar("K")
V = TypeVar("V")


class _BoundedCache(Generic[K, V]):
    """A dict with a size cap (oldest entries go first) that worker threads may share."""

    def __init__(self, limit: int = _CACHE_ENTRIES) -> None:
        self._entries: dict[K, V] = {}
        self._limit = limit
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            return self._entries.get(key)

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._entries.pop(key, None)
            self._entries[key] = value
            while len(self._entries) > self._limit:
                del self._entries[next(iter(self._entries))]


class _FileHasher:
    """sha256 of files, remembered by (path, mtime, ctime, size, inode) so unchanged files are not read."""

    def __init__(self) -> None:
        self._known: _BoundedCache[str, tuple[tuple[int, ...], str]] = _BoundedCache()

    def sha256(self, path: str, info: os.stat_result) -> str:
        key = path
        signature = (info.st_mtime_ns, info.st_ctime_ns, info.st_size, info.st_ino, info.st_dev)
        known = self._known.get(key)
        if known is not None and known[0] == signature:
            return known[1]
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(_HASH_CHUNK):
                digest.update(chunk)
        sha = digest.hexdigest()
        # Racy-clean guard: a write within the timestamp's granularity would keep this signature.
        if time.time_ns() - max(info.st_mtime_ns, info.st_ctime_ns) > _RACY_NS:
            self._known.put(key, (signature, sha))
        return sha


@dataclass(frozen=True)
class _AnsibleConfig:
    """What the planner needs from ``ansible.cfg``: where roles live (absolute), the default inventory."""

    roles_dirs: tuple[str, ...]
    inventory: tuple[str, ...]


@dataclass
class _Collected:
    """The files one step (or the inventory) pulls in, and what its YAML says."""

    files: dict[str, str] = field(default_factory=dict)  # repo-relative path -> sha256
    facts: list[YamlFacts] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)  # YAML we could not read, as messages


class _Collector:
    """Walks from one step's playbook or role to every file it pulls in, never leaving the repo.

    A reference that points outside the repo by its path (``/etc/x.yml``) is
    not repo content and is skipped; a path inside the repo that resolves
    outside (a symlink) is refused with ``InvalidSpec``.

    Paths are absolute, normalised ``str`` here rather than ``Path``: this is
    the warm path of every re-plan, and pathlib's parsing cost more than the
    ``stat`` calls it wraps. Only explicit references and symlinks are
    resolved with ``realpath``; the plain files and folders of a walked tree
    cannot lead out of a folder that was already checked.
    """

    def __init__(self, planner: Planner, where: str, realpaths: dict[str, str]) -> None:
        self.root = str(planner.root)
        self.config = planner._config()
        self.where = where
        self.out = _Collected()
        self._planner = planner
        self._prefix = self.root.rstrip(os.sep) + os.sep
        self._visited: set[str] = set()
        self._roles: set[str] = set()
        # Shared by the collectors of one plan: steps pull in the same roles and folders.
        self._realpaths = realpaths

    # -- paths --------------------------------------------------------------------------------

    def relative(self, path: str) -> str | None:
        """The repo-relative POSIX path of a normalised path, or None when it is outside the repo."""
        if path == self.root:
            return "."
        if not path.startswith(self._prefix):
            return None
        return path[len(self._prefix) :].replace(os.sep, "/")

    def checked(self, path: str) -> str:
        """The real path of a path inside the repo; InvalidSpec when a symlink leads out."""
        real = self._realpaths.get(path)
        if real is None:
            real = self._realpaths[path] = os.path.realpath(path)
        if real != self.root and not real.startswith(self._prefix):
            shown = self.relative(path) or path
            raise PlanError(
                Reason.INVALID_SPEC,
                f"{self.where}: {shown} resolves outside homelab-infra (to {real}); "
                "everything a plan runs must be in the repository",
            )
        return real

    def resolve_ref(self, ref: str, bases: Sequence[str]) -> str | None:
        """Where a reference written in a YAML file lies in the repo, or None (templated, absent, outside)."""
        if not ref or _is_templated(ref):
            return None
        for base in bases:
            candidate = os.path.normpath(os.path.join(base, ref))
            if self.relative(candidate) is not None and os.path.lexists(candidate):
                return candidate
        return None

    def shown(self, paths: Iterable[str]) -> str:
        return ", ".join(dict.fromkeys(self.relative(path) or path for path in paths))

    # -- files --------------------------------------------------------------------------------

    def add_file(self, path: str, info: os.stat_result | None = None) -> None:
        """Hash one file into the step. ``info`` comes from a tree walk that already vouched for it."""
        relative = self.relative(path)
        if relative is None or relative in self.out.files:
            return
        real = path
        if info is None:
            real = self.checked(path)
            try:
                info = os.stat(real)
            except FileNotFoundError:
                return  # a dangling symlink inside the repo: nothing to run
        if not stat.S_ISREG(info.st_mode):
            return  # fifos, sockets, devices: never Ansible content, and reading a fifo blocks
        if len(self.out.files) >= MAX_FILES_PER_STEP:
            raise PlanError(
                Reason.INVALID_SPEC, f"{self.where} pulls in more than {MAX_FILES_PER_STEP} files"
            )
        self.out.files[relative] = self._planner._hasher.sha256(real, info)

    def add_tree(self, top: str) -> None:
        """Every regular file below ``top``; symlinks inside the repo are followed, each folder once."""
        if self.relative(top) is None or not os.path.lexists(top):
            return
        if not os.path.isdir(self.checked(top)):
            self.add_file(top)
            return
        seen: set[tuple[int, int]] = set()
        stack = [top]
        while stack:
            directory = stack.pop()
            info = os.stat(directory)
            if (info.st_dev, info.st_ino) in seen:
                continue  # a symlink back to a folder already walked
            seen.add((info.st_dev, info.st_ino))
            with os.scandir(directory) as entries:
                ordered = sorted(entries, key=lambda item: item.name, reverse=True)
            for entry in ordered:
                self._add_entry(entry, stack)

    def _add_entry(self, entry: os.DirEntry[str], stack: list[str]) -> None:
        if entry.is_symlink():
            real = self.checked(entry.path)
            if os.path.isdir(real):
                if entry.name not in SKIP_DIRS:
                    stack.append(entry.path)
            else:
                self.add_file(entry.path)
        elif entry.is_dir(follow_symlinks=False):
            if entry.name not in SKIP_DIRS:
                stack.append(entry.path)
        elif entry.is_file(follow_symlinks=False):
            self.add_file(entry.path, entry.stat(follow_symlinks=False))

    def read_yaml(self, path: str, reader: Callable[[bytes, str], Any]) -> Any:
        """What ``reader`` makes of a YAML file already hashed; cached by content, errors recorded."""
        relative = self.relative(path)
        sha = self.out.files.get(relative) if relative else None
        if relative is None or sha is None:
            return None
        key = (reader.__name__, sha)
        cached = self._planner._facts.get(key)
        if cached is None:
            cached = _read_cached(Path(self.checked(path)), relative, reader)
            self._planner._facts.put(key, cached)
        if isinstance(cached, _Unreadable):
            self.out.unreadable.append(cached.message)
            return None
        return cached

    # -- what playbooks pull in ----------------------------------------------------------------

    def playbook(self, path: str) -> None:
        relative = self.relative(path)
        if relative is None or relative in self._visited:
            return
        self._visited.add(relative)
        self.add_file(path)
        folder = os.path.dirname(path)
        # Ansible loads group_vars/ and host_vars/ beside the playbook as well as beside the inventory.
        for vars_dir in ("group_vars", "host_vars"):
            self.add_tree(os.path.join(folder, vars_dir))
        facts = self.read_yaml(path, read_facts)
        if isinstance(facts, YamlFacts):
            self.follow(facts, [folder], playbook_dir=folder, source=relative)

    def tasks_file(self, path: str, playbook_dir: str) -> None:
        relative = self.relative(path)
        if relative is None or relative in self._visited:
            return
        self._visited.add(relative)
        self.add_file(path)
        facts = self.read_yaml(path, read_facts)
        if isinstance(facts, YamlFacts):
            bases = [os.path.dirname(path), playbook_dir]
            self.follow(facts, bases, playbook_dir=playbook_dir, source=relative)

    def follow(
        self, facts: YamlFacts, bases: Sequence[str], *, playbook_dir: str, source: str, in_role: bool = False
    ) -> None:
        """Pull in everything one file references; ``bases`` are where relative paths are tried.

        Template and copy sources of a role's tasks live in the role's own
        ``templates/`` and ``files/``, which are hashed whole already.
        """
        self.out.facts.append(facts)
        for ref in facts.playbooks:
            found = self.resolve_ref(ref, bases[:1])
            if found is not None:
                self.playbook(found)
        for name in facts.roles:
            self.role_reference(name, playbook_dir, source=source)
        for ref in facts.task_files:
            found = self.resolve_ref(ref, bases)
            if found is not None:
                self.tasks_file(found, playbook_dir)
        for ref in facts.vars_files:
            found = self.resolve_ref(ref, bases)
            if found is not None:
                self.add_file(found)
        if in_role:
            return
        source_dirs = [os.path.join(base, sub) for base in bases for sub in ("templates", "files", "")]
        for ref in facts.sources:
            found = self.resolve_ref(ref, source_dirs)
            if found is not None:
                self.add_file(found)

    # -- roles --------------------------------------------------------------------------------

    def find_role(self, name: str, search: Sequence[str], *, require_tasks: bool = False) -> str | None:
        """A role's folder: a path, a collection's role (``ns.coll.role``) or a name on the search path."""
        if _is_fqcn(name):
            candidates = [self.collection_role(name)]
        elif "/" in name or name.startswith("."):
            candidates = [os.path.normpath(os.path.join(base, name)) for base in (*search, self.root)]
        else:
            candidates = [os.path.join(base, name) for base in search]
        for candidate in candidates:
            if self.relative(candidate) is None or not os.path.lexists(candidate):
                continue
            if os.path.isdir(self.checked(candidate)) and (not require_tasks or _has_tasks(candidate)):
                return candidate
        return None

    def collection_role(self, name: str) -> str:
        namespace, collection, role = name.split(".", 2)
        return os.path.join(
            self.root, "collections", "ansible_collections", namespace, collection, "roles", role
        )

    def role_reference(self, name: str, playbook_dir: str, *, source: str, extra: Sequence[str] = ()) -> None:
        """A role a playbook or a role's meta names: found in the repo, or refused (unless installed)."""
        if _is_templated(name):
            return  # chosen at run time; the syntax check sees what Ansible can
        found = self.find_role(name, [*extra, *self.search_dirs(playbook_dir)])
        if found is not None:
            self.role(found, playbook_dir)
            return
        if _is_fqcn(name):
            return  # a role of an installed collection: versioned with the collection, not the repo
        searched = [os.path.join(playbook_dir, "roles"), *self.config.roles_dirs]
        raise PlanError(
            Reason.PLAYBOOK_NOT_FOUND,
            f"{self.where}: {source} uses role {name!r}, which is not in homelab-infra "
            f"(looked in {self.shown(searched)}){_role_suggestion(name, searched)}",
        )

    def role(self, role_dir: str, playbook_dir: str) -> None:
        """All of a role's files, the roles its tasks include, and its meta dependencies."""
        real = self.checked(role_dir)
        if real in self._roles:
            return
        self._roles.add(real)
        self.add_tree(role_dir)
        for section in ("tasks", "handlers"):
            section_dir = os.path.join(role_dir, section)
            for path in self._yaml_files(section_dir):
                relative = self.relative(path) or ""
                if relative in self._visited:
                    continue
                self._visited.add(relative)
                facts = self.read_yaml(path, read_facts)
                if isinstance(facts, YamlFacts):
                    bases = [os.path.dirname(path), section_dir]
                    self.follow(facts, bases, playbook_dir=playbook_dir, source=relative, in_role=True)
        for meta in ("main.yml", "main.yaml"):
            path = os.path.join(role_dir, "meta", meta)
            for name in self.read_yaml(path, role_dependencies) or ():
                extra = [os.path.dirname(role_dir)]  # dependencies are looked up beside the role too
                self.role_reference(name, playbook_dir, source=self.relative(path) or path, extra=extra)

    def _yaml_files(self, directory: str) -> list[str]:
        prefix = (self.relative(directory) or "") + "/"
        found = [rel for rel in self.out.files if rel.startswith(prefix) and rel.endswith(YAML_SUFFIXES)]
        return [os.path.join(self.root, rel) for rel in sorted(found)]

    def search_dirs(self, playbook_dir: str) -> list[str]:
        """Ansible's order: roles/ beside the playbook, the roles path, the playbook's own folder."""
        return [os.path.join(playbook_dir, "roles"), *self.config.roles_dirs, playbook_dir]


def _role_suggestion(name: str, search: Sequence[str]) -> str:
    """ "; did you mean 'x'?" for the role folder whose name is closest to ``name``."""
    names: set[str] = set()
    for base in search:
        if os.path.isdir(base):
            with os.scandir(base) as entries:
                names.update(entry.name for entry in entries if entry.is_dir())
    close = difflib.get_close_matches(name, sorted(names), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _has_tasks(role_dir: str) -> bool:
    return any(os.path.isfile(os.path.join(role_dir, "tasks", f"main{suffix}")) for suffix in YAML_SUFFIXES)


@dataclass(frozen=True)
class _Unreadable:
    message: str


def _read_cached(path: Path, relative: str, reader: Callable[[bytes, str], Any]) -> Any:
    """Run ``reader`` on a file; a file too big or not YAML we read becomes an _Unreadable."""
    try:
        if path.stat().st_size > DEFAULT_LIMITS.max_bytes:
            return _Unreadable(f"{relative}: larger than {DEFAULT_LIMITS.max_bytes} bytes")
        return reader(path.read_bytes(), relative)
    except ResourceError as error:
        return _Unreadable(str(error))
    except UnicodeDecodeError:
        return _Unreadable(f"{relative}: is not UTF-8 text")


def _is_fqcn(name: str) -> bool:
    return "/" not in name and name.count(".") >= 2


# =========================================================================== the planner


@dataclass(frozen=True)
class _StepContent:
    """One resolved step: what runs, its content hash, and how to syntax-check it."""

    step: Step
    role_dir: str | None
    collected: _Collected
    hash: str


@dataclass(frozen=True)
class _InventoryContent:
    """The inventory the steps run against: its label in the digest, its hash, its groups."""

    label: str | None
    argument: str | None  # what to pass to -i; None lets ansible.cfg decide
    hash: str
    groups: frozenset[str] | None


@dataclass(frozen=True)
class _Prepared:
    steps: list[_StepContent]
    inventory: _InventoryContent


#: Steps (playbook, role) and inventory: what decides which files a plan reads.
_PrepareKey = tuple[tuple[tuple[str | None, str | None], ...], str | None]


# What a syntax check's verdict depends on: the step's target, its content hash, the inventory's.
_SyntaxKey = tuple[str, str, str]


class Planner:
    """Plans intents against one homelab-infra checkout; keep one per checkout to share its caches.

    ``plan`` raises :class:`PlanError` for anything a person must fix, and
    ``ansible_cli.AnsibleCliError`` when Ansible could not give a verdict
    (missing, timed out) — that one is worth retrying.
    """

    def __init__(
        self, infra_root: Path, *, syntax_check: bool = True, goals: GoalResolver | None = None
    ) -> None:
        self.root = Path(os.path.realpath(infra_root))
        self.syntax_check = syntax_check
        self.goals = goals
        self._hasher = _FileHasher()
        self._facts: _BoundedCache[tuple[str, str], Any] = _BoundedCache()
        self._syntax: _BoundedCache[_SyntaxKey, ansible_cli.SyntaxCheckResult] = _BoundedCache()
        self._groups: _BoundedCache[str, frozenset[str] | None] = _BoundedCache(1_000)
        self._configs: _BoundedCache[str, _AnsibleConfig] = _BoundedCache(100)
        # One semaphore per event loop: tests and tools may drive one Planner from several loops.
        self._limits: dict[int, asyncio.Semaphore] = {}
        # Syntax checks under way, by event loop and cache key (see _check).
        self._checks_running: dict[tuple[int, _SyntaxKey], asyncio.Future[ansible_cli.SyntaxCheckResult]] = {}
        # File walks under way, by what they walk (see _prepared).
        self._walks: dict[_PrepareKey, asyncio.Future[_Prepared]] = {}

    async def plan(
        self,
        intent: DeploymentIntent,
        *,
        revision: str | None,
        infra_revision: str | None,
        history: Mapping[str, Sequence[float]],
        now: datetime,
    ) -> Plan:
        """The plan for ``intent`` as the checkout stands now, or PlanError saying what to fix."""
        intent, choices = await self._resolve_goals(intent)
        prepared = await self._prepared(intent)
        await self._lint(prepared)
        spec = intent.spec
        hashes = [content.hash for content in prepared.steps]
        inventory = prepared.inventory
        digest = intent_digest(intent, hashes, inventory=inventory.label, inventory_hash=inventory.hash)
        facts = [fact for content in prepared.steps for fact in content.collected.facts]
        return Plan(
            digest=digest,
            revision=revision,
            infra_revision=infra_revision,
            steps=planned_steps(intent, hashes, choices),
            inventory=spec.inventory,
            limit=spec.limit,
            risk=risk_from_facts(spec.limit, facts, inventory.groups),
            estimated_duration_seconds=estimate_duration([history_key(s) for s in spec.steps], history),
            created_at=now,
        )

    async def _resolve_goals(
        self, intent: DeploymentIntent
    ) -> tuple[DeploymentIntent, list[CatalogChoice | None]]:
        """``intent`` with every goal-only step resolved through the catalog, and how each was chosen."""
        steps = intent.spec.steps
        choices: list[CatalogChoice | None] = [None] * len(steps)
        if all(step.playbook or step.role for step in steps):
            return intent, choices
        resolved: list[Step] = []
        for index, step in enumerate(steps):
            if step.playbook or step.role or not step.goal:
                resolved.append(step)
                continue
            if self.goals is None:
                raise PlanError(Reason.PLAYBOOK_NOT_FOUND, f"step {step.name} {_NO_GOAL_MATCHING}")
            try:
                match = await asyncio.to_thread(self.goals.resolve, step.goal)
            except LookupError as error:
                raise PlanError(Reason.PLAYBOOK_NOT_FOUND, f"step {step.name}: {error}") from None
            if not (match.playbook or match.role):
                raise PlanError(
                    Reason.PLAYBOOK_NOT_FOUND, f"step {step.name}: the goal matched nothing Ansible can run"
                )
            try:
                resolved.append(resolved_step(step, match))
            except ValueError as error:
                message = f"step {step.name}: the catalog's match for its goal is not a valid step: {error}"
                raise PlanError(Reason.INVALID_SPEC, message) from None
            choices[index] = CatalogChoice(
                query=step.goal,
                score=match.score,
                confident=match.confident,
                runner_up=match.runner_up,
                runner_up_score=match.runner_up_score,
            )
        spec = intent.spec.model_copy(update={"steps": resolved})
        return intent.model_copy(update={"spec": spec}), choices

    async def _prepared(self, intent: DeploymentIntent) -> _Prepared:
        """The steps' files, resolved and hashed — one walk shared by the plans made meanwhile.

        Plans of intents whose steps run the same playbooks and roles against the
        same inventory, asked for while a walk is under way (a batch planning a
        thousand new intents), wait for that walk instead of each starting one.
        A plan asked for after it ended walks again, so an edit in homelab-infra
        is seen by the next plan. Failures are never shared: their messages name
        the intent's own steps.
        """
        steps = intent.spec.steps
        key: _PrepareKey = (tuple((step.playbook, step.role) for step in steps), intent.spec.inventory)
        walk = self._walks.get(key)
        if walk is None:
            # Reading and hashing files is blocking work; keep it off the event loop.
            walk = asyncio.ensure_future(asyncio.to_thread(self._prepare, intent))
            self._walks[key] = walk
            walk.add_done_callback(lambda done: self._walk_ended(key, done))
        try:
            shared = await asyncio.shield(walk)
        except PlanError:
            return await asyncio.to_thread(self._prepare, intent)
        contents = [replace(content, step=step) for content, step in zip(shared.steps, steps, strict=True)]
        return _Prepared(steps=contents, inventory=shared.inventory)

    def _walk_ended(self, key: _PrepareKey, walk: asyncio.Future[_Prepared]) -> None:
        self._walks.pop(key, None)
        if not walk.cancelled():
            walk.exception()  # seen by whoever awaited it; retrieved here so none is "never retrieved"

    # -- resolving and hashing (runs in a worker thread) ----------------------------------------

    def _prepare(self, intent: DeploymentIntent) -> _Prepared:
        realpaths: dict[str, str] = {}
        inventory = self._inventory(intent.spec.inventory, realpaths)
        steps = [self._step(step, realpaths) for step in intent.spec.steps]
        return _Prepared(steps=steps, inventory=inventory)

    def _step(self, step: Step, realpaths: dict[str, str]) -> _StepContent:
        where = f"step {step.name}"
        collector = _Collector(self, where, realpaths)
        # ansible.cfg changes how every playbook runs (roles path, become defaults, callbacks).
        collector.add_file(os.path.join(collector.root, "ansible.cfg"))
        role_dir: str | None = None
        if step.playbook:
            collector.playbook(self._step_playbook(step.playbook, collector))
        elif step.role:
            role_dir = self._step_role(step.role, collector)
            collector.role(role_dir, collector.root)
        else:
            raise PlanError(Reason.PLAYBOOK_NOT_FOUND, f"{where} {_NO_GOAL_MATCHING}")
        collected = collector.out
        return _StepContent(step, role_dir, collected, content_hash(collected.files))

    def _step_playbook(self, playbook: str, collector: _Collector) -> str:
        """The playbook's path: inside the repo, a regular file, not a symlink leading out."""
        where = collector.where
        path = os.path.normpath(os.path.join(collector.root, playbook))
        if collector.relative(path) is None:
            raise PlanError(Reason.INVALID_SPEC, f"{where}: playbook {playbook} escapes homelab-infra")
        # lexists first: a dangling symlink that points out of the repo is refused, not "missing".
        if not os.path.lexists(path) or not os.path.exists(collector.checked(path)):
            suggestion = self._file_suggestion(playbook)
            message = f"{where}: playbook {playbook} does not exist in homelab-infra{suggestion}"
            raise PlanError(Reason.PLAYBOOK_NOT_FOUND, message)
        if not os.path.isfile(collector.checked(path)):
            raise PlanError(Reason.INVALID_SPEC, f"{where}: playbook {playbook} is not a regular file")
        return path

    def _step_role(self, name: str, collector: _Collector) -> str:
        """A role step's folder: on the roles path (or in a repo collection) with tasks/main.yml."""
        roles_dirs = list(self._config().roles_dirs)
        found = collector.find_role(name, roles_dirs, require_tasks=True)
        if found is not None:
            return found
        searched = [collector.collection_role(name)] if _is_fqcn(name) else roles_dirs
        raise PlanError(
            Reason.PLAYBOOK_NOT_FOUND,
            f"{collector.where}: role {name!r} is not in homelab-infra "
            f"(looked in {collector.shown(searched)} for a folder with tasks/main.yml)"
            f"{_role_suggestion(name, roles_dirs)}",
        )

    def _inventory(self, inventory: str | None, realpaths: dict[str, str]) -> _InventoryContent:
        """The inventory's files (plus group_vars/host_vars beside a file), their hash and groups."""
        collector = _Collector(self, "spec.inventory", realpaths)
        if inventory is not None:
            path = os.path.normpath(os.path.join(collector.root, inventory))
            if collector.relative(path) is None or not os.path.lexists(path):
                suggestion = self._file_suggestion(inventory)
                message = f"spec.inventory: {inventory} does not exist in homelab-infra{suggestion}"
                raise PlanError(Reason.INVALID_SPEC, message)
            collector.checked(path)
            sources = [path]
        else:
            # No inventory in the spec: ansible.cfg's default is what the run will use.
            sources = [
                os.path.normpath(os.path.join(collector.root, item)) for item in self._config().inventory
            ]
        inputs: list[str] = []
        for source in sources:
            if collector.relative(source) is None or not os.path.lexists(source):
                continue
            before = set(collector.out.files)
            collector.add_tree(source)
            inputs.extend(sorted(set(collector.out.files) - before))
            if not os.path.isdir(collector.checked(source)):
                for vars_dir in ("group_vars", "host_vars"):
                    collector.add_tree(os.path.join(os.path.dirname(source), vars_dir))
        digest = content_hash(collector.out.files)
        label = inventory if inventory is not None else (",".join(self._config().inventory) or None)
        return _InventoryContent(label, inventory, digest, self._inventory_groups(digest, inputs))

    def _inventory_groups(self, digest: str, inputs: Sequence[str]) -> frozenset[str] | None:
        """Groups of the inventory files (not group_vars), remembered per inventory content."""
        cached = self._groups.get(digest)
        if cached is not None:
            return cached
        texts: dict[str, str] = {}
        for relative in inputs:
            parts = PurePosixPath(relative).parts
            if "group_vars" in parts or "host_vars" in parts:
                continue
            try:
                texts[relative] = (self.root / relative).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                return None
        groups = inventory_groups(texts)
        if groups is not None:
            self._groups.put(digest, groups)
        return groups

    def _config(self) -> _AnsibleConfig:
        """``roles_path`` and ``inventory`` from ansible.cfg, re-read only when the file changes."""
        path = self.root / "ansible.cfg"
        try:
            info = path.stat()
        except FileNotFoundError:
            return _AnsibleConfig(self._default_roles_dirs(), ())
        sha = self._hasher.sha256(str(path), info)
        cached = self._configs.get(sha)
        if cached is None:
            cached = self._read_config(path)
            self._configs.put(sha, cached)
        return cached

    def _read_config(self, path: Path) -> _AnsibleConfig:
        parser = configparser.ConfigParser(interpolation=None, strict=False, inline_comment_prefixes=(";",))
        try:
            parser.read_string(path.read_text(encoding="utf-8"), str(path))
        except (configparser.Error, UnicodeDecodeError) as error:
            raise PlanError(Reason.INVALID_SPEC, f"ansible.cfg cannot be read: {error}") from None
        roles = parser.get("defaults", "roles_path", fallback="").strip()
        inventory = parser.get("defaults", "inventory", fallback="").strip()
        # Roles folders outside the repo are not searched: what they hold could not be hashed.
        roles_dirs = [self._inside(item) for item in roles.split(os.pathsep) if item.strip()]
        return _AnsibleConfig(
            roles_dirs=tuple(d for d in roles_dirs if d is not None) if roles else self._default_roles_dirs(),
            inventory=tuple(item.strip() for item in inventory.split(",") if item.strip()),
        )

    def _inside(self, item: str) -> str | None:
        """A path from ansible.cfg (relative to the repo) when it stays inside the repo."""
        path = os.path.normpath(self.root / Path(item.strip()).expanduser())
        return path if Path(path).is_relative_to(self.root) else None

    def _default_roles_dirs(self) -> tuple[str, ...]:
        return tuple(str(self.root / folder) for folder in DEFAULT_ROLES_DIRS)

    # -- suggestions ----------------------------------------------------------------------------

    def _file_suggestion(self, wanted: str) -> str:
        """ "; did you mean X?" for the repo file whose path or name is closest to ``wanted``."""
        candidates = list(_repo_files(self.root, (*YAML_SUFFIXES, ".ini", ".cfg", "")))
        close = difflib.get_close_matches(wanted, candidates, n=1, cutoff=0.6)
        if not close:
            by_name = {PurePosixPath(c).name: c for c in sorted(candidates, reverse=True)}
            names = difflib.get_close_matches(PurePosixPath(wanted).name, list(by_name), n=1, cutoff=0.6)
            close = [by_name[names[0]]] if names else []
        return f"; did you mean {close[0]}?" if close else ""

    # -- syntax checks (async, cached by content) --------------------------------------------------

    async def _lint(self, prepared: _Prepared) -> None:
        """Syntax-check every step at once; report the first failing step, in step order."""
        verdicts: list[ansible_cli.SyntaxCheckResult | BaseException | None] = [None] * len(prepared.steps)
        if self.syntax_check:
            # return_exceptions: wait for every check, so none is left running when one fails.
            checks = (self._check(content, prepared.inventory) for content in prepared.steps)
            verdicts = list(await asyncio.gather(*checks, return_exceptions=True))
        for verdict in verdicts:
            if isinstance(verdict, BaseException):
                raise verdict
        for content, verdict in zip(prepared.steps, verdicts, strict=True):
            if isinstance(verdict, ansible_cli.SyntaxCheckResult) and not verdict.ok:
                raise PlanError(Reason.LINT_FAILED, f"step {content.step.name}: {verdict.message}")
            if content.collected.unreadable:
                raise PlanError(
                    Reason.LINT_FAILED, f"step {content.step.name}: {content.collected.unreadable[0]}"
                )

    async def _check(
        self, content: _StepContent, inventory: _InventoryContent
    ) -> ansible_cli.SyntaxCheckResult:
        target = content.step.playbook or f"role:{content.step.role}"
        key = (target, content.hash, inventory.hash)
        cached = self._syntax.get(key)
        if cached is not None:
            return cached
        # Single flight: intents planned together mostly share their playbooks, and a
        # controller that has just started (its cache empty) used to run one check per
        # intent, MAX_CONCURRENT_CHECKS at a time, for the same content: seconds each.
        loop_id = id(asyncio.get_running_loop())
        running = self._checks_running.get((loop_id, key))
        if running is None:
            running = asyncio.ensure_future(self._run_check(content, inventory))
            self._checks_running[(loop_id, key)] = running
            running.add_done_callback(lambda _: self._checks_running.pop((loop_id, key), None))
        verdict = await asyncio.shield(running)
        self._syntax.put(key, verdict)
        return verdict

    async def _run_check(
        self, content: _StepContent, inventory: _InventoryContent
    ) -> ansible_cli.SyntaxCheckResult:
        async with self._limiter():
            if content.role_dir is not None and content.step.role:
                return await self._check_role(content.step.role, content.role_dir, inventory)
            assert content.step.playbook is not None
            return await ansible_cli.syntax_check(
                self.root,
                content.step.playbook,
                inventory=inventory.argument,
                timeout=SYNTAX_TIMEOUT_SECONDS,
            )

    async def _check_role(
        self, role: str, role_dir: str, inventory: _InventoryContent
    ) -> ansible_cli.SyntaxCheckResult:
        """A role step runs through a wrapper playbook; write one outside the repo and check it."""
        with tempfile.TemporaryDirectory(prefix="chiffon-role-step-") as scratch:
            wrapper = Path(scratch) / "role-step.yml"
            # json.dumps quotes the name, so a role called "true" or "1e3" stays a string.
            wrapper.write_text(f"- hosts: all\n  gather_facts: false\n  roles: [{json.dumps(role)}]\n")
            fqcn = _is_fqcn(role)
            roles_path = (
                [] if fqcn else [Path(p) for p in (os.path.dirname(role_dir), *self._config().roles_dirs)]
            )
            collections = [self.root / "collections"] if fqcn else []
            return await ansible_cli.syntax_check(
                self.root,
                wrapper,
                inventory=inventory.argument,
                timeout=SYNTAX_TIMEOUT_SECONDS,
                roles_path=list(dict.fromkeys(roles_path)),
                collections_path=collections,
            )

    def _limiter(self) -> asyncio.Semaphore:
        loop_id = id(asyncio.get_running_loop())
        if loop_id not in self._limits:
            self._limits = {loop_id: asyncio.Semaphore(MAX_CONCURRENT_CHECKS)}
        return self._limits[loop_id]


def _repo_files(root: Path, suffixes: Sequence[str], limit: int = 5_000) -> Iterator[str]:
    """Repo-relative paths of files with these suffixes, hidden folders skipped; at most ``limit``."""
    count = 0
    for directory, folders, files in os.walk(root):
        folders[:] = sorted(f for f in folders if not f.startswith(".") and f not in SKIP_DIRS)
        for name in sorted(files):
            if Path(name).suffix in suffixes:
                yield Path(directory, name).relative_to(root).as_posix()
                count += 1
                if count >= limit:
                    return
