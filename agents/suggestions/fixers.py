"""Small, exact text edits that fix one finding, and the unified diff that proposes them.

Each fixer takes a file's text and the (1-based) line a finding points at and
returns the new text, or None when the case is not one it can fix with
certainty. Edits touch only the lines concerned — comments, quoting and the
rest of the file stay as written — so a proposed patch is small enough to
review at a glance and applies with ``git apply`` even after unrelated edits
moved the lines.

Pure functions over strings; :func:`unified_patch` makes the diff.
"""

from __future__ import annotations

import difflib
import re
import shlex
from collections.abc import Callable

from chiffon.resources.ansible import is_module_key

__all__ = ["BUILTIN_MODULES", "FIXERS", "fix", "unified_patch"]

# ansible.builtin modules people write without their collection (ansible-core 2.16+).
BUILTIN_MODULES = frozenset(
    [
        "add_host",
        "apt",
        "apt_key",
        "apt_repository",
        "assemble",
        "assert",
        "async_status",
        "blockinfile",
        "command",
        "copy",
        "cron",
        "deb822_repository",
        "debconf",
        "debug",
        "dnf",
        "dnf5",
        "dpkg_selections",
        "expect",
        "fail",
        "fetch",
        "file",
        "find",
        "gather_facts",
        "get_url",
        "getent",
        "git",
        "group",
        "group_by",
        "hostname",
        "import_playbook",
        "import_role",
        "import_tasks",
        "include_role",
        "include_tasks",
        "include_vars",
        "iptables",
        "known_hosts",
        "lineinfile",
        "meta",
        "mount_facts",
        "package",
        "package_facts",
        "pause",
        "ping",
        "pip",
        "raw",
        "reboot",
        "replace",
        "rpm_key",
        "script",
        "service",
        "service_facts",
        "set_fact",
        "set_stats",
        "setup",
        "shell",
        "slurp",
        "stat",
        "subversion",
        "systemd",
        "systemd_service",
        "sysvinit",
        "tempfile",
        "template",
        "unarchive",
        "uri",
        "user",
        "validate_argument_spec",
        "wait_for",
        "wait_for_connection",
        "yum_repository",
    ]
)
_TRUTHY = {"yes": "true", "no": "false", "True": "true", "False": "false", "on": "true", "off": "false"}
_TRUTHY_LINE = re.compile(
    r"^(?P<head>\s*(?:- )?[\w.-]+:\s+)(?P<value>yes|no|True|False|on|off)(?P<tail>\s*(?:#.*)?)$"
)
_KEY_LINE = re.compile(r"^(?P<indent>\s*)(?P<dash>- )?(?P<key>[\w.]+):(?P<rest>.*)$")
_NAME_LINE = re.compile(r"^(?P<head>\s*(?:- )?name:\s*)(?P<quote>[\"']?)(?P<first>[a-z])(?P<tail>.*)$")
_SHELL_META = re.compile(r"[|&;<>()$`\\\"'*?\[\]~!#]")


def _split(text: str) -> tuple[list[str], bool]:
    return text.split("\n")[:-1] if text.endswith("\n") else text.split("\n"), text.endswith("\n")


def _join(lines: list[str], newline: bool) -> str:
    return "\n".join(lines) + ("\n" if newline else "")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _meaningful(line: str) -> bool:
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith("#")


def task_span(lines: list[str], index: int) -> tuple[int, int, int] | None:
    """(first, end, key_indent) of the innermost list item (task, play) containing 0-based ``index``."""
    lowest = _indent(lines[index]) if _meaningful(lines[index]) else 1 << 30
    start = index
    while start >= 0:
        line = lines[start]
        if _meaningful(line):
            if line.lstrip().startswith("- ") and (start == index or _indent(line) < lowest):
                break
            lowest = min(lowest, _indent(line))
        start -= 1
    if start < 0:
        return None
    item_indent = _indent(lines[start])
    key_indent = item_indent + 2
    end = start + 1
    while end < len(lines) and (not _meaningful(lines[end]) or _indent(lines[end]) > item_indent):
        end += 1
    while end > start + 1 and not _meaningful(lines[end - 1]):
        end -= 1
    return start, end, key_indent


