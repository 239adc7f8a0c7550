"""Discovery: what a homelab-infra checkout can run, read from its files (DESIGN §5).

:func:`discover` walks a checkout once and returns a :class:`Discovery`:

* **playbooks** — any YAML file, in any folder, whose top level is a list of
  plays (every item has ``hosts`` or ``import_playbook``, short or FQCN);
* **roles** — folders under a ``roles`` folder that have ``tasks/`` (also the
  roles of collections vendored under ``collections/ansible_collections``,
  named by FQCN);
* **compose stacks** — ``docker-compose.yml`` / ``compose.yaml`` files outside
  roles;
* **inventories** — files under ``inventory``/``inventories`` folders (or
  ``hosts.*``), with the groups they declare.

Each playbook, role and stack becomes an :class:`Entry` with a service name,
its tags, and a text for the embedding index built from names, play and task
names, module names (FQCN and short), image names, default variables and the
README text nearest to it. The most telling parts come first: the model reads
only the first 128 word pieces.

The ansible-nas layout is understood: a site playbook (``nas.yml``) that lists
many roles, each with ``tags: [app]`` and ``when: app_enabled``, and roles
whose defaults carry ``app_enabled: false``. Such a role is its own entry,
run through the site playbook with its tags and ``app_enabled: true``.

Reading is hostile-input-safe (:func:`chiffon.resources.yamlio.load_yaml_documents`:
size, depth and alias limits); a file that cannot be read is skipped with a
warning, never an exception. Everything here but :func:`discover` and
:func:`fingerprint` (which read the disk) is pure.
"""

# os.walk and os.stat on str: a walk of a thousand playbooks is path arithmetic, pathlib costs more.
# ruff: noqa: PTH113, PTH116, PTH118

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Any

from chiffon.resources.ansible import BLOCK_SECTIONS, PLAY_TASK_SECTIONS, is_module_key
from chiffon.resources.yamlio import DEFAULT_LIMITS, ResourceError, load_yaml_documents

__all__ = [
    "Discovery",
    "Entry",
    "EntryKind",
    "Inventory",
    "discover",
    "entry_text",
    "fingerprint",
    "service_name",
]

#: Bump when what discovery finds or the texts it writes change: cached discoveries are then re-read.
DISCOVERY_VERSION = 6  # 5: inventories list their hosts; 6: and what they say about each
#: Folders never walked: VCS data, caches, virtual environments.
SKIP_DIRS = frozenset(
    {".git", ".hg", ".svn", "__pycache__", ".ansible", ".venv", "venv", "node_modules", ".tox", ".cache"}
)
YAML_SUFFIXES = (".yml", ".yaml")
COMPOSE_NAMES = frozenset({"docker-compose.yml", "docker-compose.yaml", "compose.yml", "compose.yaml"})
INVENTORY_DIRS = frozenset({"inventory", "inventories"})
INVENTORY_NAMES = frozenset(
    {"hosts", "hosts.yml", "hosts.yaml", "hosts.ini", "inventory.yml", "inventory.ini"}
)
#: Most files a walk looks at; a repo past this is not a homelab-infra repo.
MAX_FILES = 100_000
#: Characters of text per entry: ~128 word pieces is what the model reads.
MAX_TEXT_CHARS = 900
MAX_SUMMARY_CHARS = 300
#: Roles that every playbook uses; they say nothing about which service a playbook is for.
GENERIC_ROLES = frozenset({"common", "base", "bootstrap", "prereqs", "prerequisites", "docker", "users"})
#: Words that name what a playbook does, not what it is for: dropped from a service name.
_ACTION_WORDS = (
    "deployment", "deploy", "install", "installation", "setup", "playbook", "provision", "role", "stack",
)  # fmt: skip
_PLAY_KEYS = frozenset({"hosts", "import_playbook"})
# ruamel refuses tags outside the YAML core schema; Ansible's own are blanked (same length).
_ANSIBLE_TAGS = re.compile(r"!(?:vault|unsafe)(?=\s)")
_IMAGE_LINE = re.compile(r"^\s*image:\s*[\"']?([^\s\"'#{}]+(?:\{\{[^}]*\}\}[^\s\"'#]*)?)", re.MULTILINE)
_IMAGE_WORD = re.compile(
    r"^[a-z0-9][a-z0-9._-]*(?:/[a-z0-9][a-z0-9._-]*)+(?::[\w.-]+)?$|^[a-z0-9._-]+:[\w.-]+$"
)
_ENABLED_WHEN = re.compile(r"\b([A-Za-z_][A-Za-z0-9_]*_enabled)\b")
_WORDS = re.compile(r"[A-Za-z0-9]+")
_MD_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_MD_NOISE = re.compile(r"[`*_#>|]+")


