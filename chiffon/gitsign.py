"""Signed commits in the intents repo: the keys they must be signed with, and Chiffon's own key.

Like Flux's ``GitRepository.spec.verify``: with ``intents_verify_commits`` set to
``gpg`` or ``ssh``, the source reconciles a commit only when the tip it reads is
signed by one of the keys in ``intents_trusted_keys``. As in Flux, only the tip
is checked: whoever signs it vouches for the history below it.

git does the checking (``%G?`` and friends, :meth:`GitRepo.signature`); this
module gives it the trusted keys for one call at a time and judges the answer:

* ``gpg``: the armored public keys are imported into a keyring of Chiffon's
  own (a GNUPGHOME in a private temporary folder, rebuilt whenever the file
  changes), never the user's. ``trust-model always``: being in the file *is*
  the trust decision. ``no-autostart``: checking a signature needs no agent.
* ``ssh``: the allowed signers file is given as ``gpg.ssh.allowedSignersFile``.

The format of a commit's signature is read from the commit object first, so a
commit signed in the other format is refused before any keyring (the user's
own, say) is asked about it.

Chiffon's own commits (``chiffonctl apply``, ``delete``, ``rollback``, chat)
are signed with ``intents_signing_key`` when it is set (:class:`CommitSigner`);
its public key must be among the trusted ones, or Chiffon would refuse its own
commits, which :meth:`CommitVerifier.open` checks before anything runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path

from chiffon.gitrepo import CommitSignature, GitError, GitOptions, GitRepo

log = logging.getLogger(__name__)

FORMATS = ("gpg", "ssh")
MODE_SETTING = "intents_verify_commits"
TRUSTED_KEYS_SETTING = "intents_trusted_keys"
SIGNING_KEY_SETTING = "intents_signing_key"
MAX_KEY_FILE_BYTES = 1024 * 1024
_TOOL_TIMEOUT_SECONDS = 60.0

# Why a commit was accepted or refused: the reason of the source's refusal and of its audit event.
VERIFIED = "Verified"
UNSIGNED = "Unsigned"
UNKNOWN_KEY = "UnknownKey"
BAD_SIGNATURE = "BadSignature"
EXPIRED_KEY = "ExpiredKey"
REVOKED_KEY = "RevokedKey"
UNTRUSTED_FORMAT = "UntrustedFormat"

_FORMAT_NAMES = {"gpg": "a GPG", "ssh": "an SSH", "x509": "an X.509 (gpgsm)"}
# An allowed signers line: principals, options maybe, then the key type and its base64 blob.
_SSH_KEY = re.compile(r"(?:^|\s)((?:ssh|ecdsa|sk)-[A-Za-z0-9@.-]+)\s+(AAAA[A-Za-z0-9+/]+=*)(?:\s|$)")


class SignatureConfigError(GitError):
    """A setting names a key file Chiffon cannot use; the message names the setting and the file."""


@dataclass(frozen=True)
class VerifyConfig:
    """How the intents repo's commits are verified (from the ``intents_*`` settings)."""

    mode: str  # gpg | ssh
    trusted_keys: Path
    signing_key: Path | None = None


@dataclass(frozen=True)
class Verdict:
    """Whether one commit may be synced, and by whose key it was signed."""

    commit: str
    reason: str
    mode: str
    key: str = ""  # GPG primary key fingerprint, or SSH SHA256 fingerprint (a GPG key id when unknown)
    signer: str = ""  # the key's user id, or the SSH principal
    kind: str | None = None  # the signature's format as read from the commit

    @property
    def ok(self) -> bool:
        return self.reason == VERIFIED

    def describe(self) -> str:
        """One sentence, e.g. ``commit 1a2b3c4 is not signed``."""
        commit = f"commit {self.commit[:7]}"
        by = f"key {self.key}" if self.key else "a key git could not name"
        if self.signer:
            by += f" ({self.signer})"
        if self.reason == VERIFIED:
            return f"{commit} is signed by {by}"
        if self.reason == UNSIGNED:
            return f"{commit} is not signed"
        if self.reason == UNTRUSTED_FORMAT:
            signed = _FORMAT_NAMES.get(self.kind or "", "an unknown kind of")
            return (
                f"{commit} has {signed} signature, but only {self.mode.upper()} keys are trusted "
                f"({MODE_SETTING}={self.mode})"
            )
        if self.reason == BAD_SIGNATURE:
            return f"{commit} has a bad signature by {by}: the commit is not what was signed"
        if self.reason == EXPIRED_KEY:
            return f"{commit} is signed by {by}, which has expired"
        if self.reason == REVOKED_KEY:
            return f"{commit} is signed by {by}, which has been revoked"
        return f"{commit} is signed by {by}, which is not one of the trusted keys ({TRUSTED_KEYS_SETTING})"


