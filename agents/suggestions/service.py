"""Scan homelab-infra for suggestions, store them, and accept or dismiss them (DESIGN §5, §8).

**Scan.** The committed state (``HEAD``) is checked out into a temporary git
worktree — the user's working copy, which the infra agent runs from, is
never touched — and examined three ways: ansible-lint (:mod:`.lint`), our
static checks (:mod:`.static`) and the stored runs (:mod:`.runs`). Each
finding is stored once per fingerprint (the store dedupes), so a rescan adds
only what is new. An open or accepted lint/static suggestion that a scan no
longer finds was fixed meanwhile: it becomes ``implemented``; so does a failed
step's suggestion once the step succeeds (and it opens again if the same
failure comes back). The controller scans by itself after runs finish
(:mod:`.scanner`).

**Accept.** In a fresh worktree at ``HEAD`` the suggestion's patch is
checked with ``git apply --check``; if the file moved on since the scan, the
finding is looked up again by its fingerprint and its patch regenerated.
ansible-lint runs on the touched files before and after the patch; only if
the finding is gone and the count did not grow is the change committed —
on a new branch ``chiffon/suggestion-<id>`` (default) or on the checked-out
branch (``suggestions_on_current_branch``) — with a message saying what and
why, the acting person as author and a ``Signed-off-by`` trailer. Otherwise
nothing is committed, the suggestion stays open and the error says why.
Accepting or dismissing writes an audit event either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from chiffon.agents.suggestions import fixers, lint, runs, static
from chiffon.agents.suggestions.findings import LINT, STATIC, Finding, split_category, with_fingerprints
from chiffon.agents.suggestions.playbooks import load_repo
from chiffon.gitrepo import GitError, GitRepo, Identity, run_git
from chiffon.resources import AuditEvent, Outcome, Run, RunStatus
from chiffon.resources.messages import AnsibleEvent
from chiffon.store import Store
from chiffon.store.records import Suggestion

__all__ = [
    "AcceptResult",
    "ScanResult",
    "SuggestionConflictError",
    "SuggestionError",
    "SuggestionNotFoundError",
    "accept",
    "dismiss",
    "findings_from_lint",
    "get_suggestion",
    "scan",
]

DEFAULT_BRANCH_PREFIX = "chiffon/suggestion-"
RUN_HISTORY = 500
FAILED = "run-failed"
_BRANCH = re.compile(r"^(?!-)(?!.*\.\.)(?!.*//)(?!.*@\{)[A-Za-z0-9._/-]{1,200}(?<![./])(?<!\.lock)$")
_LOCKS: dict[Path, asyncio.Lock] = {}


class SuggestionError(RuntimeError):
    """A suggestion could not be accepted; nothing was committed and it stays open."""


class SuggestionNotFoundError(SuggestionError):
    pass


class SuggestionConflictError(SuggestionError):
    """The request does not fit the suggestion's state (not open, branch exists, ...)."""


@dataclass(frozen=True)
class ScanResult:
    found: int
    new: int
    implemented: int
    by_source: dict[str, int]
    revision: str | None


@dataclass(frozen=True)
class AcceptResult:
    suggestion: Suggestion
    commit: str | None
    branch: str | None
    lint_before: int | None
    lint_after: int | None
    regenerated: bool = False
    files: list[str] = field(default_factory=list)


def _lock(root: Path) -> asyncio.Lock:
    return _LOCKS.setdefault(root.resolve(), asyncio.Lock())


# Findings ---------------------------------------------------------------------------------------


