"""The ansible-playbook CLI adapter: the only module that runs ``ansible-playbook`` as a subprocess.

The planner needs one thing from Ansible before a plan can be approved: does
the playbook parse? ``ansible-playbook --syntax-check`` answers that with
Ansible's own loader (YAML, module names, role lookups, ``import_*``), which
no reimplementation would match. Running a real playbook is the infra agent's
job, through ansible-runner; this adapter never executes a task.

How it runs Ansible, and why:

* **The binary next to the interpreter first.** ``ansible-core`` installed in
  the same virtualenv as Chiffon puts ``ansible-playbook`` beside
  ``sys.executable``; that is the version the tests and the agent use. PATH is
  the fallback; neither gives :class:`AnsibleNotFoundError` with what to install.
* **The repo's ansible.cfg, explicitly.** Ansible ignores an ``ansible.cfg`` in
  a world-writable working directory and reads ``~/.ansible.cfg`` otherwise;
  ``ANSIBLE_CONFIG`` pins the repo's file so the check sees what a run sees.
* **Never write into the repo.** ``ANSIBLE_HOME`` and ``ANSIBLE_LOCAL_TEMP``
  point at a temporary directory removed afterwards, and Python byte code of
  repo-local plugins is not written next to them.
* **Failures in Ansible's words, on one line.** The first ``[ERROR]``
  (ansible-core 2.19) or ``ERROR!`` (older) line, with the file and line it
  points at, paths shown relative to the repo, at most 500 characters.
* **A timeout is not a verdict.** A check that takes too long, or a binary
  that cannot start, raises :class:`AnsibleCliError`: the playbook was not
  judged, so the caller retries instead of reporting it broken.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from chiffon.tools import run_tool

__all__ = [
    "AnsibleCliError",
    "AnsibleNotFoundError",
    "SyntaxCheckResult",
    "error_summary",
    "find_ansible_playbook",
    "syntax_check",
]

_MAX_MESSAGE_CHARS = 500
_ERROR_PREFIXES = ("[ERROR]:", "ERROR!")
# Lines that end an error's text: where it points (2.19 and older), then a code excerpt.
_ORIGIN_2_19 = re.compile(r"^Origin:\s*(?P<where>\S.*)$")
_ORIGIN_OLD = re.compile(r"^The (?:error|offending line) appears to be in '(?P<file>[^']+)': (?P<rest>.*)$")
_LINE_COLUMN = re.compile(r"line (\d+), column (\d+)")
_WHITESPACE = re.compile(r"\s+")


class AnsibleCliError(RuntimeError):
    """ansible-playbook could not give a verdict (not installed, timed out, killed)."""


class AnsibleNotFoundError(AnsibleCliError):
    """No ansible-playbook next to the Python interpreter or on PATH."""


@dataclass(frozen=True)
class SyntaxCheckResult:
    """Ansible's verdict on one playbook: ``ok``, or the first error in one line."""

    ok: bool
    message: str


def find_ansible_playbook() -> Path:
    """The ansible-playbook to run: beside ``sys.executable`` (this virtualenv), else on PATH."""
    # Not resolved: a virtualenv's python is often a symlink to the system one,
    # and the script we want lives beside the link, not beside its target.
    beside = Path(sys.executable).parent / "ansible-playbook"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("ansible-playbook")
    if found:
        return Path(found)
    raise AnsibleNotFoundError(
        f"ansible-playbook was found neither next to {sys.executable} nor on PATH; "
        "install ansible-core in Chiffon's environment (pip install ansible-core)"
    )


async def syntax_check(
    infra_root: Path,
    playbook: str | Path,
    *,
    inventory: str | None,
    timeout: float = 60,  # noqa: ASYNC109 - on expiry the process group is killed, not just abandoned
    roles_path: Sequence[Path] = (),
    collections_path: Sequence[Path] = (),
) -> SyntaxCheckResult:
    """Run ``ansible-playbook --syntax-check [-i inventory] playbook`` in ``infra_root``.

    ``playbook`` and ``inventory`` are relative to ``infra_root`` or absolute.
    ``roles_path`` and ``collections_path``, when given, are exported as
    ``ANSIBLE_ROLES_PATH`` / ``ANSIBLE_COLLECTIONS_PATH``: a playbook written
    outside the repo (a role step's wrapper) has no ``roles/`` beside it.
    """
    executable = find_ansible_playbook()
    args = ["--syntax-check"]
    if inventory is not None:
        args += ["-i", inventory]
    args.append(str(playbook))
    with tempfile.TemporaryDirectory(prefix="chiffon-ansible-") as scratch:
        env = _environment(infra_root, Path(scratch), roles_path, collections_path)
        returncode, output = await _run(executable, args, cwd=infra_root, env=env, timeout=timeout)
    if returncode == 0:
        return SyntaxCheckResult(ok=True, message="")
    if returncode < 0:
        raise AnsibleCliError(f"ansible-playbook --syntax-check was killed by signal {-returncode}")
    strip = [infra_root]
    playbook_path = Path(playbook)
    if playbook_path.is_absolute() and not playbook_path.is_relative_to(infra_root):
        strip.append(playbook_path.parent)  # a wrapper in a temp dir: its folder means nothing to a reader
    return SyntaxCheckResult(ok=False, message=error_summary(output, returncode, strip=strip))


