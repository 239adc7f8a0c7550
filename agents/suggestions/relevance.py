"""Which suggestions concern which intents: the files an intent's plan runs.

Used by the summary card and post-mortem (what to show next to an intent) and by the
controller's suggestion scanner (which service a new suggestion is audited under).
"""

from __future__ import annotations

import functools
import stat
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from chiffon.agents.suggestions.playbooks import parse_file, role_dependencies
from chiffon.resources import DeploymentIntent

__all__ = ["plan_files", "playbook_roles", "touches", "with_dependencies"]

ROLE_MODULES = ("include_role", "import_role")


def plan_files(intent: DeploymentIntent, roles: Iterable[str]) -> tuple[set[str], set[str]]:
    """(playbook paths, role names) that the intent's plan runs."""
    plan = intent.status.plan if intent.status else None
    steps: Sequence[Any] = plan.steps if plan is not None else intent.spec.steps
    playbooks = {step.playbook for step in steps if step.playbook}
    names = {step.role.rsplit(".", 1)[-1] for step in steps if step.role}
    return playbooks, names | set(roles)


def touches(path: str, playbooks: set[str], roles: set[str]) -> bool:
    """Whether a suggestion's file is one of the playbooks or inside one of the roles."""
    if path in playbooks:
        return True
    parts = PurePosixPath(path).parts
    return any(parts[i] == "roles" and parts[i + 1] in roles for i in range(len(parts) - 1))


def playbook_roles(infra_repo: Path | None, playbooks: Iterable[str]) -> set[str]:
    """Roles the playbooks name in ``roles:`` or through include_role/import_role (best effort)."""
    found: set[str] = set()
    if infra_repo is None:
        return found
    root = infra_repo.resolve()
    for playbook in playbooks:
        path = (root / playbook).resolve()
        if path.is_relative_to(root):
            found |= _read_cached(path, _roles_named)
    return with_dependencies(root, found, _role_folders(root, playbooks))


def _roles_named(playbook_text: str) -> frozenset[str]:
    parsed = parse_file("playbook", playbook_text)
    found: set[str] = set()
    for play in parsed.plays if parsed else []:
        found.update(role.rsplit(".", 1)[-1] for role in play.roles)
        for task in play.tasks:
            role = task.arg("name") if (task.short_module or "") in ROLE_MODULES else None
            if isinstance(role, str):
                found.add(role.rsplit(".", 1)[-1])
    return frozenset(found)


def _read_cached(path: Path, parse: Callable[[str], frozenset[str]]) -> frozenset[str]:
    """``parse`` of the file's text, read again only when the file changes; empty when unreadable.

    The summary card asks on every request (the page polls it), and parsing a playbook
    with its roles' meta files took most of the request's time.
    """
    try:
        info = path.stat()
    except OSError:
        return frozenset()
    if not stat.S_ISREG(info.st_mode):  # from the stat already taken, not a second one
        return frozenset()
    return _parsed(path, info.st_mtime_ns, info.st_size, parse)


@functools.lru_cache(maxsize=1024)
def _parsed(
    path: Path, _mtime_ns: int, _size: int, parse: Callable[[str], frozenset[str]]
) -> frozenset[str]:
    # The stat figures are part of the key: an edited file is a new entry, the old one ages out.
    try:
        return parse(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return frozenset()


#: How deep role dependencies are followed (meta/main.yml ``dependencies``); cycles stop sooner.
MAX_DEPENDENCY_DEPTH = 10


def _role_folders(root: Path, playbooks: Iterable[str]) -> list[Path]:
    """Where roles live: next to the playbooks (``roles/``, ``../roles/``), and the usual places."""
    folders = [root / "roles", root / "ansible" / "roles"]
    for playbook in playbooks:
        parent = (root / playbook).parent
        folders += [parent / "roles", parent.parent / "roles"]
    return list(dict.fromkeys(folder for folder in folders if folder.is_dir()))


def with_dependencies(root: Path, roles: set[str], folders: Sequence[Path]) -> set[str]:
    """``roles`` plus the roles they depend on in ``meta/main.yml`` (transitively): their tasks run too."""
    found = set(roles)
    frontier = set(roles)
    for _ in range(MAX_DEPENDENCY_DEPTH):
        frontier = {dep for role in frontier for dep in _dependencies(root, role, folders)} - found
        if not frontier:
            break
        found |= frontier
    return found


def _dependencies(root: Path, role: str, folders: Sequence[Path]) -> list[str]:
    for folder in folders:
        meta = (folder / role / "meta" / "main.yml").resolve()
        if not meta.is_relative_to(root) or not meta.is_file():
            continue
        return sorted(_read_cached(meta, _dependency_names))
    return []


def _dependency_names(meta_text: str) -> frozenset[str]:
    return frozenset(name.rsplit(".", 1)[-1] for name in role_dependencies(meta_text))