def findings_from_lint(report: lint.LintReport, texts: dict[str, str]) -> list[Finding]:
    """ansible-lint findings as :class:`Finding` rows, with a patch where a fixer knows the rule."""
    found = []
    for item in report.findings:
        text = texts.get(item.path)
        lines = text.splitlines() if text is not None else []
        flagged = lines[item.line - 1].strip() if item.line and 0 < item.line <= len(lines) else ""
        body = item.body.removeprefix("Task/Handler: ").strip()
        key = body if body and item.body.startswith("Task/Handler:") else flagged or item.message
        fixed = fixers.fix(item.rule, text, item.line) if text is not None else None
        reasoning = f"ansible-lint {item.rule}: {item.message}"
        if body and body != key:
            reasoning += f" ({body})"
        if item.url:
            reasoning += f" See {item.url}"
        found.append(
            Finding(
                source=LINT,
                rule=item.rule,
                file=item.path,
                line=item.line,
                reasoning=reasoning,
                key=key,
                patch=fixers.unified_patch(item.path, text, fixed) if fixed and text is not None else None,
            )
        )
    return found


def _read_texts(root: Path, paths: Sequence[str]) -> dict[str, str]:
    texts = {}
    for relative in set(paths):
        path = root / relative
        with contextlib.suppress(OSError, UnicodeDecodeError):
            if path.is_file() and path.resolve().is_relative_to(root.resolve()):
                texts[relative] = path.read_text(encoding="utf-8")
    return texts


async def _lint_findings(
    tree: Path, paths: Sequence[str], time_limit: float
) -> tuple[lint.LintReport, list[Finding]]:
    report = await lint.run_ansible_lint(tree, paths, timeout=time_limit)
    texts = _read_texts(tree, [f.path for f in report.findings])
    return report, findings_from_lint(report, texts)


async def _run_findings(store: Store, tree: Path, repo_files: Any) -> list[Finding]:
    history = await store.list_runs(limit=RUN_HISTORY)
    repeats = [run for group in runs.repeated_runs(history).values() for run in group[1:]]
    failures = [run for run in history if run.status in (RunStatus.FAILED, RunStatus.TIMEOUT)]
    wanted = {run.id: run for run in [*repeats, *failures]}
    if not wanted:
        return []
    events: dict[str, list[AnsibleEvent]] = {run_id: await store.list_run_events(run_id) for run_id in wanted}
    intents = await store.get_intents({run.intent for run in wanted.values()})
    playbooks: dict[tuple[str, str], str | None] = {}
    for name, intent in intents.items():
        plan = intent.status.plan if intent.status else None
        for step in intent.spec.steps:
            playbooks[(name, step.name)] = step.playbook
        for planned in plan.steps if plan else []:
            playbooks[(name, planned.name)] = planned.playbook or playbooks.get((name, planned.name))

    def playbook_of(run: Run) -> str | None:
        return playbooks.get((run.intent, run.step))

    return runs.not_idempotent(history, events, repo_files, playbook_of) + runs.failed_steps(
        history, events, repo_files, playbook_of
    )


async def _all_findings(
    store: Store | None, tree: Path, time_limit: float, *, lint: bool = True
) -> list[Finding]:
    lint_found = (await _lint_findings(tree, (), time_limit))[1] if lint else []
    repo_files = await asyncio.to_thread(load_repo, tree)
    found = lint_found + static.check_repo(repo_files)
    if store is not None:
        found += await _run_findings(store, tree, repo_files)
    return with_fingerprints(_drop_duplicates(found))


def _drop_duplicates(found: list[Finding]) -> list[Finding]:
    """A static shell finding where ansible-lint already flagged the same task says nothing new."""
    lint_lines = {
        (f.file, f.line) for f in found if f.source == LINT and f.rule == "command-instead-of-module"
    }
    return [
        f
        for f in found
        if not (
            f.source == STATIC
            and f.rule == "shell-instead-of-module"
            and (f.file, f.line) in lint_lines
            and f.patch is None
        )
    ]