def _environment(
    infra_root: Path, scratch: Path, roles_path: Sequence[Path], collections_path: Sequence[Path]
) -> dict[str, str]:
    env = dict(os.environ)
    # An inherited ANSIBLE_CONFIG would make the check read another repo's settings.
    env.pop("ANSIBLE_CONFIG", None)
    config = infra_root / "ansible.cfg"
    if config.is_file():
        env["ANSIBLE_CONFIG"] = str(config)
    env.update(
        {
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
            "NO_COLOR": "1",
            "ANSIBLE_HOME": str(scratch / "home"),
            "ANSIBLE_LOCAL_TEMP": str(scratch / "tmp"),
            "ANSIBLE_RETRY_FILES_ENABLED": "0",
            # Repo-local filter or module plugins would otherwise leave __pycache__ in the repo.
            "PYTHONDONTWRITEBYTECODE": "1",
        }
    )
    if "LC_ALL" not in env and "LANG" not in env:
        env["LC_ALL"] = "C.UTF-8"  # ansible-core refuses to start under a non-UTF-8 locale
    if roles_path:
        env["ANSIBLE_ROLES_PATH"] = os.pathsep.join(str(path) for path in roles_path)
    if collections_path:
        env["ANSIBLE_COLLECTIONS_PATH"] = os.pathsep.join(str(path) for path in collections_path)
    return env


async def _run(
    executable: Path,
    args: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    timeout: float,  # noqa: ASYNC109
) -> tuple[int, str]:
    """Exit status and stdout+stderr; the whole process group is killed on timeout."""
    try:
        ran = await run_tool(executable, args, cwd=cwd, env=env, timeout=timeout, merge_stderr=True)
    except OSError as exc:
        raise AnsibleCliError(f"could not start {executable}: {exc}") from exc
    except TimeoutError:
        raise AnsibleCliError(f"ansible-playbook --syntax-check took longer than {timeout:g}s") from None
    return ran.returncode, ran.stdout


def error_summary(output: str, returncode: int, *, strip: Sequence[Path] = ()) -> str:
    """The first error Ansible printed, with where it points, on one line of ≤ 500 characters.

    Falls back to the last line of output, then to the exit status, so the
    message is never empty. Absolute paths under ``strip`` are shown relative.
    """
    lines = output.splitlines()
    start = next((i for i, line in enumerate(lines) if line.lstrip().startswith(_ERROR_PREFIXES)), None)
    if start is None:
        meaningful = [line.strip() for line in lines if line.strip() and not _is_noise(line)]
        text = meaningful[-1] if meaningful else f"ansible-playbook exited with status {returncode}"
    else:
        text = _error_text(lines, start)
    for prefix in sorted((str(path) for path in strip), key=len, reverse=True):
        text = text.replace(prefix.rstrip("/") + "/", "")
    return _one_line(text)


def _error_text(lines: Sequence[str], start: int) -> str:
    """The error's own lines (until a blank line, or where it points), then where it points."""
    first = lines[start].lstrip()
    for prefix in _ERROR_PREFIXES:
        first = first.removeprefix(prefix)
    parts = [first.strip()]
    index = start + 1
    while index < len(lines):
        stripped = lines[index].strip()
        if not stripped or stripped.startswith(_ERROR_PREFIXES) or _is_noise(stripped) or _origin(stripped):
            break
        parts.append(stripped)
        index += 1
    # Older releases put a blank line between the message and "The error appears to be in".
    where = next((_origin(line.strip()) for line in lines[index : index + 3] if _origin(line.strip())), None)
    if where:
        parts.append(f"({where})")
    return " ".join(part for part in parts if part)


def _origin(line: str) -> str | None:
    """``path:line:column`` from an ``Origin:`` (2.19) or ``The error appears to be in`` line."""
    match = _ORIGIN_2_19.match(line)
    if match:
        return match.group("where")
    old = _ORIGIN_OLD.match(line)
    if old is None:
        return None
    position = _LINE_COLUMN.search(old.group("rest"))
    return f"{old.group('file')}:{position.group(1)}:{position.group(2)}" if position else old.group("file")


def _is_noise(line: str) -> bool:
    """Warnings and the ``playbook: x.yml`` banner say nothing about why the check failed."""
    stripped = line.strip()
    return stripped.startswith(("[WARNING]", "[DEPRECATION WARNING]", "playbook:"))


def _one_line(text: str) -> str:
    flat = _WHITESPACE.sub(" ", text).strip()
    return flat if len(flat) <= _MAX_MESSAGE_CHARS else flat[: _MAX_MESSAGE_CHARS - 1] + "…"
