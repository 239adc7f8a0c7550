"""Checks over parsed playbooks and roles that ansible-lint does not make (DESIGN §5).

* ``shell-instead-of-module`` — a ``shell``/``command`` task whose program has
  a module (``mkdir`` → ``ansible.builtin.file``, ``systemctl`` →
  ``ansible.builtin.systemd_service``, ...). ``mkdir -p`` gets a patch.
* ``missing-handler`` — a task that changes a config file (template, copy,
  lineinfile, ...) without notifying a handler, so the service keeps running
  with the old configuration. When the play or role has exactly one handler,
  the patch notifies it.
* ``missing-health-check`` — a play or role that starts a service (compose,
  containers, systemd) and never checks that it answers (uri, wait_for,
  assert, ...).
* ``become-unneeded`` — a play that becomes root for tasks none of which
  need it; the patch turns it off. ``become-missing`` — a task writing under
  ``/etc`` in a play that never becomes root; the patch adds ``become: true``.

Pure: :func:`check_repo` takes a :class:`RepoFiles` and returns findings.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from chiffon.agents.suggestions import fixers
from chiffon.agents.suggestions.findings import STATIC, Finding
from chiffon.agents.suggestions.playbooks import Play, RepoFiles, Task

__all__ = ["MODULE_FOR_PROGRAM", "check_repo"]

MODULE_FOR_PROGRAM = {
    "mkdir": "ansible.builtin.file (state: directory)",
    "rm": "ansible.builtin.file (state: absent)",
    "touch": "ansible.builtin.file (state: touch)",
    "chmod": "ansible.builtin.file (mode)",
    "chown": "ansible.builtin.file (owner, group)",
    "ln": "ansible.builtin.file (state: link)",
    "cp": "ansible.builtin.copy",
    "curl": "ansible.builtin.get_url or ansible.builtin.uri",
    "wget": "ansible.builtin.get_url",
    "systemctl": "ansible.builtin.systemd_service",
    "service": "ansible.builtin.service",
    "apt": "ansible.builtin.apt",
    "apt-get": "ansible.builtin.apt",
    "dnf": "ansible.builtin.dnf",
    "yum": "ansible.builtin.dnf",
    "pip": "ansible.builtin.pip",
    "git": "ansible.builtin.git",
    "useradd": "ansible.builtin.user",
    "groupadd": "ansible.builtin.group",
    "crontab": "ansible.builtin.cron",
    "sed": "ansible.builtin.lineinfile or ansible.builtin.replace",
    "unzip": "ansible.builtin.unarchive",
    "tar": "ansible.builtin.unarchive or community.general.archive",
    "hostnamectl": "ansible.builtin.hostname",
    "mount": "ansible.posix.mount",
    "sysctl": "ansible.posix.sysctl",
}
CONFIG_MODULES = {"template", "copy", "lineinfile", "blockinfile", "ini_file", "replace", "assemble"}
_CONFIG_PATH = re.compile(
    r"(^/etc/|\.(conf|cfg|cnf|ini|toml|ya?ml|json|env|service|properties|rules)(\.j2)?$|"
    r"Caddyfile|nginx|config|/conf\.d/)",
    re.IGNORECASE,
)
_RESTART_HANDLER = re.compile(r"\b(restart|recreate|reload)\b", re.IGNORECASE)
HEALTH_MODULES = {"uri", "wait_for", "assert", "wait_for_connection", "get_url"}
_HEALTH_WORDS = re.compile(r"\b(health|healthy|healthcheck|curl|wget|ps --status|is-active)\b", re.IGNORECASE)
_DEPLOY_COMMAND = re.compile(r"\b(docker|podman)(-compose| compose)?\b.*\b(up|run|start)\b")
_ROOT_PATHS = ("/etc/", "/usr/", "/var/lib/", "/var/log/", "/boot/", "/lib/", "/opt/", "/root/")
_ROOT_MODULES = {
    "apt",
    "apt_key",
    "apt_repository",
    "dnf",
    "dnf5",
    "yum",
    "package",
    "user",
    "group",
    "mount",
    "sysctl",
    "systemd",
    "systemd_service",
    "service",
    "reboot",
    "hostname",
    "iptables",
    "ufw",
    "modprobe",
    "firewalld",
    "seboolean",
    "selinux",
    "authorized_key",
    "deb822_repository",
    "yum_repository",
}


def check_repo(repo: RepoFiles) -> list[Finding]:
    found: list[Finding] = []
    role_tasks = repo.role_tasks()
    role_handlers = repo.role_handlers()
    for task in repo.all_tasks():
        found.extend(_shell_instead_of_module(task, repo))
    for play in repo.plays():
        found.extend(_missing_handler(play.tasks, play.handlers, repo))
        found.extend(_play_health(play))
        found.extend(_become(play, repo, role_tasks))
    for role, tasks in sorted(role_tasks.items()):
        found.extend(_missing_handler(tasks, role_handlers.get(role, []), repo))
        found.extend(_role_health(role, tasks))
    return found


def _key(task: Task) -> str:
    return task.name or f"{task.module} at line {task.line}"


def _program(task: Task) -> list[str]:
    if task.short_module not in ("shell", "command"):
        return []
    text = task.command_text
    if not text:
        return []
    words = fixers.split_command(text) or text.split()
    while (words and ("=" in words[0] and not words[0].startswith("/"))) or words[:1] in (["sudo"], ["env"]):
        words = words[1:]
    return words


def _shell_instead_of_module(task: Task, repo: RepoFiles) -> Iterator[Finding]:
    words = _program(task)
    if not words:
        return
    program = words[0].rsplit("/", 1)[-1]
    module = MODULE_FOR_PROGRAM.get(program)
    if module is None:
        return
    text = repo.texts.get(task.file, "")
    fixed = fixers.fix_mkdir_to_file(text, task.line) if program == "mkdir" else None
    yield Finding(
        source=STATIC,
        rule="shell-instead-of-module",
        file=task.file,
        line=task.line,
        reasoning=(
            f"Task {_key(task)!r} runs `{program}` through {task.short_module}; {module} does the same "
            "idempotently, reports `changed` only when something changed, supports check mode "
            "(drift detection) and needs no shell quoting."
        ),
        key=_key(task),
        patch=fixers.unified_patch(task.file, text, fixed) if fixed else None,
    )


def _dest(task: Task) -> str | None:
    value = task.arg("dest", "path", "destfile", "name") if task.short_module in CONFIG_MODULES else None
    return str(value) if isinstance(value, str) else None


def _is_config_change(task: Task) -> bool:
    dest = _dest(task)
    return dest is not None and bool(_CONFIG_PATH.search(dest.replace("{{", "").replace("}}", "")))


def _checks_changed(name: str, tasks: Iterable[Task], text: str) -> bool:
    """A registered result used later as ``x.changed`` / ``x is changed`` is a handler's equivalent."""
    return bool(re.search(rf"\b{re.escape(name)}(\.changed|\s+is\s+changed|\s+is\s+not\s+changed)", text))


