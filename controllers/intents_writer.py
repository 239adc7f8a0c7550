"""Writes intents into the intents repo: ``chiffonctl apply`` and ``delete`` end here.

Apply is all-or-nothing: every document is validated before anything is
written, and the commit lands only if all of them are valid. Each document is
written back where the intent already lives (its own file, or its place in a
multi-document file, with the other documents' comments untouched); a new
intent gets ``<name>.yaml``. The commit's author is the person who applied.
After committing (and pushing, for a remote repo) the writer runs a sync, so
the store already shows the change when the command returns.

Rollback (``chiffonctl rollback NAME --to REV``) is "a git revert of the
intent" in the sense that matters to the reconciler: a new commit puts the
intent's document back to its text at ``REV``, through the same path as apply
(the document is replaced where the intent lives now; the other documents of
its file and their comments stay). Nothing is rewritten: the commit is new, so
the intent gets a new generation, is planned again and goes through approval
like any change. Other intents changed since ``REV`` are left alone, which a
plain ``git revert`` of whole commits would not do.

When the source verifies commits (``intents_verify_commits``), a commit by
Chiffon is signed with its own key (``intents_signing_key``), or not made at
all: without a key the writer refuses (SigningRequiredError, a 409 from the
API) rather than commit something the source would then refuse. It also
refuses to build on a tip that is not validly signed: signing on top of it
would vouch for whatever that commit brought in.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import PurePosixPath

from chiffon.controllers.source import GitSource, SyncReport, is_intent_file
from chiffon.gitrepo import GitError, GitOptions, Identity
from chiffon.resources.yamlio import ParsedIntent, ResourceError, parse_intents, replace_document
from chiffon.store import Store

log = logging.getLogger(__name__)

PUSH_ATTEMPTS = 3
# A commit, a branch or tag, or a relative ref (HEAD~2); never an option or a range.
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/~^@{}-]{0,199}$")

Changes = Mapping[str, bytes | None]
ChangeBuilder = Callable[[str], Awaitable[Changes]]


@dataclass(frozen=True)
class SubmittedFile:
    """A file as the client read it: its name (for error messages) and its bytes."""

    name: str
    content: bytes


@dataclass(frozen=True)
class AppliedIntent:
    name: str
    outcome: str  # created | configured | unchanged
    path: str
    generation: int | None
    revision: str | None


@dataclass(frozen=True)
class ApplyReport:
    revision: str | None
    committed: bool
    intents: list[AppliedIntent]


@dataclass(frozen=True)
class Revision:
    """A commit that touched the file an intent lives in."""

    sha: str
    time: datetime
    author: str
    subject: str


class ApplyError(ValueError):
    """Submitted documents are invalid; nothing was written."""

    def __init__(self, errors: Sequence[ResourceError]) -> None:
        self.errors = list(errors)
        super().__init__("; ".join(str(e) for e in self.errors))


class NotFoundError(LookupError):
    pass


class SigningRequiredError(GitError):
    """Commits must be signed and Chiffon cannot sign this one; nothing was written."""


@dataclass(frozen=True)
class _Location:
    path: str
    index: int
    documents: int


def validate_submission(files: Sequence[SubmittedFile]) -> list[ParsedIntent]:
    """Parse every file; raise ApplyError listing every problem, or return the intents in order."""
    parsed: list[ParsedIntent] = []
    errors: list[ResourceError] = []
    for submitted in files:
        result = parse_intents(submitted.content, submitted.name)
        parsed.extend(result.intents)
        errors.extend(result.errors)
    seen: dict[str, str] = {}
    for item in parsed:
        name = item.intent.metadata.name
        if name in seen:
            errors.append(
                ResourceError(
                    item.source,
                    f"intent {name!r} is also defined in {seen[name]}",
                    line=item.document.line,
                    field="metadata.name",
                )
            )
        seen[name] = item.source
    if not parsed and not errors:
        errors.append(
            ResourceError(
                ", ".join(f.name for f in files) or "request", "no DeploymentIntent documents found"
            )
        )
    if errors:
        raise ApplyError(errors)
    return parsed


def new_intent_path(name: str, folder: str, taken: set[str]) -> str:
    base = PurePosixPath(folder.strip("/")) if folder.strip("/") else PurePosixPath()
    candidate, suffix = str(base / f"{name}.yaml"), 1
    while candidate in taken:
        suffix += 1
        candidate = str(base / f"{name}-{suffix}.yaml")
    return candidate


def commit_message(verb: str, names: Sequence[str], note: str | None) -> str:
    subject = f"{verb} deploymentintent/{names[0]}" if len(names) == 1 else f"{verb} {len(names)} intents"
    body = "\n".join(f"- deploymentintent/{name}" for name in names) if len(names) > 1 else ""
    parts = [subject, note or "", body]
    return "\n\n".join(part for part in parts if part) + "\n"


class IntentsWriter:
    """Commits intents into the repo that ``source`` reads."""

    def __init__(self, source: GitSource) -> None:
        self.source = source

    async def apply(
        self, files: Sequence[SubmittedFile], author: Identity, *, message: str | None = None
    ) -> ApplyReport:
        intents = validate_submission(files)
        names = [item.intent.metadata.name for item in intents]
        committed = await self._commit_with_retry(
            lambda ref: self._apply_changes(intents, ref),
            author,
            commit_message("Apply", names, message),
        )
        report = await self.source.sync()
        return ApplyReport(
            report.revision,
            committed,
            await outcomes(self.source.store, self.source.config.name, names, report),
        )

    async def delete(self, name: str, author: Identity, *, message: str | None = None) -> ApplyReport:
        async def changes(ref: str) -> Changes:
            location = (await self._locations(ref)).get(name)
            if location is None:
                raise NotFoundError(f"deploymentintent/{name} is not in the intents repo")
            return await self._remove_document(ref, location)

        committed = await self._commit_with_retry(changes, author, commit_message("Delete", [name], message))
        report = await self.source.sync()
        return ApplyReport(
            report.revision, committed, [AppliedIntent(name, "deleted", "", None, report.revision)]
        )

    async def rollback(
        self, name: str, to_revision: str, author: Identity, *, message: str | None = None
    ) -> ApplyReport:
        """Commit ``name``'s document as it was at ``to_revision`` (see the module docstring).

        NotFoundError when the revision is not in the history Chiffon reads or the
        intent was not defined there; ApplyError when its old document is no
        longer valid, or when it already has that content (nothing would change).
        """
        target = await self._rollback_target(name, to_revision)
        subject = f"Roll back deploymentintent/{name} to {target[:7]}"
        note = f"Its document is back to its content at {target}."
        text = "\n\n".join(part for part in (subject, message or "", note) if part) + "\n"

        async def changes(ref: str) -> Changes:
            old_text, old = await self._document_at(name, target)
            current = (await self._locations(ref)).get(name)
            if current is not None and await self._document_text(ref, current) == old_text:
                raise _unchanged(name, current.path, target)
            return await self._apply_changes([old], ref)

        committed = await self._commit_with_retry(changes, author, text)
        if not committed:
            raise _unchanged(name, "", target)
        report = await self.source.sync()
        return ApplyReport(
            report.revision,
            committed,
            await outcomes(self.source.store, self.source.config.name, [name], report),
        )

    async def history(self, name: str, *, limit: int = 50) -> tuple[str, list[Revision]]:
        """The file ``name`` lives in now and the commits that touched it, newest first.

        Commits from before the intent moved into this file are not followed.
        """
        source = self.source
        where = (await source.store.intent_sources(source.config.name)).get(name)
        if where is None:
            raise NotFoundError(f"deploymentintent/{name} is not in the intents repo")
        out = await source.repo.git(
            "log", f"-{limit}", "--format=%H%x00%aI%x00%an <%ae>%x00%s", where.revision, "--", where.path
        )
        revisions = []
        for line in out.decode().splitlines():
            sha, when, author, subject = line.split("\0", 3)
            revisions.append(Revision(sha, datetime.fromisoformat(when), author, subject))
        return where.path, revisions

    async def _rollback_target(self, name: str, to_revision: str) -> str:
        """The full commit ``to_revision`` names, if it is in the history of the branch Chiffon reads."""
        wanted = to_revision.strip()
        sha = await self.source.repo.resolve(wanted) if _REVISION.match(wanted) else None
        tip = await self.source.repo.resolve(await self.source.ref())
        if (
            sha is None
            or tip is None
            or not await self.source.repo.succeeds("merge-base", "--is-ancestor", sha, tip)
        ):
            raise NotFoundError(
                f"revision {to_revision!r} is not in the intents repo's history; "
                f"`chiffonctl history intent/{name}` lists the revisions of this intent"
            )
        return sha

    async def _document_at(self, name: str, revision: str) -> tuple[str, ParsedIntent]:
        """``name``'s document at ``revision``: its text, and the intent validated as an apply would."""
        location = (await self._locations(revision)).get(name)
        if location is None:
            raise NotFoundError(f"deploymentintent/{name} was not defined at revision {revision[:7]}")
        text = await self._document_text(revision, location)
        [parsed] = validate_submission([SubmittedFile(f"{location.path}@{revision[:7]}", text.encode())])
        return text, parsed

    async def _document_text(self, ref: str, location: _Location) -> str:
        result = parse_intents(await self._read_text(ref, location.path), location.path)
        for item in result.intents:
            if item.document.index == location.index:
                return item.document.text
        raise GitError(f"{location.path} changed while it was read at {ref}")

    # Building the change ------------------------------------------------------------------

    async def _apply_changes(self, intents: Sequence[ParsedIntent], ref: str) -> Changes:
        locations = await self._locations(ref)
        taken = {location.path for location in locations.values()}
        taken |= {entry.path for entry in await self.source.repo.list_files(ref, self.source.config.path)}
        contents: dict[str, str] = {}
        for item in intents:
            text = item.document.text if item.document.text.endswith("\n") else item.document.text + "\n"
            location = locations.get(item.intent.metadata.name)
            if location is None:
                path = new_intent_path(item.intent.metadata.name, self.source.config.path, taken)
                taken.add(path)
                contents[path] = text
            elif location.documents == 1:
                contents[location.path] = text
            else:
                current = contents.get(location.path) or await self._read_text(ref, location.path)
                contents[location.path] = replace_document(current, location.index, text)
        return {path: text.encode() for path, text in contents.items()}

    async def _remove_document(self, ref: str, location: _Location) -> Changes:
        if location.documents == 1:
            return {location.path: None}
        current = await self._read_text(ref, location.path)
        return {location.path: replace_document(current, location.index, None).encode()}

    async def _locations(self, ref: str) -> dict[str, _Location]:
        """Where each intent lives at ``ref``: file, document index, documents in the file."""
        source = self.source
        entries = [
            entry
            for entry in await source.repo.list_files(ref, source.config.path)
            if is_intent_file(entry.path, source.config.path)
        ]
        contents = await source.repo.read_blobs(entry.blob for entry in entries)
        locations: dict[str, _Location] = {}
        for entry in entries:
            result = parse_intents(contents[entry.blob], entry.path)
            total = len(result.intents) + len(result.errors)
            for item in result.intents:
                locations.setdefault(
                    item.intent.metadata.name, _Location(entry.path, item.document.index, max(total, 1))
                )
        return locations

    async def _read_text(self, ref: str, path: str) -> str:
        content = await self.source.repo.read_file(ref, path)
        if content is None:
            raise GitError(f"{path} disappeared from {ref}")
        return content.decode()

    # Committing ---------------------------------------------------------------------------

    async def _commit_with_retry(self, build: ChangeBuilder, author: Identity, message: str) -> bool:
        """Build the change against the newest ref, commit, push; retry if someone pushed first."""
        source = self.source
        for attempt in range(1, PUSH_ATTEMPTS + 1):
            ref = await self._prepare_checkout()
            changes = await build(ref)  # first, so that a request that is wrong anyway says so
            sign = await self._signing(ref)
            sha = await source.repo.commit(changes, message, author, sign=sign)
            if sha is None:
                return False
            if not source.config.is_remote:
                return True
            try:
                await source.repo.push("origin", await self._branch())
                return True
            except GitError as exc:
                if attempt == PUSH_ATTEMPTS:
                    raise
                log.info("push rejected (attempt %d), rebuilding on the new tip: %s", attempt, exc)
        return False

    async def _signing(self, ref: str) -> GitOptions | None:
        """How to sign the next commit on ``ref``: None when commits are not verified; else Chiffon's key,
        provided the commit it builds on is itself validly signed."""
        verifier = self.source.verifier
        if verifier is None:
            return None
        if verifier.signer is None:
            raise SigningRequiredError(
                f"commits to the intents repo must be signed (intents_verify_commits={verifier.mode}) and "
                "Chiffon has no key to sign with: set intents_signing_key to a key among "
                "intents_trusted_keys, or commit the change signed with git yourself"
            )
        tip = await self.source.repo.resolve(ref)
        if tip is not None:
            verdict = await verifier.verify(self.source.repo, tip)
            if not verdict.ok:
                raise SigningRequiredError(
                    f"Chiffon signs its commits, and will not sign one on top of an unverified commit: "
                    f"{verdict.describe()}; push a commit signed by a trusted key first"
                )
        return verifier.signer.options

    async def _prepare_checkout(self) -> str:
        """Return the ref to build on; for a remote, reset Chiffon's own clone to the fetched tip."""
        source = self.source
        if source.config.is_remote:
            ref = await source.ref()
            await source.repo.fetch("origin", source.config.branch)
            await source.repo.reset_to(ref)
            return "HEAD"
        branch = await source.repo.current_branch()
        wanted = source.config.branch
        if wanted and branch != wanted:
            raise GitError(
                f"the intents checkout {source.repo.path} has {branch or 'a detached HEAD'} checked out, "
                f"but Chiffon reads {wanted}; check out {wanted} there first"
            )
        return "HEAD"

    async def _branch(self) -> str:
        source = self.source
        ref = await source.ref()
        return ref.removeprefix("refs/remotes/origin/")


def _unchanged(name: str, path: str, revision: str) -> ApplyError:
    return ApplyError(
        [
            ResourceError(
                path or f"deploymentintent/{name}",
                f"deploymentintent/{name} already has its content of revision {revision[:7]}; "
                "nothing would change",
            )
        ]
    )


async def outcomes(
    store: Store, source_name: str, names: Sequence[str], report: SyncReport
) -> list[AppliedIntent]:
    """What each applied intent looks like in the store after the sync."""
    changed = {result.name: result.outcome for result in report.results}
    sources = await store.intent_sources(source_name)
    applied = []
    for name in names:
        intent = await store.get_intent(name)
        ref = sources.get(name)
        applied.append(
            AppliedIntent(
                name=name,
                outcome=changed.get(name, "unchanged"),
                path=ref.path if ref else "",
                generation=intent.metadata.generation if intent else None,
                revision=ref.revision if ref else None,
            )
        )
    return applied
