"""The git source: makes the store's intent specs match the intents repo.

Like Flux's source-controller, only *committed* content counts: the source
reads the tree of a ref with git plumbing, never the working copy, so a
half-saved file in an editor is never applied. Uncommitted edits are reported
in the source status so a person knows why their change is not live yet.

A sync is level-based and idempotent: read every intent file at the ref,
decide what to upsert and what to prune (pure functions below), then write.
One bad file is reported with its path and line and does not stop the others;
intents that came from a file that cannot be read right now are kept, never
pruned, so a typo cannot delete a deployment.

With commit verification on (``SourceConfig.verify``, like Flux's
``spec.verify``), the commit at the tip of the ref must be signed by a trusted
key before anything is read from it. A tip that is not is refused as a whole:
the store keeps the intents of the last commit that was synced (nothing is
upserted or pruned), the source status says which commit was refused and why,
and one ``source.verify`` audit event records it. The next validly signed tip
syncs as usual and clears the error. See :mod:`chiffon.gitsign`.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath

from chiffon.controllers.manager import sleep_until
from chiffon.gitrepo import GitError, GitRepo, TreeEntry, is_remote_url, watch_changes
from chiffon.gitsign import CommitVerifier, Verdict, VerifyConfig
from chiffon.resources import AuditEvent, DeploymentIntent, FileError, Outcome, SourceStatus
from chiffon.resources.yamlio import ParsedIntent, ParseResult, ResourceError, YamlDocument, parse_intents
from chiffon.store import SourceRef, Store, StoreError, UpsertResult

log = logging.getLogger(__name__)
# A sync that parsed this many files freezes what exists (see GitSource._parse).
FREEZE_AFTER_PARSING = 200

INTENT_SUFFIXES = (".yaml", ".yml")
SOURCE_ACTOR = "git-source"
VERIFY_ACTION = "source.verify"
RESYNC_INTERVAL_SECONDS = 300.0
MAX_BACKOFF_SECONDS = 300.0
STATUS_REFRESH = timedelta(minutes=1)
WATCH_ARM_SECONDS = 1.0

ChangeCallback = Callable[[Sequence[str]], Awaitable[None]]


def utcnow() -> datetime:
    return datetime.now(UTC)


# Pure decisions ----------------------------------------------------------------------------


def is_intent_file(path: str, under: str = "") -> bool:
    """YAML files below ``under``, skipping hidden files and folders (``.github/``, ``.pre-commit…``)."""
    relative = PurePosixPath(path)
    if under.strip("/"):
        base = PurePosixPath(under.strip("/"))
        if not relative.is_relative_to(base):
            return False
        relative = relative.relative_to(base)
    return relative.suffix in INTENT_SUFFIXES and not any(part.startswith(".") for part in relative.parts)


@dataclass(frozen=True)
class ParsedFile:
    path: str
    blob: str
    result: ParseResult


@dataclass(frozen=True)
class DesiredIntent:
    intent: DeploymentIntent
    path: str
    blob: str


@dataclass(frozen=True)
class SyncPlan:
    upserts: list[str]
    prunes: list[str]
    unchanged: list[str]


def collect_desired(files: Sequence[ParsedFile]) -> tuple[dict[str, DesiredIntent], list[FileError]]:
    """Every intent defined at the ref, keyed by name; a name defined twice is an error on the later file."""
    desired: dict[str, DesiredIntent] = {}
    errors: list[FileError] = []
    for parsed in sorted(files, key=lambda f: f.path):
        errors.extend(error.to_file_error() for error in parsed.result.errors)
        for item in parsed.result.intents:
            name = item.intent.metadata.name
            first = desired.get(name)
            if first is not None:
                errors.append(
                    FileError(
                        path=parsed.path,
                        line=item.document.line,
                        field="metadata.name",
                        message=f"intent {name!r} is already defined in {first.path}",
                    )
                )
                continue
            desired[name] = DesiredIntent(item.intent, parsed.path, parsed.blob)
    return desired, errors


def plan_sync(
    desired: Mapping[str, DesiredIntent],
    known: Mapping[str, SourceRef],
    errored_paths: Iterable[str],
) -> SyncPlan:
    """Decide what to write. Unchanged files cost no database write at all."""
    upserts, unchanged = [], []
    for name, want in sorted(desired.items()):
        have = known.get(name)
        if have is not None and have.blob == want.blob and have.path == want.path:
            unchanged.append(name)
        else:
            upserts.append(name)
    keep = set(errored_paths)
    prunes = sorted(name for name, ref in known.items() if name not in desired and ref.path not in keep)
    return SyncPlan(upserts=upserts, prunes=prunes, unchanged=unchanged)


def status_worth_writing(saved: SourceStatus | None, status: SourceStatus, now: datetime) -> bool:
    """A resync that changed nothing writes nothing; the sync time is refreshed once a minute."""
    if saved is None or saved.last_sync_at is None:
        return True
    unchanged = saved.model_copy(update={"last_sync_at": status.last_sync_at}) == status
    return not unchanged or now - saved.last_sync_at >= STATUS_REFRESH


def revision_for(want: DesiredIntent, have: SourceRef | None, head: str) -> str:
    """The commit an intent was last changed in, as far as this source has seen."""
    return have.revision if have is not None and have.blob == want.blob else head


def refusal_message(verdict: Verdict, kept: str | None) -> str:
    """The status error for a tip that failed verification: which commit, why, and what stays."""
    stays = f"the intents stay as they were at {kept[:7]}" if kept else "the intents stay as they are"
    return f"{verdict.describe()}; not synced, {stays} until a commit signed by a trusted key is on top"


# The source -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceConfig:
    location: str
    checkout_dir: Path
    name: str = "intents"
    branch: str | None = None
    path: str = ""
    poll_interval: float = 60.0
    resync_interval: float = RESYNC_INTERVAL_SECONDS
    verify: VerifyConfig | None = None  # commits must be signed (None: no check)

    @property
    def is_remote(self) -> bool:
        return is_remote_url(self.location)


@dataclass
class SyncReport:
    revision: str | None
    results: list[UpsertResult] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    unchanged: int = 0
    errors: list[FileError] = field(default_factory=list)
    blobs: dict[str, str] = field(default_factory=dict)  # every intent defined at the ref -> its blob
    refused: str | None = None  # why the tip was not synced (commit verification); revision is then None

    @property
    def changed(self) -> list[str]:
        return sorted({r.name for r in self.results if r.outcome != "unchanged"} | set(self.pruned))


class GitSource:
    """Watches one intents repo and keeps the store in step with it."""

    def __init__(
        self,
        config: SourceConfig,
        store: Store,
        *,
        on_change: ChangeCallback | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.config = config
        self.store = store
        self._listeners: list[ChangeCallback] = [on_change] if on_change is not None else []
        self._clock = clock
        self._sync_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._parsed: dict[str, ParseResult] = {}
        self._last_errors: list[FileError] = []
        self._saved: SourceStatus | None = None
        # name -> blob this source last told its listeners about (see sync)
        self._announced: dict[str, str] = {}
        # The last source.verify audit event, (outcome, commit): refusals are audited once per commit,
        # across restarts too. Read from the store when first needed.
        self._verify_audited: tuple[Outcome, str | None] | None = None
        self._verify_audit_read = False
        self.repo = GitRepo(config.checkout_dir if config.is_remote else Path(config.location))
        self.verifier = CommitVerifier(config.verify) if config.verify is not None else None

    # Where to read ---------------------------------------------------------------------

    async def open(self) -> None:
        """Clone a remote repo, or check that a local one exists; load the keys commits are verified with.

        A key file that cannot be used raises SignatureConfigError (a GitError) naming the setting.
        """
        if self.verifier is not None:
            await self.verifier.open()
        if self.config.is_remote:
            self.repo = await GitRepo.clone(self.config.location, self.config.checkout_dir)
        elif not (Path(self.config.location) / ".git").exists():
            raise GitError(f"intents repo {self.config.location} is not a git repository")

    def close(self) -> None:
        """Delete the private keyrings of commit verification (also done at exit)."""
        if self.verifier is not None:
            self.verifier.close()

    async def ref(self) -> str:
        if self.config.is_remote:
            branch = self.config.branch or await self._remote_default_branch()
            return f"refs/remotes/origin/{branch}"
        return f"refs/heads/{self.config.branch}" if self.config.branch else "HEAD"

    async def _remote_default_branch(self) -> str:
        out = await self.repo.git("symbolic-ref", "-q", "--short", "refs/remotes/origin/HEAD")
        return out.decode().strip().removeprefix("origin/") or "main"

    async def refresh(self) -> str | None:
        """Fetch a remote; return the commit to read (None when the branch has no commits)."""
        if self.config.is_remote:
            await self.repo.fetch("origin", self.config.branch)
        return await self.repo.resolve(await self.ref())

    # Sync -------------------------------------------------------------------------------

    async def sync(self) -> SyncReport:
        """Read the ref and converge the store on it. Safe to call from anywhere, any time."""
        async with self._sync_lock:
            revision = await self.refresh()
            if revision is None:
                message = f"{await self.ref()} has no commits yet"
                await self._save_status(None, [], error=message)
                return SyncReport(revision=None)
            verdict = await self.verifier.verify(self.repo, revision) if self.verifier is not None else None
            if verdict is not None and not verdict.ok:
                return await self._refuse(verdict)
            report = await self._converge(revision, verdict.key if verdict is not None else None)
            if verdict is not None:
                await self._verified(verdict)
            news = self._news(report)
        if news:
            for listener in self._listeners:
                await listener(news)
        return report

    def _news(self, report: SyncReport) -> list[str]:
        """What this source's listeners have not been told yet: what this sync changed, and what
        another process's source wrote to the shared store since this one last looked (the API
        syncs what `chiffonctl apply` commits; the controller must still hear of it)."""
        before, self._announced = self._announced, dict(report.blobs)
        moved = {name for name, blob in report.blobs.items() if before.get(name) != blob}
        return sorted(set(report.changed) | moved | (before.keys() - report.blobs.keys()))

    async def _converge(self, revision: str, signed_by: str | None = None) -> SyncReport:
        entries = [
            entry
            for entry in await self.repo.list_files(revision, self.config.path)
            if is_intent_file(entry.path, self.config.path)
        ]
        files = await self._parse(entries)
        desired, errors = collect_desired(files)
        known = await self.store.intent_sources(self.config.name)
        plan = plan_sync(desired, known, {error.path for error in errors})
        author = await self._author(revision) if plan.upserts or plan.prunes else SOURCE_ACTOR
        report = SyncReport(
            revision=revision,
            unchanged=len(plan.unchanged),
            errors=errors,
            blobs={name: want.blob for name, want in desired.items()},
        )
        upserts = [
            (
                desired[name].intent,
                SourceRef(
                    self.config.name,
                    desired[name].path,
                    desired[name].blob,
                    revision_for(desired[name], known.get(name), revision),
                ),
            )
            for name in plan.upserts
        ]
        # One transaction per chunk, audits included: a commit of a thousand intents is a few writes.
        if upserts:
            report.results = await self.store.upsert_intents(
                upserts,
                now=self._clock(),
                audit=lambda result: self._upsert_audit(desired[result.name], result, author, signed_by),
            )
        report.pruned = await self.store.delete_intents(plan.prunes) if plan.prunes else []
        for name in report.pruned:
            details = _signed({"path": known[name].path}, signed_by)
            await self.store.record_audit(self._audit_event("intent.pruned", name, author, revision, details))
        await self._audit_errors(errors, revision)
        await self._save_status(revision, errors, intents=len(desired), signed_by=signed_by)
        return report

    async def _parse(self, entries: Sequence[TreeEntry]) -> list[ParsedFile]:
        """Parse each blob once: an unchanged file is never read or validated again."""
        missing = [entry.blob for entry in entries if entry.blob not in self._parsed]
        contents = await self.repo.read_blobs(missing)
        # One trip to a thread for the lot: a commit of a thousand files is one hand-off, not 1,000.
        self._parsed.update(await asyncio.to_thread(parse_blobs, contents))
        if len(contents) >= FREEZE_AFTER_PARSING:
            # The cache lives as long as its files do; every full collection would walk it
            # again (about 0.1 s per 1,000 intents, several times during a burst). Objects
            # that exist now move to the permanent generation; reference counting still frees them.
            gc.freeze()
        current = {entry.blob for entry in entries}
        self._parsed = {blob: result for blob, result in self._parsed.items() if blob in current}
        return [ParsedFile(e.path, e.blob, _relabel(self._parsed[e.blob], e.path)) for e in entries]

    async def _author(self, revision: str) -> str:
        try:
            return str((await self.repo.commit_info(revision)).author)
        except GitError:
            return SOURCE_ACTOR

    # Commit verification ----------------------------------------------------------------

    async def _refuse(self, verdict: Verdict) -> SyncReport:
        """Leave the store as it is; say in the status (and once in the audit) which commit and why."""
        last = self._saved or await self._stored_status()
        message = refusal_message(verdict, last.revision if last is not None else None)
        if await self._last_verify_audit() != (Outcome.FAILURE, verdict.commit):
            log.warning("source %s: %s", self.config.name, message)
            await self._audit_verify(verdict, Outcome.FAILURE, message)
        if last is not None:
            await self._save_status(
                last.revision, last.file_errors, intents=last.intents, error=message, signed_by=last.signed_by
            )
        else:
            known = await self.store.intent_sources(self.config.name)
            await self._save_status(None, [], intents=len(known), error=message)
        return SyncReport(revision=None, refused=message)

    async def _verified(self, verdict: Verdict) -> None:
        """After a refusal, record once that a signed tip put the source back in step."""
        last = await self._last_verify_audit()
        if last is None or last[0] != Outcome.FAILURE:
            return
        message = f"{verdict.describe()}; synced again"
        log.info("source %s: %s", self.config.name, message)
        await self._audit_verify(verdict, Outcome.SUCCESS, message)

    async def _last_verify_audit(self) -> tuple[Outcome, str | None] | None:
        if not self._verify_audit_read:
            events = await self.store.list_audit(
                resource=f"GitSource/{self.config.name}", action=VERIFY_ACTION, limit=1
            )
            self._verify_audited = (events[0].outcome, events[0].revision) if events else None
            self._verify_audit_read = True
        return self._verify_audited

    async def _audit_verify(self, verdict: Verdict, outcome: Outcome, message: str) -> None:
        details: dict[str, object] = {
            "reason": verdict.reason,
            "message": message,
            "author": await self._author(verdict.commit),
        }
        if verdict.key:
            details["key"] = verdict.key
        if verdict.signer:
            details["signer"] = verdict.signer
        event = AuditEvent(
            time=self._clock(),
            actor=SOURCE_ACTOR,
            action=VERIFY_ACTION,
            resource=f"GitSource/{self.config.name}",
            outcome=outcome,
            revision=verdict.commit,
            details=details,
        )
        await self.store.record_audit(event)
        self._verify_audited = (outcome, verdict.commit)

    async def _stored_status(self) -> SourceStatus | None:
        """This source's status as the store has it (after a restart, before this process wrote one)."""
        for status in await self.store.list_source_statuses():
            if status.name == self.config.name:
                return status
        return None

    # Records ----------------------------------------------------------------------------

    def _upsert_audit(
        self, want: DesiredIntent, result: UpsertResult, author: str, signed_by: str | None = None
    ) -> AuditEvent | None:
        if result.outcome == "unchanged":
            return None
        return self._audit_event(
            f"intent.{result.outcome}",
            result.name,
            author,
            result.revision,
            _signed({"path": want.path, "generation": result.generation}, signed_by),
            service=want.intent.service,
        )

    async def _audit_errors(self, errors: list[FileError], revision: str) -> None:
        """Record file errors once when they appear, not on every resync."""
        new = [error for error in errors if error not in self._last_errors]
        self._last_errors = errors
        for error in new:
            await self.store.record_audit(
                AuditEvent(
                    time=self._clock(),
                    actor=SOURCE_ACTOR,
                    action="source.file_error",
                    resource=f"GitSource/{self.config.name}",
                    outcome=Outcome.FAILURE,
                    revision=revision,
                    details={"error": str(error), "path": error.path},
                )
            )

    def _audit_event(
        self,
        action: str,
        name: str,
        actor: str,
        revision: str | None,
        details: dict[str, object],
        *,
        service: str | None = None,
    ) -> AuditEvent:
        return AuditEvent(
            time=self._clock(),
            actor=actor,
            action=action,
            resource=f"DeploymentIntent/{name}",
            service=service,
            outcome=Outcome.SUCCESS,
            revision=revision,
            details=details,
        )

    async def _save_status(
        self,
        revision: str | None,
        errors: list[FileError],
        *,
        intents: int = 0,
        error: str | None = None,
        signed_by: str | None = None,
    ) -> None:
        uncommitted: list[str] = []
        if not self.config.is_remote:
            uncommitted = [
                path
                for path in await self.repo.uncommitted_files(self.config.path)
                if is_intent_file(path, self.config.path)
            ]
        now = self._clock()
        status = SourceStatus(
            name=self.config.name,
            url=self.config.location,
            branch=self.config.branch or "(default)",
            path=self.config.path,
            revision=revision,
            last_sync_at=now,
            last_error=error,
            intents=intents,
            file_errors=errors,
            uncommitted=uncommitted,
            signed_by=signed_by,
        )
        if not status_worth_writing(self._saved, status, now):
            return
        await self.store.save_source_status(status)
        self._saved = status

    def subscribe(self, listener: ChangeCallback) -> None:
        """Call ``listener`` with the names of intents that changed after every sync."""
        self._listeners.append(listener)

    # Watching ---------------------------------------------------------------------------

    def request_sync(self) -> None:
        """Ask the running watch loop to sync now (a webhook, or another process's commit)."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Sync on every change (local checkout) or every poll interval (remote), until ``stop``."""
        watcher = None if self.config.is_remote else asyncio.create_task(self._watch_local(stop))
        if watcher is not None:
            # The watcher cannot say when it is armed; one catch-up sync shortly after start
            # covers a commit that lands between the first sync and the watch taking effect.
            asyncio.get_running_loop().call_later(WATCH_ARM_SECONDS, self.request_sync)
        interval = self.config.poll_interval if self.config.is_remote else self.config.resync_interval
        failures = 0
        try:
            while not stop.is_set():
                delay = interval
                try:
                    await self.sync()
                    failures = 0
                except (GitError, StoreError, OSError) as exc:
                    failures += 1
                    delay = min(MAX_BACKOFF_SECONDS, 2.0**failures, interval)
                    log.warning("sync of %s failed (retrying in %.0fs): %s", self.config.name, delay, exc)
                    await self._record_failure(exc)
                await sleep_until(delay, stop, self._wake)
                self._wake.clear()
        finally:
            if watcher is not None:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)

    async def _watch_local(self, stop: asyncio.Event) -> None:
        async for _ in watch_changes(self.repo.path, stop):
            self.request_sync()

    async def _record_failure(self, exc: Exception) -> None:
        try:
            await self._save_status(None, self._last_errors, error=str(exc))
        except (StoreError, GitError, OSError):
            log.debug("could not record the sync failure", exc_info=True)


