"""The ansible-lint adapter: the only module that runs ``ansible-lint``, as a subprocess.

Why a subprocess and its codeclimate JSON rather than the Python API:
ansible-lint's internals change between releases and it mutates global
Ansible state (collection paths, config) on import; its JSON report is a
documented, stable format. One call lints a whole checkout (or the files
given), and :func:`run_ansible_lint` turns the report into typed
:class:`LintFinding` rows.

How it runs, and why:

* **Offline, always.** ``--offline`` and ``ANSIBLE_LINT_SKIP_SCHEMA_UPDATE``
  stop it from refreshing JSON schemas or installing the collections and
  roles a ``requirements.yml`` lists; ``ANSIBLE_LINT_NODEPS`` skips dependency
  installation altogether. A homelab's lint must never depend on the internet.
* **The repo's own configuration.** A ``.ansible-lint`` in the checkout is
  honoured (its profile, its skips); without one the ``production`` profile is
  used, the one Chiffon's templates are held to.
* **A timeout is not a verdict.** A run that takes longer, cannot start or
  gives no parseable report raises :class:`LintError`; exit statuses 0 and 2
  (no findings / findings) are both normal answers.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chiffon.tools import run_tool

__all__ = ["CONFIG_FILES", "LintError", "LintFinding", "LintReport", "find_ansible_lint", "run_ansible_lint"]

CONFIG_FILES = (".ansible-lint", ".ansible-lint.yml", ".ansible-lint.yaml", ".config/ansible-lint.yml")
DEFAULT_PROFILE = "production"
_MAX_OUTPUT_BYTES = 64 * 1024 * 1024


class LintError(RuntimeError):
    """ansible-lint gave no verdict: not installed, timed out, crashed, or printed no report."""


@dataclass(frozen=True)
class LintFinding:
    """One ansible-lint finding, paths relative to the linted checkout."""

    rule: str
    path: str
    line: int | None
    message: str
    severity: str = "major"
    categories: tuple[str, ...] = ()
    column: int | None = None
    url: str | None = None
    body: str = ""


@dataclass(frozen=True)
class LintReport:
    findings: list[LintFinding] = field(default_factory=list)
    returncode: int = 0

    def count(self, *, path: str | None = None) -> int:
        return sum(1 for f in self.findings if path is None or f.path == path)


def find_ansible_lint() -> Path:
    """ansible-lint beside ``sys.executable`` (this virtualenv), else on PATH."""
    beside = Path(sys.executable).parent / "ansible-lint"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("ansible-lint")
    if found:
        return Path(found)
    raise LintError(
        f"ansible-lint was found neither next to {sys.executable} nor on PATH; "
        "install it in Chiffon's environment (pip install ansible-lint)"
    )


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("ANSIBLE_CONFIG", None)  # the checkout's own ansible.cfg is found from its root
    env.update(
        {
            "ANSIBLE_LINT_SKIP_SCHEMA_UPDATE": "1",
            "ANSIBLE_LINT_NODEPS": "1",
            "ANSIBLE_NOCOLOR": "1",
            "NO_COLOR": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
    )
    # ansible-lint runs ansible-playbook for its syntax checks: make sure it finds ours.
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    if "LC_ALL" not in env and "LANG" not in env:
        env["LC_ALL"] = "C.UTF-8"
    return env


def _arguments(root: Path, paths: Sequence[str], profile: str | None) -> list[str]:
    args = ["--offline", "--nocolor", "-q", "-f", "codeclimate"]
    if profile is not None:
        args += ["--profile", profile]
    elif not any((root / name).is_file() for name in CONFIG_FILES):
        args += ["--profile", DEFAULT_PROFILE]
    args += list(paths)
    return args


async def run_ansible_lint(
    root: Path,
    paths: Sequence[str] = (),
    *,
    timeout: float = 300,  # noqa: ASYNC109 - on expiry the process group is killed, not just abandoned
    profile: str | None = None,
) -> LintReport:
    """Lint the checkout at ``root`` (or only ``paths`` inside it) and return its findings."""
    executable = find_ansible_lint()
    args = _arguments(root, paths, profile)
    try:
        ran = await run_tool(
            executable, args, cwd=root, env=_environment(), timeout=timeout, limit=_MAX_OUTPUT_BYTES
        )
    except OSError as exc:
        raise LintError(f"could not start {executable}: {exc}") from exc
    except TimeoutError:
        raise LintError(f"ansible-lint took longer than {timeout:g}s in {root}") from None
    if ran.returncode not in (0, 2):
        detail = _last_line(ran.stderr) or f"exit status {ran.returncode}"
        raise LintError(f"ansible-lint failed in {root}: {detail}")
    return LintReport(parse_codeclimate(ran.stdout), ran.returncode)


def parse_codeclimate(text: str) -> list[LintFinding]:
    """Findings from ansible-lint's ``-f codeclimate`` output (a JSON list; empty output: none)."""
    stripped = text.strip()
    if not stripped:
        return []
    try:
        data = json.loads(stripped)
    except ValueError as exc:
        raise LintError(f"ansible-lint printed no JSON report: {_last_line(stripped)[:200]}") from exc
    if not isinstance(data, list):
        raise LintError("ansible-lint's report is not a list of issues")
    return [finding for item in data if (finding := _finding(item)) is not None]


def _finding(item: Any) -> LintFinding | None:
    if not isinstance(item, dict) or item.get("type", "issue") != "issue":
        return None
    location = item.get("location") or {}
    lines = location.get("lines") or {}
    positions = (location.get("positions") or {}).get("begin") or {}
    line = lines.get("begin") if isinstance(lines, dict) else None
    if line is None:
        line = positions.get("line")
    content = item.get("content") or {}
    return LintFinding(
        rule=str(item.get("check_name", "unknown")),
        path=str(location.get("path", "")),
        line=int(line) if isinstance(line, int) else None,
        column=positions.get("column") if isinstance(positions.get("column"), int) else None,
        message=str(item.get("description", "")).strip(),
        severity=str(item.get("severity", "major")),
        categories=tuple(str(c) for c in item.get("categories") or ()),
        url=item.get("url"),
        body=str(content.get("body", "")) if isinstance(content, dict) else "",
    )


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("WARNING")]
    return lines[-1] if lines else ""
