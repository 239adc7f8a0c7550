"""Read a homelab-infra checkout's playbooks and roles into plays and tasks with line numbers.

The static checks (:mod:`.static`) and the run-based ones (:mod:`.runs`) need
to know, for each task, which module it calls, with which arguments, where it
is (file and line), whether it notifies a handler and whether it becomes root.
Ansible's own loader would do, but its objects carry their positions
differently in every release; a YAML safe loader that records each mapping's
line is enough and stable. ``!vault`` and ``!unsafe`` values are read as
opaque strings; files over 1 MiB or that do not parse are skipped (ansible-lint
reports those).

Everything here is pure over text: :func:`parse_file` takes a path and its
content; :func:`load_repo` is the only function that reads the disk.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from chiffon.resources.ansible import BLOCK_SECTIONS, is_module_key

__all__ = ["Play", "RepoFiles", "Task", "load_repo", "parse_file", "role_dependencies"]

MAX_FILE_BYTES = 1024 * 1024
_SKIP_DIRS = {".git", ".ansible", ".cache", "collections", "galaxy_cache", "node_modules", "venv", ".venv"}


class _LineDict(dict[str, Any]):
    line: int = 0


class _Loader(yaml.SafeLoader):  # type: ignore[misc]  # PyYAML ships no types
    """A safe loader whose mappings remember their (1-based) line."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> _LineDict:
    loader.flatten_mapping(node)
    mapping = _LineDict()
    mapping.line = node.start_mark.line + 1
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        mapping[str(key)] = loader.construct_object(value_node, deep=True)
    return mapping


def _opaque(loader: _Loader, node: yaml.Node) -> str:
    return "<vaulted>" if node.tag == "!vault" else str(getattr(node, "value", ""))


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor("!vault", _opaque)
_Loader.add_constructor("!unsafe", _opaque)


@dataclass(frozen=True)
class Task:
    file: str
    line: int
    name: str | None
    module: str | None  # as written: "shell", "ansible.builtin.copy", ...
    args: Any
    keywords: dict[str, Any]
    handler: bool = False

    @property
    def short_module(self) -> str | None:
        return self.module.rsplit(".", 1)[-1] if self.module else None

    @property
    def become(self) -> bool | None:
        value = self.keywords.get("become")
        return value if isinstance(value, bool) else None

    @property
    def notifies(self) -> list[str]:
        value = self.keywords.get("notify")
        if isinstance(value, str):
            return [value]
        return [str(v) for v in value] if isinstance(value, list) else []

    def arg(self, *names: str) -> Any:
        """A module argument by any of its names (``dest``/``path``), or None."""
        if isinstance(self.args, dict):
            for name in names:
                if name in self.args:
                    return self.args[name]
        return None

    @property
    def command_text(self) -> str | None:
        """The command line of a shell/command task (free form, ``cmd`` or ``argv``)."""
        if isinstance(self.args, str):
            return self.args
        if isinstance(self.args, dict):
            if isinstance(self.args.get("cmd"), str):
                return str(self.args["cmd"])
            if isinstance(self.args.get("_raw_params"), str):
                return str(self.args["_raw_params"])
            argv = self.args.get("argv")
            if isinstance(argv, list):
                return " ".join(str(a) for a in argv)
        return None


@dataclass(frozen=True)
class Play:
    file: str
    line: int
    name: str | None
    hosts: str | None
    become: bool | None
    tasks: list[Task]
    handlers: list[Task]
    roles: list[str]


@dataclass
class ParsedFile:
    """What one YAML file holds: plays (a playbook) or a task list (a role's tasks or handlers)."""

    path: str
    plays: list[Play] = field(default_factory=list)
    tasks: list[Task] = field(default_factory=list)


@dataclass
class RepoFiles:
    """Every playbook and role task file of a checkout, with their texts (for patches)."""

    files: dict[str, ParsedFile] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)

    def plays(self) -> Iterator[Play]:
        for parsed in self.files.values():
            yield from parsed.plays

    def role_tasks(self) -> dict[str, list[Task]]:
        """Role name -> the tasks of its ``tasks/`` files (handlers separately, see :meth:`role_handlers`)."""
        return self._role_files("tasks")

    def role_handlers(self) -> dict[str, list[Task]]:
        return self._role_files("handlers")

    def _role_files(self, folder: str) -> dict[str, list[Task]]:
        found: dict[str, list[Task]] = {}
        for path, parsed in self.files.items():
            role = role_of(path, folder)
            if role is not None:
                found.setdefault(role, []).extend(parsed.tasks)
        return found

    def all_tasks(self) -> Iterator[Task]:
        for parsed in self.files.values():
            yield from parsed.tasks
            for play in parsed.plays:
                yield from play.tasks
                yield from play.handlers


