"""The git adapter: every git operation Chiffon performs goes through here.

We drive the ``git`` command line rather than a binding: it is on every
machine that has a homelab repo, it understands every remote and credential
helper the user already set up, and its plumbing commands (``ls-tree``,
``cat-file --batch``) read a whole tree without touching the working copy.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

DEFAULT_BRANCH = "main"
_GIT_TIMEOUT_SECONDS = 120.0
_SHA = re.compile(r"^[0-9a-f]{40}$")
_SCP_LIKE = re.compile(r"^[\w.-]+@[\w.-]+:")


class GitError(RuntimeError):
    """A git command failed; the message carries git's own words."""


@dataclass(frozen=True)
class Identity:
    name: str
    email: str

    @classmethod
    def parse(cls, text: str) -> Identity:
        """Accept ``Name <email>``, a bare email or a bare name."""
        match = re.match(r"^\s*(.*?)\s*<([^<>]+)>\s*$", text)
        if match and match.group(1):
            return cls(match.group(1), match.group(2))
        if match:
            return cls(match.group(2).split("@")[0], match.group(2))
        if "@" in text:
            return cls(text.split("@")[0], text.strip())
        cleaned = text.strip() or "unknown"
        return cls(cleaned, f"{re.sub(r'[^A-Za-z0-9._-]', '-', cleaned)}@chiffon.local")

    def __str__(self) -> str:
        return f"{self.name} <{self.email}>"


CHIFFON_IDENTITY = Identity("Chiffon", "chiffon@chiffon.local")


@dataclass(frozen=True)
class TreeEntry:
    path: str
    blob: str


@dataclass(frozen=True)
class CommitInfo:
    sha: str
    author: Identity
    subject: str


@dataclass(frozen=True)
class NewCommit:
    """One commit for :meth:`GitRepo.import_commits`: ``files`` written (never deleted) by ``author``."""

    message: str
    author: Identity
    time: datetime
    files: Mapping[str, bytes]


@dataclass(frozen=True)
class GitOptions:
    """Extra ``-c`` settings and environment for one git call, e.g. the keys to sign or verify with.

    Given per call, never written to a repo's config: the user's own keyring and
    signing settings are neither read nor changed.
    """

    config: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CommitSignature:
    """What git says of one commit's signature.

    ``kind`` is read from the commit object itself (``gpg``, ``ssh``, ``x509``, or
    None when it has no signature), so the caller can refuse a format it does not
    trust before any keyring is asked. The rest is git's ``%G?`` (``status``),
    ``%GK`` (``key``), ``%GF`` (``fingerprint``), ``%GP`` (``primary``: the primary
    key of a GPG subkey) and ``%GS`` (``signer``: the user id or SSH principal).
    """

    kind: str | None
    status: str = "N"
    key: str = ""
    fingerprint: str = ""
    primary: str = ""
    signer: str = ""


_SIGNATURE_FORMAT = "%G?%x00%GK%x00%GF%x00%GP%x00%GS"
_SIGNATURE_KINDS = {
    b"-----BEGIN PGP SIGNATURE-----": "gpg",
    b"-----BEGIN SSH SIGNATURE-----": "ssh",
    b"-----BEGIN SIGNED MESSAGE-----": "x509",
}


def signature_kind(raw_commit: bytes) -> str | None:
    """The format of a commit object's signature header, None when it is not signed."""
    headers = raw_commit.split(b"\n\n", 1)[0]
    for line in headers.split(b"\n"):
        name, _, value = line.partition(b" ")
        if name in (b"gpgsig", b"gpgsig-sha256"):
            return _SIGNATURE_KINDS.get(value.strip(), "unknown")
    return None


def is_remote_url(location: str) -> bool:
    """True for anything git fetches over a transport, False for a local folder."""
    return "://" in location or bool(_SCP_LIKE.match(location))


def _git_env(identity: Identity | None = None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("GIT_") or key in {"GIT_SSH_COMMAND", "GIT_SSH", "GIT_ASKPASS"}
    }
    # Never prompt: a server process has no terminal to answer on.
    env["GIT_TERMINAL_PROMPT"] = "0"
    env["LC_ALL"] = "C"
    committer = identity or CHIFFON_IDENTITY
    env.setdefault("GIT_COMMITTER_NAME", CHIFFON_IDENTITY.name)
    env.setdefault("GIT_COMMITTER_EMAIL", CHIFFON_IDENTITY.email)
    env["GIT_AUTHOR_NAME"] = committer.name
    env["GIT_AUTHOR_EMAIL"] = committer.email
    env.update(extra or {})
    return env