def _task_keys(lines: list[str], span: tuple[int, int, int]) -> dict[str, int]:
    """Task-level keys in the span -> their line index."""
    start, end, key_indent = span
    keys: dict[str, int] = {}
    for index in range(start, end):
        line = lines[index]
        text = line[key_indent:] if index != start else line.lstrip()[2:]
        if index != start and _indent(line) != key_indent:
            continue
        match = re.match(r"^([\w.]+):", text)
        if match:
            keys[match.group(1)] = index
    return keys


def _module_key(lines: list[str], span: tuple[int, int, int]) -> tuple[str, int] | None:
    for key, index in _task_keys(lines, span).items():
        if is_module_key(key):
            return key, index
    return None


def _replace_key(line: str, old: str, new: str) -> str:
    return re.sub(rf"(^\s*(?:- )?){re.escape(old)}:", lambda m: f"{m.group(1)}{new}:", line, count=1)


def _locate(text: str, line: int) -> tuple[list[str], bool, tuple[int, int, int]] | None:
    lines, newline = _split(text)
    if not 1 <= line <= len(lines):
        return None
    span = task_span(lines, line - 1)
    return (lines, newline, span) if span else None


def fix_name_casing(text: str, line: int) -> str | None:
    found = _locate(text, line)
    if found is None:
        return None
    lines, newline, span = found
    for index in [line - 1, *range(span[0], span[1])]:
        match = _NAME_LINE.match(lines[index])
        if match:
            lines[index] = f"{match['head']}{match['quote']}{match['first'].upper()}{match['tail']}"
            return _join(lines, newline)
    return None


def fix_truthy(text: str, line: int) -> str | None:
    lines, newline = _split(text)
    if not 1 <= line <= len(lines):
        return None
    match = _TRUTHY_LINE.match(lines[line - 1])
    if not match:
        return None
    lines[line - 1] = f"{match['head']}{_TRUTHY[match['value']]}{match['tail']}"
    return _join(lines, newline)


def fix_fqcn(text: str, line: int) -> str | None:
    found = _locate(text, line)
    if found is None:
        return None
    lines, newline, span = found
    module = _module_key(lines, span)
    if module is None or module[0] not in BUILTIN_MODULES:
        return None
    lines[module[1]] = _replace_key(lines[module[1]], module[0], f"ansible.builtin.{module[0]}")
    return _join(lines, newline)


def fix_shell_to_command(text: str, line: int) -> str | None:
    found = _locate(text, line)
    if found is None:
        return None
    lines, newline, span = found
    module = _module_key(lines, span)
    if module is None or module[0] not in ("shell", "ansible.builtin.shell", "ansible.legacy.shell"):
        return None
    lines[module[1]] = _replace_key(lines[module[1]], module[0], "ansible.builtin.command")
    return _join(lines, newline)


def fix_file_permissions(text: str, line: int) -> str | None:
    found = _locate(text, line)
    if found is None:
        return None
    lines, newline, span = found
    module = _module_key(lines, span)
    if module is None or not lines[module[1]].rstrip().endswith(":"):
        return None  # free-form or inline arguments: leave to a person
    start = module[1] + 1
    if start >= span[1] or _indent(lines[start]) <= span[2]:
        return None
    arg_indent = _indent(lines[start])
    end = start
    directory = False
    while end < span[1] and (not _meaningful(lines[end]) or _indent(lines[end]) >= arg_indent):
        if re.match(r"^\s*state:\s*[\"']?directory", lines[end]):
            directory = True
        if re.match(r"^\s*mode:", lines[end]):
            return None
        end += 1
    while end > start and not _meaningful(lines[end - 1]):
        end -= 1
    lines.insert(end, " " * arg_indent + f'mode: "{"0755" if directory else "0644"}"')
    return _join(lines, newline)


def fix_trailing_spaces(text: str, line: int) -> str | None:
    lines, newline = _split(text)
    if not 1 <= line <= len(lines) or lines[line - 1] == lines[line - 1].rstrip():
        return None
    lines[line - 1] = lines[line - 1].rstrip()
    return _join(lines, newline)


def fix_final_newline(text: str, line: int) -> str | None:
    return None if text.endswith("\n") else text + "\n"


_JINJA_EXPRESSION = re.compile(r"\{\{.*?\}\}")