class EntryKind(StrEnum):
    PLAYBOOK = "playbook"
    ROLE = "role"
    COMPOSE = "compose-stack"


@dataclass(frozen=True)
class Entry:
    """One thing homelab-infra can do, and how a step runs it.

    ``path`` is repo-relative (a playbook or compose file, a role folder).
    ``playbook``/``role`` say what a plan step runs (both None for a compose
    stack, which Ansible does not run); ``run_tags`` and ``run_vars`` go with
    it — an ansible-nas role runs through the site playbook with its tag and
    its ``<app>_enabled: true``.
    """

    kind: EntryKind
    name: str
    service: str
    path: str
    description: str = ""
    tags: tuple[str, ...] = ()
    text: str = ""
    summary: str = ""
    playbook: str | None = None
    role: str | None = None
    run_tags: tuple[str, ...] = ()
    run_vars: Mapping[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    images: tuple[str, ...] = ()
    modules: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return f"{self.kind.value}:{self.path}"

    @property
    def runnable(self) -> bool:
        return self.playbook is not None or self.role is not None

    @property
    def target(self) -> str:
        """What a step runs, in words: ``nas.yml --tags jellyfin``, ``role uptime_kuma``, or the path."""
        if self.playbook is not None:
            return " ".join([self.playbook, *(f"--tags {t}" for t in self.run_tags[:1])])
        if self.role is not None:
            return f"role {self.role}"
        return self.path

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind.value,
            "name": self.name,
            "service": self.service,
            "path": self.path,
            "description": self.description,
            "tags": list(self.tags),
            "playbook": self.playbook,
            "role": self.role,
            "runTags": list(self.run_tags),
            "runVars": dict(self.run_vars),
            "aliases": list(self.aliases),
            "images": list(self.images),
            "modules": list(self.modules),
            "text": self.text,
            "summary": self.summary,
        }

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Entry:
        return cls(
            kind=EntryKind(data["kind"]),
            name=str(data["name"]),
            service=str(data["service"]),
            path=str(data["path"]),
            description=str(data.get("description", "")),
            tags=tuple(data.get("tags", ())),
            text=str(data.get("text", "")),
            summary=str(data.get("summary", "")),
            playbook=data.get("playbook"),
            role=data.get("role"),
            run_tags=tuple(data.get("runTags", ())),
            run_vars=dict(data.get("runVars", {})),
            aliases=tuple(data.get("aliases", ())),
            images=tuple(data.get("images", ())),
            modules=tuple(data.get("modules", ())),
        )


@dataclass(frozen=True)
class Inventory:
    path: str
    groups: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()
    # What the inventory says about a host in plain values (address, "RTX 4090"): how people name it.
    details: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "groups": list(self.groups),
            "hosts": list(self.hosts),
            "details": {host: list(values) for host, values in self.details.items()},
        }


@dataclass
class Discovery:
    entries: list[Entry] = field(default_factory=list)
    inventories: list[Inventory] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_wire(self) -> dict[str, Any]:
        return {
            "entries": [entry.to_wire() for entry in self.entries],
            "inventories": [inventory.to_wire() for inventory in self.inventories],
            "warnings": list(self.warnings),
        }

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Discovery:
        return cls(
            entries=[Entry.from_wire(item) for item in data.get("entries", [])],
            inventories=[
                Inventory(
                    str(item["path"]),
                    tuple(item.get("groups", ())),
                    tuple(item.get("hosts", ())),
                    {str(h): tuple(map(str, v)) for h, v in (item.get("details") or {}).items()},
                )
                for item in data.get("inventories", [])
            ],
            warnings=[str(item) for item in data.get("warnings", [])],
        )


# =========================================================================== pure: names and words


def service_name(text: str) -> str:
    """``Uptime_Kuma`` → ``uptime-kuma``: lower case, words joined by '-'."""
    return "-".join(word.lower() for word in _WORDS.findall(text))


def _playbook_service(stem: str, roles: Sequence[str]) -> str:
    specific = [r for r in dict.fromkeys(roles) if r.rsplit(".", 1)[-1] not in GENERIC_ROLES]
    if len(specific) == 1:
        return service_name(specific[0].rsplit(".", 1)[-1])
    words = [w for w in service_name(stem).split("-") if w and w not in _ACTION_WORDS]
    return "-".join(words) or service_name(stem)


def _markdown_text(text: str) -> str:
    """Markdown as plain words: links keep their text, marks and table pipes go."""
    text = _MD_LINK.sub(r"\1", text)
    lines = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or set(stripped) <= set("|-: "):
            continue
        lines.append(" ".join(_MD_NOISE.sub(" ", stripped).split()))
    return " ".join(lines)