def judge(commit: str, mode: str, signature: CommitSignature) -> Verdict:
    """Decide from what git said: only a good signature by a trusted key, in the trusted format, passes.

    ``%G?``: G good; U good, but (gpg) the key's validity is unknown or (ssh) the
    key is no allowed signer; B bad; X expired signature; Y expired key; R revoked
    key; E cannot be checked (the key is missing); N no signature.
    """
    if signature.kind is None:
        return Verdict(commit, UNSIGNED, mode)
    if signature.kind != mode:
        return Verdict(commit, UNTRUSTED_FORMAT, mode, kind=signature.kind)
    key = signature.primary or signature.fingerprint or signature.key
    status = signature.status
    # Chiffon's GPG keyring holds only the trusted keys: a good signature by one of them is
    # enough, whatever validity gpg gives it. For SSH, U is a key that is not an allowed signer.
    if status == "G" or (status == "U" and mode == "gpg"):
        reason = VERIFIED
    elif status == "B":
        reason = BAD_SIGNATURE
    elif status in ("X", "Y"):
        reason = EXPIRED_KEY
    elif status == "R":
        reason = REVOKED_KEY
    else:
        reason = UNKNOWN_KEY
    return Verdict(commit, reason, mode, key=key, signer=signature.signer, kind=signature.kind)


def allowed_signer_keys(text: str, path: Path) -> frozenset[str]:
    """The ``TYPE BASE64`` keys of an allowed signers file; a line that is not one is an error."""
    keys = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _SSH_KEY.search(line)
        if match is None or match.start(1) == 0:
            raise SignatureConfigError(
                f"{TRUSTED_KEYS_SETTING}: {path}:{number} is not an allowed signers line "
                "(PRINCIPALS [OPTIONS] KEYTYPE BASE64KEY, e.g. `alice@example.com ssh-ed25519 AAAA…`)"
            )
        keys.add(f"{match.group(1)} {match.group(2)}")
    return frozenset(keys)


def gpg_fingerprints(colons: str, record: str) -> list[str]:
    """Primary key fingerprints from ``gpg --with-colons`` output (``record``: ``pub`` or ``sec``)."""
    fingerprints, primary = [], False
    for line in colons.splitlines():
        fields = line.split(":")
        if fields[0] in ("pub", "sec", "sub", "ssb"):
            primary = fields[0] == record
        elif fields[0] == "fpr" and primary and len(fields) > 9:
            fingerprints.append(fields[9])
            primary = False
    return fingerprints


def read_key_file(path: Path, setting: str) -> bytes:
    """The bytes of a key file, or a SignatureConfigError naming the setting and the file."""
    try:
        content = path.read_bytes()
    except FileNotFoundError:
        raise SignatureConfigError(f"{setting}: {path} does not exist") from None
    except IsADirectoryError:
        raise SignatureConfigError(f"{setting}: {path} is a folder, not a key file") from None
    except OSError as exc:
        raise SignatureConfigError(f"{setting}: cannot read {path}: {exc.strerror or exc}") from None
    if len(content) > MAX_KEY_FILE_BYTES:
        raise SignatureConfigError(f"{setting}: {path} is larger than 1 MiB; it should hold keys only")
    return content


# Programs --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Ran:
    code: int
    stdout: str
    error: str  # the last line of stderr, without gpg's "gpg: " prefix


async def _tool(*args: str, stdin: bytes | None = None) -> _Ran:
    """Run gpg or ssh-keygen (never through a shell)."""
    try:
        process = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "LC_ALL": "C"},
        )
    except FileNotFoundError:
        raise SignatureConfigError(f"{args[0]} is not installed; signed commits need it") from None
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(stdin), _TOOL_TIMEOUT_SECONDS)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise SignatureConfigError(f"{args[0]} took longer than {_TOOL_TIMEOUT_SECONDS:.0f}s") from None
    code = process.returncode if process.returncode is not None else -1
    lines = [line.strip() for line in stderr.decode(errors="replace").splitlines() if line.strip()]
    error = lines[-1].removeprefix("gpg: ") if lines else f"exit status {code}"
    return _Ran(code, stdout.decode(errors="replace"), error)