def split_command(command: str) -> list[str] | None:
    """Words of a command line as a shell would split them, ``{{ expressions }}`` kept whole."""
    expressions: list[str] = []

    def hide(match: re.Match[str]) -> str:
        expressions.append(match.group(0))
        return f"\x00{len(expressions) - 1}\x00"

    try:
        words = shlex.split(_JINJA_EXPRESSION.sub(hide, command))
    except ValueError:
        return None
    return [re.sub("\x00(\\d+)\x00", lambda m: expressions[int(m.group(1))], word) for word in words]


def fix_mkdir_to_file(text: str, line: int) -> str | None:
    """``shell/command: mkdir -p A B`` -> ``ansible.builtin.file: state=directory`` over a loop."""
    found = _locate(text, line)
    if found is None:
        return None
    lines, newline, span = found
    module = _module_key(lines, span)
    if module is None or module[0].rsplit(".", 1)[-1] not in ("shell", "command"):
        return None
    keys = _task_keys(lines, span)
    if set(keys) - {"name", module[0], "tags", "when", "become", "become_user", "changed_when"}:
        return None  # register, loop, args...: not a simple case
    command = lines[module[1]].split(":", 1)[1].strip()
    if (
        not command
        or command in (">-", "|", ">")
        or (module[1] + 1 < span[1] and _indent(lines[module[1] + 1]) > span[2])
    ):
        return None
    words = split_command(command)
    if words is None:
        return None
    if len(words) < 3 or words[0] != "mkdir" or words[1] != "-p":
        return None
    paths = words[2:]
    plain = [p for p in paths if not _SHELL_META.search(p.replace("{{", "").replace("}}", ""))]
    if len(plain) != len(paths) or any(p.startswith("-") for p in paths):
        return None
    pad = " " * span[2]
    replacement = [
        pad + "ansible.builtin.file:",
        pad + '  path: "{{ item }}"',
        pad + "  state: directory",
        pad + '  mode: "0755"',
        pad + "loop:",
        *(pad + f'  - "{p}"' for p in paths),
    ]
    out = lines[: module[1]] + replacement + lines[module[1] + 1 :]
    # A changed_when on a command no longer applies to the file module.
    if "changed_when" in keys:
        index = keys["changed_when"] + (len(replacement) - 1 if keys["changed_when"] > module[1] else 0)
        del out[index]
    return _join(out, newline)


def fix_play_become_false(text: str, line: int) -> str | None:
    """The play at ``line``: its ``become: true`` becomes ``become: false``."""
    lines, newline = _split(text)
    if not 1 <= line <= len(lines):
        return None
    span = task_span(lines, line - 1)
    if span is None:
        return None
    keys = _task_keys(lines, span)
    if "become" not in keys:
        return None
    index = keys["become"]
    new = re.sub(r"become:\s*(true|yes|True)\b", "become: false", lines[index], count=1)
    if new == lines[index]:
        return None
    lines[index] = new
    return _join(lines, newline)


def add_task_keyword(text: str, line: int, key: str, value: str) -> str | None:
    """Add ``key: value`` to the task at ``line``, after its module block (never twice)."""
    found = _locate(text, line)
    if found is None:
        return None
    lines, newline, span = found
    if key in _task_keys(lines, span):
        return None
    lines.insert(span[1], " " * span[2] + f"{key}: {value}")
    return _join(lines, newline)


FIXERS: dict[str, Callable[[str, int], str | None]] = {
    "name[casing]": fix_name_casing,
    "yaml[truthy]": fix_truthy,
    "fqcn[action-core]": fix_fqcn,
    "fqcn[action]": fix_fqcn,
    "command-instead-of-shell": fix_shell_to_command,
    "risky-file-permissions": fix_file_permissions,
    "yaml[trailing-spaces]": fix_trailing_spaces,
    "yaml[new-line-at-end-of-file]": fix_final_newline,
}


def fix(rule: str, text: str, line: int | None) -> str | None:
    fixer = FIXERS.get(rule)
    if fixer is None or line is None:
        return None
    fixed = fixer(text, line)
    return fixed if fixed is not None and fixed != text else None


def unified_patch(path: str, before: str, after: str) -> str:
    """A ``git apply``-able unified diff of one file."""
    diff = difflib.unified_diff(
        before.splitlines(keepends=True), after.splitlines(keepends=True), f"a/{path}", f"b/{path}", n=3
    )
    lines = []
    for line in diff:
        lines.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
    return "".join(lines)