def _first_paragraph(markdown: str, limit: int = 400) -> str:
    """The first prose paragraph of a README (headings skipped)."""
    paragraph: list[str] = []
    for line in markdown.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") and not paragraph:
            continue
        if not stripped:
            if paragraph:
                break
            continue
        paragraph.append(stripped)
    return _markdown_text("\n".join(paragraph))[:limit]


def _header_comment(text: str, limit: int = 300) -> str:
    """The comment block at the top of a YAML file, without command lines (indented examples)."""
    words: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped in ("---", ""):
            if words:
                break
            continue
        if not stripped.startswith("#"):
            break
        body = stripped.lstrip("#")
        if not body.strip():
            if words:
                break  # the first paragraph says what it is; the rest is usage
            continue
        if body.startswith(("   ", "\t")) or body.strip().startswith(
            ("ansible-playbook", "docker ", "$ ", "-e ")
        ):
            continue  # an example command, not prose
        words.append(body.strip())
    return " ".join(" ".join(words).split())[:limit]


def _readme_mentions(readmes: Mapping[str, str], folder: str, needle: str, limit: int = 300) -> str:
    """Lines of the READMEs in ``folder`` and above that mention ``needle`` (a file or folder name)."""
    found: list[str] = []
    current = PurePosixPath(folder)
    while True:
        text = readmes.get(_folder_key(str(current)))
        if text:
            for line in text.splitlines():
                # Table rows and list items describe things; prose and code blocks show usage.
                if needle in line and line.lstrip().startswith(("|", "- ", "* ")):
                    plain = _markdown_text(line).replace(needle, " ")
                    if plain.strip():
                        found.append(plain)
        if current == current.parent:
            break
        current = current.parent
    return " ".join(" ".join(found).split())[:limit]


def entry_summary(name: str, service: str, *parts: str, limit: int = MAX_SUMMARY_CHARS) -> str:
    """A short text: what an entry is called and what it is for (short queries match it best)."""
    head = _words(name) if service_name(name) == service else f"{_words(name)}, {_words(service)}"
    body = " ".join(dict.fromkeys(" ".join(p.split()) for p in parts if p and p.strip()))
    return f"{head}: {body}"[:limit] if body else head


def _folder_key(folder: str) -> str:
    return "" if folder in (".", "") else folder


def _words(text: str) -> str:
    return " ".join(_WORDS.findall(text.replace("_", " ")))


def entry_text(
    *,
    kind: EntryKind,
    name: str,
    service: str,
    description: str,
    readme: str,
    names: Iterable[str],
    images: Iterable[str],
    modules: Iterable[str],
    tags: Iterable[str],
    variables: Iterable[str],
    limit: int = MAX_TEXT_CHARS,
) -> str:
    """The text an entry is embedded from, the most telling parts first (the model reads ~128 pieces)."""
    parts = [
        f"{_words(name)} ({kind.value}, service {_words(service)}).",
        description,
        readme,
        "; ".join(dict.fromkeys(n for n in names if n)),
        "images " + ", ".join(dict.fromkeys(images)) if images else "",
        "tags " + ", ".join(dict.fromkeys(tags)) if tags else "",
        "modules " + ", ".join(dict.fromkeys(modules)) if modules else "",
        "vars " + ", ".join(dict.fromkeys(variables)) if variables else "",
    ]
    text = " ".join(" ".join(part for part in parts if part and part.strip()).split())
    return text[:limit]


# =========================================================================== pure: reading YAML


@dataclass
class _TaskFacts:
    names: list[str] = field(default_factory=list)
    modules: list[str] = field(default_factory=list)  # as written (FQCN kept)
    tags: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    roles: list[tuple[str, str | None]] = field(default_factory=list)  # include_role: (name, tasks_from)
    includes: list[str] = field(default_factory=list)  # include_tasks / import_tasks files


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _short(module: Any) -> str:
    return str(module).rsplit(".", 1)[-1] if module else ""


def _tags(value: Any) -> list[str]:
    found: list[str] = []
    for item in _as_list(value):
        if isinstance(item, str):
            found.extend(t.strip() for t in item.split(",") if t.strip() and "{{" not in t)
    return found


def _image_of(value: Any) -> str | None:
    if isinstance(value, str):
        image = value.strip()
        if image and "{{" not in image and _IMAGE_WORD.match(image.lower()):
            return image
    return None