# Worktrees --------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _checkout(root: Path) -> AsyncIterator[tuple[Path, str | None]]:
    """A temporary worktree of ``HEAD`` (detached), or the folder itself when it is not a git repo."""
    repo = GitRepo(root)
    revision = await repo.resolve("HEAD") if (root / ".git").exists() else None
    if revision is None:
        yield root, None
        return
    scratch = Path(tempfile.mkdtemp(prefix="chiffon-suggest-"))
    tree = scratch / "tree"
    await repo.git("worktree", "add", "-q", "--detach", str(tree), revision)
    try:
        yield tree, revision
    finally:
        with contextlib.suppress(GitError):
            await repo.git("worktree", "remove", "--force", str(tree))
        shutil.rmtree(scratch, ignore_errors=True)
        with contextlib.suppress(GitError):
            await repo.git("worktree", "prune")


# Scan -------------------------------------------------------------------------------------------


async def scan(store: Store, infra_root: Path, *, lint_timeout: float = 300, lint: bool = True) -> ScanResult:
    """Find, store and reconcile the suggestions for the committed state of ``infra_root``.

    ``lint=False`` skips ansible-lint (tens of seconds on a real repo) and leaves its
    suggestions as they are: the quick scan the controller runs after every batch of runs.
    """
    if not infra_root.is_dir():
        raise SuggestionError(f"the homelab-infra repo {infra_root} does not exist")
    async with _lock(infra_root), _checkout(infra_root) as (tree, revision):
        found = await _all_findings(store, tree, lint_timeout, lint=lint)
        before = {s.fingerprint: s for s in await store.list_suggestions()}
        for finding in found:
            await store.add_suggestion(
                category=finding.category,
                file=finding.file,
                line=finding.line,
                reasoning=finding.reasoning,
                patch=finding.patch,
                fingerprint=finding.fingerprint,
            )
        seen = {f.fingerprint for f in found}
        implemented = 0
        for suggestion in before.values():
            source, rule = split_category(suggestion.category)
            gone = suggestion.fingerprint not in seen
            fixable = (source == LINT and lint) or source == STATIC or rule == FAILED
            if suggestion.status in ("open", "accepted") and gone and fixable:
                implemented += await store.set_suggestion_status(suggestion.id, "implemented")
            elif suggestion.status == "implemented" and not gone and rule == FAILED:
                # The same failure came back: its suggestion is worth reading again.
                await store.set_suggestion_status(suggestion.id, "open")
        by_source: dict[str, int] = {}
        for finding in found:
            by_source[finding.source] = by_source.get(finding.source, 0) + 1
        return ScanResult(
            found=len(found),
            new=len(seen - set(before)),
            implemented=implemented,
            by_source=by_source,
            revision=revision,
        )


# Accept / dismiss -------------------------------------------------------------------------------


async def get_suggestion(store: Store, suggestion_id: int) -> Suggestion:
    for suggestion in await store.list_suggestions():
        if suggestion.id == suggestion_id:
            return suggestion
    raise SuggestionNotFoundError(f"suggestion {suggestion_id} not found")


def _patched_files(patch: str) -> list[str]:
    files = []
    for line in patch.splitlines():
        if line.startswith("+++ "):
            target = line[4:].strip().split("\t")[0]
            if target != "/dev/null":
                path = target.removeprefix("b/")
                pure = PurePosixPath(path)
                if pure.is_absolute() or ".." in pure.parts or pure.parts[:1] == (".git",):
                    raise SuggestionError(f"the patch writes {path!r}, which is outside the repository")
                files.append(path)
    if not files:
        raise SuggestionError("the patch names no file to change")
    return files


async def _applies(tree: Path, patch: str) -> bool:
    try:
        await run_git(tree, "apply", "--check", "-", stdin=patch.encode())
    except GitError:
        return False
    return True


async def _fresh_finding(tree: Path, suggestion: Suggestion, time_limit: float) -> Finding | None:
    """The suggestion's finding as it is at ``tree``, found again by fingerprint (None: it is gone)."""
    source, _ = split_category(suggestion.category)
    if source == LINT:
        _, found = await _lint_findings(tree, [suggestion.file], time_limit)
    elif source == STATIC:
        found = static.check_repo(await asyncio.to_thread(load_repo, tree))
    else:
        return None
    return next((f for f in with_fingerprints(found) if f.fingerprint == suggestion.fingerprint), None)