async def run_git(
    cwd: Path | None,
    *args: str,
    stdin: bytes | None = None,
    author: Identity | None = None,
    check: bool = True,
    time_limit: float = _GIT_TIMEOUT_SECONDS,
    options: GitOptions | None = None,
) -> bytes:
    """Run one git command and return its stdout; raise GitError with stderr on failure.

    Commits are never signed by the user's own configuration (``commit.gpgSign``);
    only an explicit ``-S`` with the keys in ``options`` signs (see GitRepo.commit).
    """
    config = [f"{key}={value}" for key, value in (options.config.items() if options else ())]
    process = await asyncio.create_subprocess_exec(
        "git",
        "-c",
        "core.quotePath=false",
        "-c",
        "commit.gpgSign=false",
        *(item for setting in config for item in ("-c", setting)),
        *args,
        cwd=str(cwd) if cwd else None,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_git_env(author, options.env if options else None),
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(stdin), time_limit)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise GitError(f"git {args[0]} took longer than {time_limit:.0f}s") from None
    if check and process.returncode != 0:
        message = stderr.decode(errors="replace").strip().splitlines()
        detail = message[-1] if message else f"exit status {process.returncode}"
        raise GitError(f"git {args[0]} failed in {cwd}: {detail}")
    return stdout


class GitRepo:
    """A working copy on disk: the intents repo, the audit repo or homelab-infra."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # Commits from one process go one at a time; git's index.lock covers other processes.
        self._write_lock = asyncio.Lock()

    async def git(self, *args: str, **kwargs: object) -> bytes:
        return await run_git(self.path, *args, **kwargs)  # type: ignore[arg-type]

    # Creating -------------------------------------------------------------------------

    @classmethod
    async def init(
        cls,
        path: Path,
        *,
        branch: str = DEFAULT_BRANCH,
        initial_files: Mapping[str, bytes] | None = None,
        message: str = "Initialise repository",
        sign: GitOptions | None = None,
    ) -> GitRepo:
        """Open the repo at ``path``, creating it with a first commit if it does not exist.

        ``sign``: the first commit is signed with these keys (see :meth:`commit`).
        """
        repo = cls(path)
        if (path / ".git").exists():
            return repo
        path.mkdir(parents=True, exist_ok=True)
        await run_git(path, "init", "-q", "-b", branch)
        files = dict(initial_files or {"README.md": b"# Chiffon repository\n"})
        await repo.commit(files, message, CHIFFON_IDENTITY, sign=sign)
        return repo

    @classmethod
    async def clone(cls, url: str, path: Path, *, branch: str | None = None) -> GitRepo:
        if (path / ".git").exists():
            return cls(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        args = ["clone", "-q", "--no-tags"]
        if branch:
            args += ["--branch", branch]
        await run_git(None, *args, "--", url, str(path))
        return cls(path)

    # Reading --------------------------------------------------------------------------

    async def resolve(self, ref: str) -> str | None:
        """The commit a ref points at, or None when it does not exist (e.g. an empty repo)."""
        out = await run_git(self.path, "rev-parse", "--verify", "-q", f"{ref}^{{commit}}", check=False)
        sha = out.decode().strip()
        return sha if _SHA.match(sha) else None

    async def current_branch(self) -> str | None:
        out = await run_git(self.path, "symbolic-ref", "-q", "--short", "HEAD", check=False)
        return out.decode().strip() or None

    async def list_files(self, ref: str, under: str = "") -> list[TreeEntry]:
        """Every blob in the tree of ``ref`` (below ``under``), without touching the working copy."""
        args = ["ls-tree", "-r", "-z", "--full-tree", ref]
        if under.strip("/"):
            args += ["--", under.strip("/")]
        out = await self.git(*args)
        entries = []
        for record in out.split(b"\0"):
            if not record:
                continue
            meta, _, path = record.partition(b"\t")
            mode, kind, blob = meta.decode().split()
            # Symlinks (120000) and submodules are never read: a link could point outside the repo.
            if kind == "blob" and mode in {"100644", "100755"}:
                entries.append(TreeEntry(path.decode(), blob))
        return entries

    async def read_blobs(self, blobs: Iterable[str]) -> dict[str, bytes]:
        """Read many blobs in one ``git cat-file --batch`` process."""
        wanted = list(dict.fromkeys(blobs))
        if not wanted:
            return {}
        out = await self.git("cat-file", "--batch", stdin=("\n".join(wanted) + "\n").encode())
        contents: dict[str, bytes] = {}
        position = 0
        for blob in wanted:
            header_end = out.index(b"\n", position)
            header = out[position:header_end].decode().split()
            if len(header) < 3 or header[1] == "missing":
                raise GitError(f"blob {blob} is missing from {self.path}")
            size = int(header[2])
            start = header_end + 1
            contents[blob] = out[start : start + size]
            position = start + size + 1
        return contents

    async def read_file(self, ref: str, path: str) -> bytes | None:
        if not await self.succeeds("cat-file", "-e", f"{ref}:{path}"):
            return None
        return await self.git("cat-file", "blob", f"{ref}:{path}")

    async def succeeds(self, *args: str) -> bool:
        """Run a git command only for its exit status."""
        process = await asyncio.create_subprocess_exec(
            "git",
            *args,
            cwd=str(self.path),
            env=_git_env(),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        return await process.wait() == 0

    async def commit_info(self, ref: str) -> CommitInfo:
        out = await self.git("log", "-1", "--format=%H%x00%an%x00%ae%x00%s", ref)
        sha, name, email, subject = out.decode().rstrip("\n").split("\0")
        return CommitInfo(sha, Identity(name, email), subject)

    async def signature(self, commit: str, options: GitOptions, *, kind: str) -> CommitSignature:
        """The signature of ``commit`` as git checks it with the keys in ``options`` (for ``kind``).

        An unsigned commit, or one signed in another format than ``kind``, is not
        given to gpg or ssh-keygen at all: the caller refuses it by its ``kind``.
        """
        found = signature_kind(await self.git("cat-file", "commit", commit))
        if found != kind:
            return CommitSignature(kind=found)
        # %GT is not asked for: git 2.39 aborts on it when gpg reports no trust level.
        out = await self.git(
            "log", "-1", "--no-show-signature", f"--format={_SIGNATURE_FORMAT}", commit, "--", options=options
        )
        fields = [*out.decode(errors="replace").strip("\n").split("\0"), "", "", "", "", ""]
        status, key, fingerprint, primary, signer = fields[:5]
        return CommitSignature(found, status or "N", key, fingerprint, primary, signer)

    async def uncommitted_files(self, under: str = "") -> list[str]:
        """Files changed in the working copy but not committed (they are not applied until committed)."""
        args = ["status", "--porcelain", "-z", "--untracked-files=all"]
        if under.strip("/"):
            args += ["--", under.strip("/")]
        out = await self.git(*args)
        return sorted(record[3:].decode() for record in out.split(b"\0") if len(record) > 3)

    async def log_paths(self, path: str, *, limit: int = 50) -> list[CommitInfo]:
        out = await self.git("log", f"-{limit}", "--format=%H%x00%an%x00%ae%x00%s", "--", path)
        commits = []
        for line in out.decode().splitlines():
            sha, name, email, subject = line.split("\0")
            commits.append(CommitInfo(sha, Identity(name, email), subject))
        return commits

    # Writing --------------------------------------------------------------------------

    async def commit(
        self,
        changes: Mapping[str, bytes | None],
        message: str,
        author: Identity,
        *,
        allow_empty: bool = False,
        sign: GitOptions | None = None,
    ) -> str | None:
        """Write (bytes) or delete (None) files and commit exactly those paths.

        Returns the new commit, or None when the files already had that content.
        Other uncommitted edits in the working copy are left alone and not committed.
        With ``sign`` (``gpg.format``, ``user.signingKey`` and the keyring's
        environment) the commit is signed; a signing failure is a GitError.
        """
        async with self._write_lock:
            paths = [self._safe_path(relative) for relative in changes]
            for relative, content in changes.items():
                target = self.path / relative
                if content is None:
                    target.unlink(missing_ok=True)
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(content)
            await self.git("add", "-A", "--", *paths)
            staged = not await self.succeeds("diff", "--cached", "--quiet", "--", *paths)
            if not allow_empty and not staged:
                return None
            args = ["commit", "-q", "-m", message]
            if allow_empty:
                args.append("--allow-empty")
            if sign is not None:
                args.append("-S")
            await self.git(*args, "--", *paths, author=author, options=sign)
            sha = await self.resolve("HEAD")
            assert sha is not None
            return sha

    async def import_commits(self, commits: Sequence[NewCommit], *, branch: str, parent: str | None) -> str:
        """Append ``commits`` to ``branch`` in one ``git fast-import`` process; returns the new tip.

        One process for hundreds of commits instead of three or four per commit. ``parent``
        must be the branch's tip as the caller saw it (None for a branch with no commit yet):
        fast-import refuses to move a branch that moved meanwhile, so two writers never
        interleave; the loser gets a GitError and its objects are left for ``git gc``.
        If ``branch`` is checked out, the index and working copy then move to the new tip
        (only the new files are written); when they cannot, because someone edited the
        working copy, they are left as they are: the branch is what counts.
        """
        if not commits:
            raise GitError("import_commits needs at least one commit")
        stream = _fast_import_stream(commits, f"refs/heads/{branch}", parent, self._safe_path)
        async with self._write_lock:
            await self.git("fast-import", "--quiet", "--date-format=raw", stdin=stream)
            tip = await self.resolve(f"refs/heads/{branch}")
            if tip is None:
                raise GitError(f"git fast-import left no {branch} branch in {self.path}")
            if await self.current_branch() == branch:
                await run_git(
                    self.path, "read-tree", "-m", "-u", *([parent] if parent else []), tip, check=False
                )
            return tip

    def _safe_path(self, relative: str) -> str:
        """Refuse paths that would write outside the repository or into .git."""
        pure = PurePosixPath(relative)
        if pure.is_absolute() or ".." in pure.parts or not pure.parts or pure.parts[0] == ".git":
            raise GitError(f"refusing to write {relative!r}: it is not a path inside the repository")
        resolved = (self.path / relative).resolve()
        if not resolved.is_relative_to(self.path.resolve()):
            raise GitError(f"refusing to write {relative!r}: it resolves outside the repository")
        return str(pure)

    async def fetch(self, remote: str = "origin", branch: str | None = None) -> None:
        args = ["fetch", "-q", "--prune", remote]
        if branch:
            args.append(f"+refs/heads/{branch}:refs/remotes/{remote}/{branch}")
        await self.git(*args)

    async def push(self, remote: str, branch: str) -> None:
        await self.git("push", "-q", remote, f"HEAD:refs/heads/{branch}")

    async def reset_to(self, ref: str) -> None:
        """Make the working copy exactly ``ref`` (only for clones Chiffon owns)."""
        await self.git("reset", "-q", "--hard", ref)
        await self.git("clean", "-q", "-fd")

    async def revert(self, commit: str, author: Identity, message: str) -> str:
        async with self._write_lock:
            await self.git("revert", "--no-edit", "--no-commit", commit)
            await self.git("commit", "-q", "-m", message, author=author)
            sha = await self.resolve("HEAD")
            assert sha is not None
            return sha


def _fast_import_stream(
    commits: Sequence[NewCommit], ref: str, parent: str | None, safe_path: Callable[[str], str]
) -> bytes:
    """The ``git fast-import`` input that appends ``commits`` to ``ref`` on top of ``parent``."""
    now = int(datetime.now(UTC).timestamp())
    out = bytearray(b"feature done\n")
    for index, commit in enumerate(commits):
        when = commit.time if commit.time.tzinfo else commit.time.replace(tzinfo=UTC)
        message = commit.message.encode()
        out += f"commit {ref}\n".encode()
        out += f"author {_raw_identity(commit.author)} {int(when.timestamp())} +0000\n".encode()
        out += f"committer {_raw_identity(CHIFFON_IDENTITY)} {now} +0000\n".encode()
        out += b"data %d\n%s\n" % (len(message), message)
        if index == 0 and parent:
            out += f"from {parent}\n".encode()
        for path, content in commit.files.items():
            relative = safe_path(path)
            if any(character in relative for character in '"\n\r') or relative.startswith(" "):
                raise GitError(f"refusing to write {path!r}: fast-import cannot name it unquoted")
            out += f"M 100644 inline {relative}\n".encode()
            out += b"data %d\n%s\n" % (len(content), content)
    out += b"done\n"
    return bytes(out)


def _raw_identity(identity: Identity) -> str:
    """``Name <email>`` as fast-import accepts it: no angle brackets or line breaks inside."""
    name = re.sub(r"[<>\n\r]", "", identity.name).strip() or "unknown"
    email = re.sub(r"[<>\s]", "", identity.email) or "unknown@chiffon.local"
    return f"{name} <{email}>"


def _is_interesting_change(path: str) -> bool:
    """Working-copy edits and ref moves matter; object-store churn does not."""
    parts = PurePosixPath(path).parts
    if ".git" not in parts:
        return True
    inside = parts[parts.index(".git") + 1 :]
    return bool(inside) and inside[0] in {"HEAD", "refs", "packed-refs", "FETCH_HEAD", "ORIG_HEAD"}


async def watch_changes(path: Path, stop: asyncio.Event) -> AsyncIterator[None]:
    """Yield once per burst of changes to a local checkout (commits included)."""
    from watchfiles import awatch

    async for changes in awatch(
        path,
        stop_event=stop,
        debounce=300,
        step=50,
        recursive=True,
        watch_filter=lambda _change, changed: _is_interesting_change(changed),
    ):
        if changes:
            yield None