def _read_tasks(tasks: Any, into: _TaskFacts, inherited_tags: Sequence[str] = ()) -> None:
    for task in _as_list(tasks):
        if not isinstance(task, dict):
            continue
        name = task.get("name")
        if isinstance(name, str) and name.strip():
            into.names.append(" ".join(name.split()))
        into.tags.extend(_tags(task.get("tags")))
        for section in BLOCK_SECTIONS:
            if section in task:
                _read_tasks(task.get(section), into)
        for key, value in task.items():
            if not is_module_key(key):
                continue
            into.modules.append(key)
            short = _short(key)
            if isinstance(value, dict):
                image = _image_of(value.get("image"))
                if image:
                    into.images.append(image)
            if short in {"include_tasks", "import_tasks"}:
                ref = value.get("file") if isinstance(value, dict) else value
                if isinstance(ref, str) and "{{" not in ref and ref.strip():
                    into.includes.append(ref.strip().split()[0])
            if short in {"include_role", "import_role"}:
                role = value.get("name") if isinstance(value, dict) else None
                tasks_from = value.get("tasks_from") if isinstance(value, dict) else None
                if isinstance(role, str) and role.strip() and "{{" not in role:
                    into.roles.append((role.strip(), tasks_from if isinstance(tasks_from, str) else None))


@dataclass
class _RoleUse:
    """A role as a play lists it: under ``roles:`` (with its tags and ``when``) or included by a task."""

    name: str
    tags: tuple[str, ...] = ()
    when: str = ""
    tasks_from: str | None = None
    listed: bool = True  # under roles:, not include_role


@dataclass
class _PlaybookFacts:
    play_names: list[str] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)
    imports: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    roles: list[_RoleUse] = field(default_factory=list)
    tasks: _TaskFacts = field(default_factory=_TaskFacts)
    variables: list[str] = field(default_factory=list)


def _is_play(item: Any) -> bool:
    return isinstance(item, dict) and any(_short(key) in _PLAY_KEYS for key in item)


def _read_playbook(plays: list[Any]) -> _PlaybookFacts:
    facts = _PlaybookFacts()
    for play in plays:
        for key, value in play.items():
            if _short(key) == "import_playbook" and isinstance(value, str):
                facts.imports.append(value.split()[0] if value.split() else value)
        name = play.get("name")
        if isinstance(name, str) and name.strip():
            facts.play_names.append(" ".join(name.split()))
        hosts = play.get("hosts")
        facts.hosts.extend(
            h for h in (_as_list(hosts) if not isinstance(hosts, str) else [hosts]) if isinstance(h, str)
        )
        facts.tags.extend(_tags(play.get("tags")))
        if isinstance(play.get("vars"), dict):
            facts.variables.extend(str(k) for k in play["vars"])
        for entry in _as_list(play.get("roles")):
            if isinstance(entry, str) and entry.strip():
                facts.roles.append(_RoleUse(entry.strip()))
            elif isinstance(entry, dict):
                role = entry.get("role", entry.get("name"))
                if isinstance(role, str) and role.strip() and "{{" not in role:
                    when = " ".join(str(w) for w in _as_list(entry.get("when")))
                    tags = tuple(_tags(entry.get("tags")))
                    facts.roles.append(_RoleUse(role.strip(), tags, when))
                    facts.tags.extend(tags)
        for section in PLAY_TASK_SECTIONS:
            _read_tasks(play.get(section), facts.tasks)
    for role, tasks_from in facts.tasks.roles:
        facts.roles.append(_RoleUse(role, tasks_from=tasks_from, listed=False))
    facts.tags.extend(facts.tasks.tags)
    return facts


def _load(text: str, source: str) -> list[Any]:
    return [document.data for document in load_yaml_documents(_ANSIBLE_TAGS.sub("      ", text), source)]


_INI_SECTION = re.compile(r"^\s*\[([^\]:\s]+)(?::(children|vars))?\]\s*$")


InventoryNames = tuple[tuple[str, ...], tuple[str, ...], dict[str, tuple[str, ...]]]


def _scalars(body: Any) -> tuple[str, ...]:
    if not isinstance(body, dict):
        return ()
    plain = (v for v in body.values() if isinstance(v, (str, int, float)) and not isinstance(v, bool))
    return tuple(str(v) for v in plain)


def _inventory_names(text: str, path: str) -> InventoryNames | None:
    """The groups and hosts an inventory file names, or None when the file is no inventory."""
    ini = _INI_SECTION.search(text) is not None or not text.lstrip().startswith(("all:", "---"))
    if not path.endswith(YAML_SUFFIXES) and ini:
        return _ini_inventory_names(text)
    groups: list[str] = []
    hosts: dict[str, tuple[str, ...]] = {}

    def walk(data: Any) -> None:
        if isinstance(data, dict):
            for name, body in data.items():
                groups.append(str(name))
                if isinstance(body, dict):
                    if isinstance(body.get("hosts"), dict):
                        for host, host_vars in body["hosts"].items():
                            hosts[str(host)] = hosts.get(str(host), ()) + _scalars(host_vars)
                    walk(body.get("children"))

    for data in _load(text, path):
        if isinstance(data, dict) and not any(k in data for k in ("children", "hosts")):
            walk(data)
        elif isinstance(data, dict):
            walk({"all": data})
    if not groups:
        return None
    return tuple(dict.fromkeys(groups)), tuple(hosts), {h: v for h, v in hosts.items() if v}