def _missing_handler(tasks: list[Task], handlers: list[Task], repo: RepoFiles) -> Iterator[Finding]:
    names = sorted({str(h.keywords.get("listen") or h.name) for h in handlers if h.name})
    for task in tasks:
        if task.handler or not _is_config_change(task) or task.notifies:
            continue
        register = task.keywords.get("register")
        text = repo.texts.get(task.file, "")
        if isinstance(register, str) and _checks_changed(register, tasks, text):
            continue
        patch = None
        if len(names) == 1 and _RESTART_HANDLER.search(names[0]) and "systemd" not in names[0].lower():
            fixed = fixers.add_task_keyword(text, task.line, "notify", _yaml_string(names[0]))
            patch = fixers.unified_patch(task.file, text, fixed) if fixed else None
        advice = (
            f"Notify {names[0]!r} when it changes."
            if len(names) == 1
            else "Add a handler that restarts or reloads the service, and notify it from this task."
            if not names
            else f"Notify the handler that applies it (one of: {', '.join(names)})."
        )
        yield Finding(
            source=STATIC,
            rule="missing-handler",
            file=task.file,
            line=task.line,
            reasoning=(
                f"Task {_key(task)!r} changes {_dest(task)} but notifies no handler: the service keeps "
                f"running with the old configuration until something else restarts it. {advice}"
            ),
            key=_key(task),
            patch=patch,
        )


def _yaml_string(text: str) -> str:
    return text if re.fullmatch(r"[A-Za-z][\w .-]*[\w.]", text) and ": " not in text else f'"{text}"'