def _commit_message(
    suggestion: Suggestion, actor: Identity, before: int, after: int, files: list[str]
) -> str:
    source, rule = split_category(suggestion.category)
    where = f"{suggestion.file}:{suggestion.line}" if suggestion.line else suggestion.file
    return (
        f"Fix {rule} in {where}\n\n"
        f"{suggestion.reasoning}\n\n"
        f"Chiffon suggestion {suggestion.id} ({source}), accepted by {actor}. "
        f"ansible-lint findings in {', '.join(files)}: {before} before, {after} after.\n\n"
        f"Signed-off-by: {actor}\n"
    )


async def _audit(
    store: Store,
    actor: Identity,
    action: str,
    suggestion: Suggestion,
    outcome: Outcome,
    details: dict[str, Any],
) -> None:
    await store.record_audit(
        AuditEvent(
            time=datetime.now(UTC),
            actor=str(actor),
            action=action,
            resource=f"Suggestion/{suggestion.id}",
            outcome=outcome,
            details={
                "category": suggestion.category,
                "file": suggestion.file,
                "line": suggestion.line,
                **details,
            },
        )
    )


async def accept(
    store: Store,
    infra_root: Path,
    suggestion_id: int,
    actor: Identity,
    *,
    branch: str | None = None,
    on_current_branch: bool = False,
    lint_timeout: float = 300,
) -> AcceptResult:
    """Apply, prove and commit a suggestion's patch; see the module docstring."""
    suggestion = await get_suggestion(store, suggestion_id)
    if suggestion.status != "open":
        raise SuggestionConflictError(
            f"suggestion {suggestion_id} is {suggestion.status}; only open ones can be accepted"
        )
    if branch is not None and not _BRANCH.match(branch):
        raise SuggestionConflictError(f"{branch!r} is not a valid branch name")
    if suggestion.patch is None:
        # Nothing to commit: accepting records the decision; the fix is a person's to make.
        await store.set_suggestion_status(suggestion.id, "accepted")
        await _audit(store, actor, "suggestion.accept", suggestion, Outcome.SUCCESS, {"commit": None})
        return AcceptResult(await get_suggestion(store, suggestion_id), None, None, None, None)
    try:
        async with _lock(infra_root):
            result = await _accept_patch(
                suggestion, infra_root, actor, branch, on_current_branch and branch is None, lint_timeout
            )
    except (SuggestionError, GitError, lint.LintError) as exc:
        await _audit(store, actor, "suggestion.accept", suggestion, Outcome.FAILURE, {"error": str(exc)})
        if isinstance(exc, SuggestionError):
            raise
        raise SuggestionError(str(exc)) from exc
    await store.set_suggestion_status(suggestion.id, "accepted")
    await _audit(
        store,
        actor,
        "suggestion.accept",
        suggestion,
        Outcome.SUCCESS,
        {
            "commit": result.commit,
            "branch": result.branch,
            "lintBefore": result.lint_before,
            "lintAfter": result.lint_after,
            "regenerated": result.regenerated,
        },
    )
    return AcceptResult(
        await get_suggestion(store, suggestion_id),
        result.commit,
        result.branch,
        result.lint_before,
        result.lint_after,
        result.regenerated,
        result.files,
    )