def _signed(details: dict[str, object], signed_by: str | None) -> dict[str, object]:
    """Audit details, with the key that signed the commit when commits are verified."""
    return {**details, "signedBy": signed_by} if signed_by else details


def parse_blobs(contents: Mapping[str, bytes]) -> dict[str, ParseResult]:
    """Parse each blob, keeping only what a sync needs of it (see :func:`slim`)."""
    return {blob: slim(parse_intents(content, blob)) for blob, content in contents.items()}


def slim(result: ParseResult) -> ParseResult:
    """The result without each document's text, data and key lines, which the cache need not hold.

    The cache keeps one entry per intent file for the life of the controller;
    with 10,000 intents the full documents triple its size and every garbage
    collection walks them. A sync only needs each intent and the line it starts at.
    """
    intents = [
        ParsedIntent(
            intent=item.intent,
            document=YamlDocument(
                index=item.document.index, line=item.document.line, data=None, text="", lines={}
            ),
            source=item.source,
        )
        for item in result.intents
    ]
    return ParseResult(intents=intents, errors=result.errors)


def _relabel(result: ParseResult, path: str) -> ParseResult:
    """Parse results are cached by blob; errors must name the file the blob is at now."""
    if not result.errors:
        return result
    errors = [ResourceError(path, e.message, line=e.line, field=e.field) for e in result.errors]
    return ParseResult(intents=result.intents, errors=errors)