def _deploys(task: Task) -> bool:
    module = task.module or ""
    if module.startswith(("community.docker.", "containers.podman.")):
        return True
    if task.short_module in ("systemd", "systemd_service", "service"):
        state = task.arg("state")
        return isinstance(state, str) and state in ("started", "restarted", "reloaded")
    words = " ".join(_program(task))
    return bool(_DEPLOY_COMMAND.search(words))


def _checks_health(task: Task) -> bool:
    if task.short_module in HEALTH_MODULES:
        return True
    if task.short_module in ("import_tasks", "include_tasks"):
        target = task.args if isinstance(task.args, str) else task.arg("file")
        return bool(target) and "health" in str(target).lower()
    return bool(task.name and _HEALTH_WORDS.search(task.name))


def _health_finding(file: str, line: int, key: str, what: str, deploy: Task) -> Finding:
    return Finding(
        source=STATIC,
        rule="missing-health-check",
        file=file,
        line=line,
        reasoning=(
            f"{what} starts a service ({_key(deploy)!r}) but never checks that it answers: a run can "
            "succeed while the service is down. Add an ansible.builtin.uri or ansible.builtin.wait_for "
            "task after the handlers are flushed (`chiffonctl template new` writes one)."
        ),
        key=key,
    )


def _play_health(play: Play) -> Iterator[Finding]:
    tasks = play.tasks + play.handlers
    deploy = next((t for t in tasks if _deploys(t)), None)
    if deploy is not None and not any(_checks_health(t) for t in tasks):
        yield _health_finding(
            play.file, play.line, f"play {play.name or play.hosts}", f"Play {play.name!r}", deploy
        )


def _role_health(role: str, tasks: list[Task]) -> Iterator[Finding]:
    deploy = next((t for t in tasks if _deploys(t)), None)
    if deploy is not None and not any(_checks_health(t) for t in tasks):
        main = next(
            (t.file for t in tasks if t.file.endswith(("tasks/main.yml", "tasks/main.yaml"))), tasks[0].file
        )
        yield _health_finding(main, 1, f"role {role}", f"Role {role!r}", deploy)


def _needs_root(task: Task) -> bool:
    if task.short_module in _ROOT_MODULES:
        return True
    for value in (task.arg("dest", "path", "src", "name", "creates", "chdir"), task.command_text):
        if isinstance(value, str) and any(f" {p}" in f" {value}" for p in _ROOT_PATHS):
            return True
    return False


def _writes_etc(task: Task) -> bool:
    dest = task.arg("dest", "path")
    return (
        task.short_module in CONFIG_MODULES | {"file", "get_url", "unarchive"}
        and isinstance(dest, str)
        and dest.startswith("/etc/")
    )


def _become(play: Play, repo: RepoFiles, role_tasks: dict[str, list[Task]]) -> Iterator[Finding]:
    text = repo.texts.get(play.file, "")
    tasks = play.tasks + play.handlers + [t for role in play.roles for t in role_tasks.get(role, [])]
    if play.become is True and tasks and not any(_needs_root(t) for t in tasks):
        fixed = fixers.fix_play_become_false(text, play.line)
        yield Finding(
            source=STATIC,
            rule="become-unneeded",
            file=play.file,
            line=play.line,
            reasoning=(
                f"Play {play.name!r} becomes root for all its {len(tasks)} tasks, yet none of them installs "
                "packages, manages services or writes system paths. Running as the login user limits "
                "what a mistake can break; add `become: true` on the tasks that need it, if any."
            ),
            key=f"play {play.name or play.hosts}",
            patch=fixers.unified_patch(play.file, text, fixed) if fixed else None,
        )
    if play.become is True:
        return
    for task in play.tasks + play.handlers:
        if _writes_etc(task) and task.become is not True:
            fixed = (
                fixers.add_task_keyword(text, task.line, "become", "true") if task.become is None else None
            )
            yield Finding(
                source=STATIC,
                rule="become-missing",
                file=task.file,
                line=task.line,
                reasoning=(
                    f"Task {_key(task)!r} writes {task.arg('dest', 'path')} but neither it nor its play "
                    "becomes root: it fails on any host where Ansible does not log in as root. "
                    "Add `become: true` to this task (not to the whole play)."
                ),
                key=_key(task),
                patch=fixers.unified_patch(task.file, text, fixed) if fixed else None,
            )