def _ini_inventory_names(text: str) -> InventoryNames | None:
    groups: list[str] = []
    hosts: dict[str, tuple[str, ...]] = {}
    section: str | None = "ungrouped"
    for line in text.splitlines():
        stripped = line.split("#", 1)[0].split(";", 1)[0].strip()
        header = _INI_SECTION.match(line)
        if header:
            groups.append(header.group(1))
            section = None if header.group(2) else header.group(1)  # :children and :vars list no hosts
        elif stripped and section is not None:
            name, *assignments = stripped.split()
            values = tuple(a.split("=", 1)[1].strip("'\"") for a in assignments if "=" in a)
            hosts[name] = hosts.get(name, ()) + values
    if not groups:
        return None
    return tuple(dict.fromkeys(groups)), tuple(hosts), {h: v for h, v in hosts.items() if v}


# =========================================================================== impure: the walk


@dataclass
class _Role:
    name: str  # as Ansible names it: folder name, or ns.coll.role for a collection's role
    path: str  # repo-relative folder
    task_files: dict[str, _TaskFacts] = field(default_factory=dict)  # tasks/<file> -> facts
    handlers: _TaskFacts = field(default_factory=_TaskFacts)
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    galaxy_tags: list[str] = field(default_factory=list)
    readme: str = ""
    template_images: list[str] = field(default_factory=list)

    def tasks(self, tasks_from: str | None = None) -> _TaskFacts:
        """The task facts of ``tasks/main.yml`` (or ``tasks_from``) and the task files it includes."""
        merged = _TaskFacts()
        by_stem = {str(PurePosixPath(f).with_suffix("")): f for f in sorted(self.task_files, reverse=True)}
        pending = [(tasks_from or "main").removesuffix(".yml").removesuffix(".yaml")]
        seen: set[str] = set()
        while pending:
            stem = pending.pop(0)
            name = by_stem.get(stem)
            if name is None or name in seen:
                continue
            seen.add(name)
            facts = self.task_files[name]
            for attribute in ("names", "modules", "tags", "images", "roles"):
                getattr(merged, attribute).extend(getattr(facts, attribute))
            pending.extend(str(PurePosixPath(ref).with_suffix("")) for ref in facts.includes)
        return merged

    def images(self) -> list[str]:
        found = [image for value in self.defaults.values() if (image := _image_of(value))]
        # ansible-nas: <app>_image_name + <app>_image_version
        for key, value in self.defaults.items():
            if key.endswith(("_image_name", "_image")) and isinstance(value, str) and "{{" not in value:
                found.append(value.strip())
        found.extend(self.template_images)
        found.extend(self.tasks().images)
        return list(dict.fromkeys(found))

    def enabled_var(self) -> str | None:
        wanted = f"{self.name.rsplit('.', 1)[-1]}_enabled"
        if wanted in self.defaults:
            return wanted
        enabled = [key for key in self.defaults if key.endswith("_enabled")]
        return enabled[0] if len(enabled) == 1 else None


def _walk(root: Path, warnings: list[str]) -> Iterator[tuple[str, os.stat_result]]:
    """(repo-relative POSIX path, stat) of every file, hidden and cache folders skipped, sorted."""
    count = 0
    for directory, folders, files in os.walk(root):
        folders[:] = sorted(f for f in folders if f not in SKIP_DIRS and not f.startswith("."))
        for name in sorted(files):
            path = os.path.join(directory, name)
            try:
                info = os.stat(path)
            except OSError:
                continue  # a dangling symlink
            if not os.path.isfile(path):
                continue
            relative = Path(path).relative_to(root).as_posix()
            yield relative, info
            count += 1
            if count >= MAX_FILES:
                warnings.append(f"more than {MAX_FILES} files: the rest of the repository was not read")
                return