def role_of(path: str, folder: str) -> str | None:
    """``roles/<name>/<folder>/x.yml`` -> name."""
    parts = PurePosixPath(path).parts
    for index in range(len(parts) - 3, -1, -1):
        if parts[index] == "roles" and parts[index + 2] == folder:
            return parts[index + 1]
    return None


def _task_from(item: Any, path: str, *, handler: bool) -> Iterator[Task]:
    if not isinstance(item, dict):
        return
    line = getattr(item, "line", 0)
    for section in BLOCK_SECTIONS:
        if isinstance(item.get(section), list):
            for child in item[section]:
                yield from _task_from(child, path, handler=handler)
    if "block" in item:
        return
    modules = [key for key in item if is_module_key(key)]
    module: str | None = modules[0] if modules else None
    args: Any = item.get(module) if module else None
    if module is None and isinstance(item.get("action"), str | dict):
        action = item["action"]
        module = action.split()[0] if isinstance(action, str) else str(action.get("module"))
        args = action.partition(" ")[2] if isinstance(action, str) else action
    keywords = {key: value for key, value in item.items() if key != module}
    name = item.get("name")
    yield Task(path, line, str(name) if name is not None else None, module, args, keywords, handler)


def _tasks_of(items: Any, path: str, *, handler: bool = False) -> list[Task]:
    tasks: list[Task] = []
    if isinstance(items, list):
        for item in items:
            tasks.extend(_task_from(item, path, handler=handler))
    return tasks


def _role_names(items: Any) -> list[str]:
    names = []
    for item in items if isinstance(items, list) else []:
        if isinstance(item, str):
            names.append(item)
        elif isinstance(item, dict):
            role = item.get("role") or item.get("name")
            if isinstance(role, str):
                names.append(role)
    return names


def role_dependencies(meta_text: str) -> list[str]:
    """The roles a role's ``meta/main.yml`` lists under ``dependencies``; [] when it is not readable."""
    try:
        data = yaml.safe_load(meta_text)
    except yaml.YAMLError:
        return []
    entries = data.get("dependencies") if isinstance(data, dict) else None
    return _role_names(entries) if isinstance(entries, list) else []


def parse_file(path: str, text: str) -> ParsedFile | None:
    """Plays or tasks of one file; None when it is not YAML we understand."""
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError:
        return None
    parsed = ParsedFile(path)
    if not isinstance(data, list) or not data:
        return None
    is_playbook = all(
        isinstance(item, dict)
        and ("hosts" in item or "import_playbook" in item or "ansible.builtin.import_playbook" in item)
        for item in data
    )
    if is_playbook:
        for item in data:
            if "hosts" not in item:
                continue
            tasks = _tasks_of(item.get("pre_tasks"), path) + _tasks_of(item.get("tasks"), path)
            tasks += _tasks_of(item.get("post_tasks"), path)
            become = item.get("become")
            parsed.plays.append(
                Play(
                    file=path,
                    line=getattr(item, "line", 0),
                    name=str(item["name"]) if item.get("name") is not None else None,
                    hosts=str(item.get("hosts")),
                    become=become if isinstance(become, bool) else None,
                    tasks=tasks,
                    handlers=_tasks_of(item.get("handlers"), path, handler=True),
                    roles=_role_names(item.get("roles")),
                )
            )
        return parsed
    if role_of(path, "tasks") is not None or role_of(path, "handlers") is not None:
        parsed.tasks = _tasks_of(data, path, handler=role_of(path, "handlers") is not None)
        return parsed
    return None


def _candidates(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if any(part in _SKIP_DIRS or part.startswith(".") for part in relative.parts[:-1]):
            continue
        if path.suffix in (".yml", ".yaml") and path.is_file() and not path.is_symlink():
            yield path


def load_repo(root: Path) -> RepoFiles:
    """Parse every playbook and role task/handler file under ``root``."""
    repo = RepoFiles()
    for path in _candidates(root):
        if path.stat().st_size > MAX_FILE_BYTES:
            continue
        relative = path.relative_to(root).as_posix()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        parsed = parse_file(relative, text)
        if parsed is not None and (parsed.plays or parsed.tasks):
            repo.files[relative] = parsed
            repo.texts[relative] = text
    return repo