class _Folders:
    """Private temporary folders (GNUPGHOMEs) an object owns; removed by ``close`` or at exit."""

    def __init__(self, owner: object) -> None:
        self.paths: list[Path] = []
        self._finalizer = weakref.finalize(owner, _remove_keyrings, self.paths)

    def new(self, prefix: str, gpg_conf: str) -> Path:
        # Short (gpg-agent's socket path has a length limit) and 0700 (mkdtemp).
        home = Path(tempfile.mkdtemp(prefix=prefix))
        self.paths.append(home)
        (home / "gpg.conf").write_text(gpg_conf)
        return home

    def remove(self, home: Path) -> None:
        if home in self.paths:
            self.paths.remove(home)
        _remove_keyrings([home])

    def close(self) -> None:
        self._finalizer()


def _remove_keyrings(homes: list[Path]) -> None:
    """Stop the agent a keyring may have started (signing needs one) and delete the keyring."""
    for home in list(homes):
        # Only a keyring that held a secret key has had an agent (checking never starts one).
        if shutil.which("gpgconf") and (home / "private-keys-v1.d").exists():
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(
                    ["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"],
                    check=False,
                    capture_output=True,
                    timeout=10,
                )
        shutil.rmtree(home, ignore_errors=True)
    homes.clear()


# Signing ---------------------------------------------------------------------------------


class CommitSigner:
    """Chiffon's own key: ``options`` is what :meth:`GitRepo.commit` needs to sign with it.

    GPG: the armored secret key is imported into a private keyring (its agent is
    stopped and the keyring deleted by :meth:`close`, or at exit). SSH: the
    private key file is used where it is, so ssh-keygen's own checks apply (no
    passphrase, not readable by others).
    """

    def __init__(self, mode: str, key_file: Path) -> None:
        self.mode = mode
        self.key_file = key_file.expanduser().absolute()
        self.options = GitOptions()
        self.public = ""  # GPG: the primary key's fingerprint; SSH: ``TYPE BASE64``
        self._folders = _Folders(self)

    @classmethod
    async def open(cls, mode: str, key_file: Path) -> CommitSigner:
        """Load and try the key; SignatureConfigError names the setting, the file and what is wrong."""
        signer = cls(mode, key_file)
        try:
            content = read_key_file(signer.key_file, SIGNING_KEY_SETTING)
            await (signer._load_ssh() if mode == "ssh" else signer._load_gpg(content))
        except BaseException:
            signer.close()
            raise
        return signer

    async def _load_ssh(self) -> None:
        ran = await _tool("ssh-keygen", "-y", "-P", "", "-f", str(self.key_file))
        match = _SSH_KEY.search(ran.stdout) if ran.code == 0 else None
        if match is None:
            raise SignatureConfigError(
                f"{SIGNING_KEY_SETTING}: cannot sign with {self.key_file}: "
                f"{ran.error if ran.code else 'ssh-keygen printed no public key'} "
                "(Chiffon needs an SSH private key without a passphrase, readable only by its owner)"
            )
        self.public = f"{match.group(1)} {match.group(2)}"
        self.options = GitOptions(config={"gpg.format": "ssh", "user.signingKey": str(self.key_file)})

    async def _load_gpg(self, content: bytes) -> None:
        # batch + loopback: a key that needs a passphrase fails at once instead of waiting for a pinentry.
        home = self._folders.new("chiffon-gpg-sign-", "batch\npinentry-mode loopback\n")
        imported = await _tool("gpg", "--batch", "--quiet", "--homedir", str(home), "--import", stdin=content)
        listing = await _tool("gpg", "--homedir", str(home), "--with-colons", "--list-secret-keys")
        secret = gpg_fingerprints(listing.stdout, "sec")
        if len(secret) != 1:
            found = f"{len(secret)} GPG secret keys" if secret else "no GPG secret key"
            if not secret and imported.code:
                found += f" (gpg: {imported.error})"
            raise SignatureConfigError(
                f"{SIGNING_KEY_SETTING}: {self.key_file} holds {found}; write the one key Chiffon signs "
                f"with there: `gpg --export-secret-keys --armor KEYID > {self.key_file}`"
            )
        [fingerprint] = secret
        tried = await _tool(
            "gpg", "--homedir", str(home), "--local-user", fingerprint, "--detach-sign", stdin=b"chiffon"
        )
        if tried.code != 0:
            raise SignatureConfigError(
                f"{SIGNING_KEY_SETTING}: cannot sign with key {fingerprint} from {self.key_file}: "
                f"{tried.error} (Chiffon needs a GPG key without a passphrase)"
            )
        self.public = fingerprint
        self.options = GitOptions(
            config={"gpg.format": "openpgp", "user.signingKey": fingerprint}, env={"GNUPGHOME": str(home)}
        )

    def close(self) -> None:
        self._folders.close()