async def _accept_patch(
    suggestion: Suggestion,
    infra_root: Path,
    actor: Identity,
    branch: str | None,
    on_current_branch: bool,
    time_limit: float,
) -> AcceptResult:
    assert suggestion.patch is not None
    repo = GitRepo(infra_root)
    if not (infra_root / ".git").exists() or await repo.resolve("HEAD") is None:
        raise SuggestionConflictError(
            f"{infra_root} is not a git repository with commits; nothing can be committed"
        )
    current = await repo.current_branch()
    if on_current_branch:
        if current is None:
            raise SuggestionConflictError(f"{infra_root} has no branch checked out (detached HEAD)")
        target = current
    else:
        target = branch or f"{DEFAULT_BRANCH_PREFIX}{suggestion.id}"
        if await repo.resolve(f"refs/heads/{target}") is not None:
            raise SuggestionConflictError(f"branch {target} already exists in {infra_root}")
    async with _checkout(infra_root) as (tree, revision):
        patch, regenerated = suggestion.patch, False
        if not await _applies(tree, patch):
            fresh = await _fresh_finding(tree, suggestion, time_limit)
            if fresh is None:
                raise SuggestionError(
                    f"the patch no longer applies to {suggestion.file} at {str(revision)[:12]} and the "
                    "finding is not there any more; run a scan to update the suggestions"
                )
            if fresh.patch is None or not await _applies(tree, fresh.patch):
                raise SuggestionError(
                    f"the patch no longer applies to {suggestion.file} at {str(revision)[:12]}, and no new "
                    "one could be made; fix it by hand or dismiss it"
                )
            patch, regenerated = fresh.patch, True
        files = _patched_files(patch)
        before = (await lint.run_ansible_lint(tree, files, timeout=time_limit)).count()
        await run_git(tree, "apply", "-", stdin=patch.encode())
        after_report = await lint.run_ansible_lint(tree, files, timeout=time_limit)
        after = after_report.count()
        source, rule = split_category(suggestion.category)
        if source == LINT:
            texts = _read_texts(tree, [f.path for f in after_report.findings])
            remaining = with_fingerprints(findings_from_lint(after_report, texts))
            still = any(f.fingerprint == suggestion.fingerprint for f in remaining)
        else:
            still = await _fresh_finding(tree, suggestion, time_limit) is not None
        if still:
            raise SuggestionError(
                f"after the patch, {source} still reports {rule} in {suggestion.file} "
                f"(ansible-lint findings {before} before, {after} after); nothing was committed"
            )
        if after > before or (source == LINT and after >= before):
            raise SuggestionError(
                f"the patch did not improve lint for {', '.join(files)}: {before} findings before, {after} "
                "after; nothing was committed"
            )
        changes: dict[str, bytes | None] = {path: (tree / path).read_bytes() for path in files}
        message = _commit_message(suggestion, actor, before, after, files)
        if on_current_branch:
            commit = await _commit_on_current(repo, revision, changes, message, actor)
        else:
            await run_git(tree, "switch", "-q", "-c", target)
            commit = await GitRepo(tree).commit(changes, message, actor)
        if commit is None:
            raise SuggestionError("the patch changed nothing; nothing was committed")
        return AcceptResult(suggestion, commit, target, before, after, regenerated=regenerated, files=files)


async def _commit_on_current(
    repo: GitRepo, revision: str | None, changes: dict[str, bytes | None], message: str, actor: Identity
) -> str | None:
    if await repo.resolve("HEAD") != revision:
        raise SuggestionConflictError("the branch moved while the patch was checked; try again")
    dirty = set(await repo.uncommitted_files()) & set(changes)
    if dirty:
        raise SuggestionConflictError(
            f"{', '.join(sorted(dirty))} has uncommitted edits in {repo.path}; commit or discard them first"
        )
    return await repo.commit(changes, message, actor)


async def dismiss(store: Store, suggestion_id: int, actor: Identity, *, reason: str = "") -> Suggestion:
    suggestion = await get_suggestion(store, suggestion_id)
    if suggestion.status != "open":
        raise SuggestionConflictError(
            f"suggestion {suggestion_id} is {suggestion.status}; only open ones can be dismissed"
        )
    await store.set_suggestion_status(suggestion.id, "dismissed")
    await _audit(store, actor, "suggestion.dismiss", suggestion, Outcome.SUCCESS, {"reason": reason})
    return await get_suggestion(store, suggestion_id)