def fingerprint(root: Path) -> str:
    """sha256 over every file's path, size and mtime: changes whenever the checkout does."""
    digest = hashlib.sha256()
    for relative, info in _walk(root, []):
        digest.update(f"{relative}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _role_dir_of(parts: tuple[str, ...]) -> int | None:
    """Index of the role folder in a path's parts when the path lies inside ``roles/<role>/``."""
    for index in range(len(parts) - 2, 0, -1):
        if parts[index - 1] == "roles":
            return index
    return None


class _Reader:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.warnings: list[str] = []

    def text(self, relative: str, info: os.stat_result) -> str | None:
        if info.st_size > DEFAULT_LIMITS.max_bytes:
            self.warnings.append(f"{relative}: larger than {DEFAULT_LIMITS.max_bytes} bytes; skipped")
            return None
        try:
            return (self.root / relative).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            self.warnings.append(f"{relative}: not UTF-8 text; skipped")
        except OSError as error:
            self.warnings.append(f"{relative}: cannot be read ({error.strerror or error}); skipped")
        return None

    def yaml(self, relative: str, info: os.stat_result) -> list[Any] | None:
        text = self.text(relative, info)
        if text is None:
            return None
        try:
            return _load(text, relative)
        except ResourceError as error:
            self.warnings.append(f"{error}; skipped")
            return None


def _role_name(parts: tuple[str, ...], index: int) -> str:
    """A role's name: its folder, or ``ns.coll.role`` inside ``ansible_collections/ns/coll/roles/``."""
    if index >= 4 and parts[index - 4] == "ansible_collections":
        return f"{parts[index - 3]}.{parts[index - 2]}.{parts[index]}"
    return parts[index]


def discover(root: Path) -> Discovery:
    """Everything the checkout at ``root`` can run; unreadable files are warnings, never errors."""
    root = Path(os.path.realpath(root))
    reader = _Reader(root)
    roles: dict[str, _Role] = {}
    readmes: dict[str, str] = {}  # folder -> README text
    markdown_by_stem: dict[str, str] = {}  # lower-case stem -> path (docs pages named after an app)
    candidates: list[tuple[str, os.stat_result]] = []
    inventory_files: list[tuple[str, os.stat_result]] = []

    for relative, info in _walk(root, reader.warnings):
        parts = PurePosixPath(relative).parts
        name = parts[-1]
        index = _role_dir_of(parts)
        if index is not None and len(parts) > index + 1:
            role_path = "/".join(parts[: index + 1])
            role = roles.get(role_path)
            if role is None:
                role = roles[role_path] = _Role(_role_name(parts, index), role_path)
            _read_role_file(reader, role, parts[index + 1 :], relative, info)
            continue
        if name.lower() in ("readme.md", "readme"):
            text = reader.text(relative, info)
            if text is not None:
                readmes[_folder_key(str(PurePosixPath(relative).parent))] = text
            continue
        if name.endswith(".md"):
            markdown_by_stem.setdefault(PurePosixPath(name).stem.lower(), relative)
            continue
        in_inventory = any(p in INVENTORY_DIRS for p in parts[:-1])
        if (in_inventory or name in INVENTORY_NAMES) and not any(
            p in ("group_vars", "host_vars") for p in parts
        ):
            inventory_files.append((relative, info))
            continue
        if name.endswith(YAML_SUFFIXES) and not any(
            p in ("group_vars", "host_vars", "vars", "defaults") for p in parts[:-1]
        ):
            candidates.append((relative, info))

    # Roles are only folders that have tasks/; a roles/<x>/ with just files is not one.
    roles = {path: role for path, role in roles.items() if role.task_files}
    by_name: dict[str, _Role] = {}
    for role in roles.values():
        by_name.setdefault(role.name, role)
    for role in roles.values():
        if not role.readme:
            page = markdown_by_stem.get(role.name.rsplit(".", 1)[-1].lower()) or markdown_by_stem.get(
                service_name(role.name.rsplit(".", 1)[-1])
            )
            if page is not None:
                text = reader.text(page, os.stat(root / page))
                role.readme = _first_paragraph(text) if text else ""

    discovery = Discovery()
    playbooks: list[tuple[str, str, _PlaybookFacts]] = []
    for relative, info in candidates:
        name = PurePosixPath(relative).name
        if name in COMPOSE_NAMES:
            _compose_entry(reader, readmes, relative, info, discovery)
            continue
        text = reader.text(relative, info)
        if text is None:
            continue
        try:
            documents = _load(text, relative)
        except ResourceError as error:
            reader.warnings.append(f"{error}; skipped")
            continue
        plays = documents[0] if len(documents) == 1 else None
        if isinstance(plays, list) and plays and all(_is_play(item) for item in plays):
            playbooks.append((relative, text, _read_playbook(plays)))

    site_uses = _site_uses(playbooks)
    for relative, text, facts in playbooks:
        discovery.entries.append(_playbook_entry(relative, text, facts, by_name, readmes))
    for role in sorted(roles.values(), key=lambda r: r.path):
        discovery.entries.append(_role_entry(role, site_uses.get(role.name)))
    for relative, info in inventory_files:
        text = reader.text(relative, info)
        if text is None:
            continue
        try:
            names = _inventory_names(text, relative)
        except ResourceError as error:
            reader.warnings.append(f"{error}; skipped")
            continue
        if names is not None:
            discovery.inventories.append(Inventory(relative, *names))
    discovery.entries.sort(key=lambda e: (e.kind.value, e.path))
    discovery.warnings = reader.warnings
    return discovery


def _read_role_file(
    reader: _Reader, role: _Role, inner: tuple[str, ...], relative: str, info: os.stat_result
) -> None:
    section, name = inner[0], inner[-1]
    if len(inner) == 1:
        if name.lower() == "readme.md":
            text = reader.text(relative, info)
            role.readme = _first_paragraph(text) if text else ""
        return
    if section == "templates" and "compose" in name and name.endswith((".j2", ".yml", ".yaml")):
        text = reader.text(relative, info)
        if text:
            role.template_images.extend(m for m in _IMAGE_LINE.findall(text) if "{{" not in m)
        return
    if not name.endswith(YAML_SUFFIXES) or section not in ("tasks", "handlers", "defaults", "meta"):
        return
    documents = reader.yaml(relative, info)
    if documents is None:
        return
    data = documents[0] if documents else None
    if section == "tasks":
        facts = _TaskFacts()
        _read_tasks(data, facts)
        role.task_files["/".join(inner[1:])] = facts
    elif section == "handlers":
        _read_tasks(data, role.handlers)
    elif section == "defaults" and isinstance(data, dict):
        role.defaults.update({str(k): v for k, v in data.items()})
    elif section == "meta" and isinstance(data, dict):
        info_block = data.get("galaxy_info")
        if isinstance(info_block, dict):
            description = info_block.get("description")
            if isinstance(description, str):
                role.description = " ".join(description.split())
            role.galaxy_tags = [str(t) for t in _as_list(info_block.get("galaxy_tags")) if isinstance(t, str)]


def _compose_entry(
    reader: _Reader, readmes: Mapping[str, str], relative: str, info: os.stat_result, into: Discovery
) -> None:
    text = reader.text(relative, info)
    if text is None:
        return
    try:
        documents = _load(text, relative)
    except ResourceError as error:
        reader.warnings.append(f"{error}; skipped")
        return
    data = documents[0] if documents else None
    if not isinstance(data, dict) or not isinstance(data.get("services"), dict):
        return
    folder = str(PurePosixPath(relative).parent)
    folder_name = PurePosixPath(folder).name if folder != "." else PurePosixPath(reader.root).name
    stack = data.get("name") if isinstance(data.get("name"), str) else folder_name
    services = [str(name) for name in data["services"]]
    images = [
        image
        for body in data["services"].values()
        if isinstance(body, dict) and (image := _image_of(body.get("image")))
    ]
    ports = [
        str(port)
        for body in data["services"].values()
        if isinstance(body, dict)
        for port in _as_list(body.get("ports"))
    ]
    own = readmes.get(_folder_key(folder))
    readme = _first_paragraph(own) if own else ""
    readme = readme or _readme_mentions(readmes, str(PurePosixPath(folder).parent), f"{folder_name}/")
    description = _header_comment(text) or readme
    service = service_name(str(stack))
    into.entries.append(
        Entry(
            kind=EntryKind.COMPOSE,
            name=str(stack),
            service=service,
            path=relative,
            description=description,
            text=entry_text(
                kind=EntryKind.COMPOSE,
                name=str(stack),
                service=service,
                description=description,
                readme=readme if readme != description else "",
                names=[
                    f"compose services {', '.join(services)}",
                    f"ports {', '.join(ports)}" if ports else "",
                ],
                images=images,
                modules=[],
                tags=[],
                variables=[],
            ),
            summary=entry_summary(str(stack), service, description, readme),
            aliases=tuple(dict.fromkeys([service_name(folder_name), *map(service_name, services)])),
            images=tuple(dict.fromkeys(images)),
        )
    )


def _site_uses(playbooks: Sequence[tuple[str, str, _PlaybookFacts]]) -> dict[str, tuple[str, _RoleUse]]:
    """Roles that a site playbook (several roles listed) selects by tag or by an ``*_enabled`` toggle."""
    uses: dict[str, tuple[str, _RoleUse]] = {}
    for relative, _, facts in playbooks:
        listed = [use for use in facts.roles if use.listed]
        if len({use.name for use in listed}) < 2:
            continue
        for use in listed:
            if (use.tags or _ENABLED_WHEN.search(use.when)) and use.name not in uses:
                uses[use.name] = (relative, use)
    return uses


def _playbook_entry(
    relative: str, text: str, facts: _PlaybookFacts, roles: Mapping[str, _Role], readmes: Mapping[str, str]
) -> Entry:
    path = PurePosixPath(relative)
    role_names = [use.name for use in facts.roles]
    service = _playbook_service(path.stem, role_names)
    names = [*facts.play_names, *facts.tasks.names]
    modules = list(facts.tasks.modules)
    images = list(facts.tasks.images)
    tags = list(facts.tags)
    variables = list(facts.variables)
    used = [use for use in facts.roles if use.name in roles]
    few = len({use.name for use in used}) <= 3  # a site playbook's text names its roles, not their tasks
    role_text: list[str] = []
    for use in used:
        role = roles[use.name]
        role_text.append(role.name)
        if not few:
            continue
        tasks = role.tasks(use.tasks_from)
        names.extend(tasks.names)
        modules.extend(tasks.modules)
        tags.extend(tasks.tags)
        images.extend(role.images() if use.tasks_from is None else tasks.images)
        if use.tasks_from is None:
            variables.extend(role.defaults)
            if role.readme:
                role_text.append(role.readme)
            elif role.description:
                role_text.append(role.description)
    description = _header_comment(text) or (facts.play_names[0] if facts.play_names else "")
    readme = _readme_mentions(readmes, str(path.parent), path.name)
    # A playbook that runs one role is that role's front door: its summary says what the role is.
    role_summary = [
        " ".join([roles[u.name].description, *roles[u.name].galaxy_tags])
        for u in used
        if u.tasks_from is None and roles[u.name].name.rsplit(".", 1)[-1] not in GENERIC_ROLES
    ]
    short_modules = [_short(m) for m in modules]
    return Entry(
        kind=EntryKind.PLAYBOOK,
        name=path.stem,
        service=service,
        path=relative,
        description=description,
        tags=tuple(dict.fromkeys(tags)),
        text=entry_text(
            kind=EntryKind.PLAYBOOK,
            name=path.stem,
            service=service,
            description=description,
            readme=" ".join([readme, *role_text[:4]]) if few else readme + " roles " + ", ".join(role_text),
            names=names,
            images=images,
            modules=[*dict.fromkeys(modules), *dict.fromkeys(short_modules)],
            tags=tags,
            variables=variables,
        ),
        summary=entry_summary(
            path.stem, service, description[:160], *(role_summary[:1] if few else []), readme
        ),
        playbook=relative,
        aliases=tuple(
            dict.fromkeys(
                [service_name(path.stem), *(service_name(r.rsplit(".", 1)[-1]) for r in role_names if few)]
            )
        ),
        images=tuple(dict.fromkeys(images)),
        modules=tuple(dict.fromkeys(modules)),
    )


def _role_entry(role: _Role, site: tuple[str, _RoleUse] | None) -> Entry:
    short_name = role.name.rsplit(".", 1)[-1]
    service = service_name(short_name)
    tasks = role.tasks()
    images = role.images()
    tags = [*tasks.tags, *role.galaxy_tags]
    description = role.description or role.readme[:200]
    playbook: str | None = None
    run_tags: tuple[str, ...] = ()
    run_vars: dict[str, Any] = {}
    run_role: str | None = role.name
    if site is not None:
        playbook, use = site
        run_role = None
        run_tags = use.tags
        tags = [*use.tags, *tags]
        enabled = role.enabled_var()
        match = _ENABLED_WHEN.search(use.when)
        if match is not None:
            enabled = match.group(1)
        if enabled is not None:
            run_vars = {enabled: True}
    return Entry(
        kind=EntryKind.ROLE,
        name=role.name,
        service=service,
        path=role.path,
        description=description,
        tags=tuple(dict.fromkeys(tags)),
        text=entry_text(
            kind=EntryKind.ROLE,
            name=short_name,
            service=service,
            description=description,
            readme=role.readme if role.readme[:200] != description else role.readme[200:],
            names=[*tasks.names, *role.handlers.names],
            images=images,
            modules=[*dict.fromkeys(tasks.modules), *dict.fromkeys(_short(m) for m in tasks.modules)],
            tags=tags,
            variables=list(role.defaults),
        ),
        summary=entry_summary(
            short_name, service, description, role.readme[:200], " ".join(role.galaxy_tags)
        ),
        playbook=playbook,
        role=run_role,
        run_tags=run_tags,
        run_vars=run_vars,
        aliases=(service_name(role.name),) if "." in role.name else (),
        images=tuple(images),
        modules=tuple(dict.fromkeys(tasks.modules)),
    )