# Verifying -------------------------------------------------------------------------------


class CommitVerifier:
    """Checks commits against the trusted keys, which it re-reads whenever their file changes.

    A file that becomes unreadable or empty while Chiffon runs fails every check
    (SignatureConfigError) rather than letting anything through.
    """

    def __init__(self, config: VerifyConfig) -> None:
        if config.mode not in FORMATS:
            raise SignatureConfigError(f"{MODE_SETTING}: {config.mode!r} is not one of off, gpg, ssh")
        self.mode = config.mode
        self.trusted_keys = config.trusted_keys.expanduser().absolute()
        self.signing_key = config.signing_key
        self.signer: CommitSigner | None = None
        self._digest = ""
        self._trusted: frozenset[str] = frozenset()  # GPG primary fingerprints, or SSH ``TYPE BASE64``
        self._keyring: Path | None = None  # GPG: the keyring holding the trusted keys
        self._folders = _Folders(self)
        self._last: tuple[str, str, Verdict] | None = None  # commit, trusted-keys digest, verdict
        self._lock = asyncio.Lock()

    @property
    def trusted(self) -> frozenset[str]:
        return self._trusted

    async def open(self) -> None:
        """Load the trusted keys and Chiffon's signing key; raise SignatureConfigError on any problem."""
        async with self._lock:
            await self._load()
        if self.signing_key is None:
            return
        signer = await CommitSigner.open(self.mode, self.signing_key)
        if signer.public not in self._trusted:
            signer.close()
            shown = signer.public if self.mode == "gpg" else signer.public[:48] + "…"
            raise SignatureConfigError(
                f"{SIGNING_KEY_SETTING}: the key in {signer.key_file} ({shown}) is not among "
                f"{TRUSTED_KEYS_SETTING} ({self.trusted_keys}), so Chiffon would refuse its own commits; "
                "add its public key there"
            )
        self.signer = signer

    async def verify(self, repo: GitRepo, commit: str) -> Verdict:
        """Judge ``commit``'s signature; the answer is kept until the commit or the keys change."""
        async with self._lock:
            await self._load()
            if self._last is not None and self._last[:2] == (commit, self._digest):
                return self._last[2]
            verdict = judge(commit, self.mode, await repo.signature(commit, self._options(), kind=self.mode))
            self._last = (commit, self._digest, verdict)
            return verdict

    def close(self) -> None:
        if self.signer is not None:
            self.signer.close()
        self._folders.close()

    def _options(self) -> GitOptions:
        if self._keyring is not None:
            return GitOptions(env={"GNUPGHOME": str(self._keyring)})
        return GitOptions(config={"gpg.ssh.allowedSignersFile": str(self.trusted_keys)})

    async def _load(self) -> None:
        content = read_key_file(self.trusted_keys, TRUSTED_KEYS_SETTING)
        digest = hashlib.sha256(content).hexdigest()
        if digest == self._digest:
            return
        if self.mode == "ssh":
            trusted = allowed_signer_keys(content.decode(errors="replace"), self.trusted_keys)
            if not trusted:
                raise SignatureConfigError(
                    f"{TRUSTED_KEYS_SETTING}: {self.trusted_keys} holds no allowed signer "
                    "(one line per key: PRINCIPALS KEYTYPE BASE64KEY)"
                )
        else:
            keyring = self._folders.new("chiffon-gpg-", "trust-model always\nno-autostart\n")
            try:
                trusted = await _import_public_keys(keyring, content, self.trusted_keys)
            except BaseException:
                self._folders.remove(keyring)
                raise
            if self._keyring is not None:
                self._folders.remove(self._keyring)
            self._keyring = keyring
        if self._digest:
            log.info("%s changed: %d trusted keys now", self.trusted_keys, len(trusted))
        self._trusted, self._digest = trusted, digest


async def _import_public_keys(home: Path, content: bytes, path: Path) -> frozenset[str]:
    imported = await _tool("gpg", "--batch", "--quiet", "--homedir", str(home), "--import", stdin=content)
    listing = await _tool("gpg", "--batch", "--homedir", str(home), "--with-colons", "--list-keys")
    fingerprints = gpg_fingerprints(listing.stdout, "pub")
    if not fingerprints:
        why = f" (gpg: {imported.error})" if imported.code else ""
        raise SignatureConfigError(
            f"{TRUSTED_KEYS_SETTING}: {path} holds no GPG public key{why}; "
            f"write them with `gpg --export --armor KEYID >> {path}`"
        )
    return frozenset(fingerprints)
