"""Signed commits: the source syncs a tip signed by a trusted key and refuses any other.

Real git, real gpg and ssh-keygen, throwaway ed25519 keys without passphrase.
The store is SQLite only: verification happens on the git side before the store
is touched, and what the store receives (a source status, audit events) is
written the same way on both backends.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from chiffon import cli
from chiffon.api.app import create_app
from chiffon.api.context import ServerContext
from chiffon.controllers.intents_writer import IntentsWriter, SigningRequiredError, SubmittedFile
from chiffon.controllers.source import GitSource, SourceConfig
from chiffon.gitrepo import GitOptions, GitRepo
from chiffon.gitsign import (
    BAD_SIGNATURE,
    UNKNOWN_KEY,
    UNSIGNED,
    UNTRUSTED_FORMAT,
    CommitVerifier,
    SignatureConfigError,
    VerifyConfig,
)
from chiffon.resources import SourceStatus
from chiffon.settings import Settings
from chiffon.store import Store
from tests.conftest import Database
from tests.helpers import ALICE, intent_yaml

pytestmark = pytest.mark.skipif(
    not (shutil.which("gpg") and shutil.which("gpgconf") and shutil.which("ssh-keygen")),
    reason="needs gpg and ssh-keygen",
)


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[Database]:
    """SQLite only (see the module docstring)."""
    yield Database("sqlite", f"sqlite+aiosqlite:///{tmp_path / 'state' / 'chiffon.db'}")


# Keys --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GpgKey:
    home: Path  # the person's own keyring, holding the secret key
    fingerprint: str
    public: Path  # armored public key
    secret: Path  # armored secret key

    @property
    def sign(self) -> GitOptions:
        return GitOptions(
            config={"gpg.format": "openpgp", "user.signingKey": self.fingerprint},
            env={"GNUPGHOME": str(self.home)},
        )


@dataclass(frozen=True)
class SshKey:
    private: Path
    public: str  # TYPE BASE64 COMMENT

    @property
    def sign(self) -> GitOptions:
        return GitOptions(config={"gpg.format": "ssh", "user.signingKey": str(self.private)})

    def allowed(self, principal: str) -> str:
        kind, blob = self.public.split()[:2]
        return f"{principal} {kind} {blob}\n"


@dataclass(frozen=True)
class Keys:
    alice: GpgKey  # a person whose key is trusted
    mallory: GpgKey  # a person whose key is not
    chiffon: GpgKey  # Chiffon's own key, for the writer's commits
    alice_ssh: SshKey
    mallory_ssh: SshKey
    chiffon_ssh: SshKey


def _gpg(home: Path, *args: str, stdout: Path | None = None) -> str:
    out = subprocess.run(
        ["gpg", "--batch", "--quiet", "--homedir", str(home), *args],
        check=True,
        capture_output=True,
        env={"PATH": "/usr/bin:/bin:/usr/local/bin", "LC_ALL": "C"},
    ).stdout
    if stdout is not None:
        stdout.write_bytes(out)
    return out.decode()


def make_gpg_key(folder: Path, name: str) -> GpgKey:
    home = folder / f"{name}-gnupg"
    home.mkdir(mode=0o700)
    _gpg(
        home,
        "--passphrase",
        "",
        "--quick-gen-key",
        f"{name} <{name}@example.com>",
        "ed25519",
        "sign",
        "never",
    )
    listing = _gpg(home, "--with-colons", "--list-secret-keys")
    fingerprint = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
    public, secret = folder / f"{name}.asc", folder / f"{name}-secret.asc"
    _gpg(home, "--armor", "--export", fingerprint, stdout=public)
    _gpg(home, "--armor", "--export-secret-keys", fingerprint, stdout=secret)
    return GpgKey(home, fingerprint, public, secret)


def make_ssh_key(folder: Path, name: str, passphrase: str = "") -> SshKey:
    private = folder / f"{name}_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-C", name, "-f", str(private)], check=True
    )
    return SshKey(private, private.with_suffix(".pub").read_text().strip())


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keys]:
    """Generated once for the module, each kind for three people."""
    folder = tmp_path_factory.mktemp("keys")
    names = ("alice", "mallory", "chiffon")
    made = Keys(*(make_gpg_key(folder, n) for n in names), *(make_ssh_key(folder, n) for n in names))
    yield made
    for key in (made.alice, made.mallory, made.chiffon):
        subprocess.run(["gpgconf", "--homedir", str(key.home), "--kill", "gpg-agent"], check=False)


# Sources ---------------------------------------------------------------------------------

MakeSource = Callable[..., Awaitable[GitSource]]


@pytest.fixture
async def make_source(intents_repo: GitRepo, store: Store, tmp_path: Path) -> AsyncIterator[MakeSource]:
    """A source over the test's intents repo, verifying commits: (mode, trusted keys file, signing key)."""
    opened: list[GitSource] = []

    async def make(mode: str, trusted: Path, signing: Path | None = None) -> GitSource:
        config = SourceConfig(
            str(intents_repo.path), tmp_path / "checkout", verify=VerifyConfig(mode, trusted, signing)
        )
        source = GitSource(config, store)
        opened.append(source)
        await source.open()
        return source

    yield make
    for source in opened:
        source.close()


def trusted_file(tmp_path: Path, *keys: GpgKey) -> Path:
    path = tmp_path / "trusted.asc"
    path.write_bytes(b"".join(key.public.read_bytes() for key in keys))
    return path


def allowed_signers(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "allowed_signers"
    path.write_text("# who may sign the intents repo\n" + "".join(lines))
    return path


async def commit(repo: GitRepo, files: dict[str, str | None], sign: GitOptions | None) -> str:
    changes = {path: (text.encode() if text is not None else None) for path, text in files.items()}
    sha = await repo.commit(changes, "change", ALICE, sign=sign)
    assert sha is not None
    return sha


async def source_status(store: Store) -> SourceStatus:
    [status] = await store.list_source_statuses()
    return status


async def verify_events(store: Store) -> list[tuple[str, str | None, str]]:
    """(outcome, revision, reason) of every source.verify event, oldest first."""
    events = await store.list_audit(action="source.verify")
    return [(e.outcome.value, e.revision, str(e.details.get("reason"))) for e in reversed(events)]


async def port_of(store: Store, name: str) -> object:
    intent = await store.get_intent(name)
    assert intent is not None
    return intent.spec.vars["port"]


# GPG ---------------------------------------------------------------------------------------


async def test_gpg_refuses_unsigned_and_unknown_tips_keeps_the_intents_and_recovers(
    make_source: MakeSource, intents_repo: GitRepo, store: Store, keys: Keys, tmp_path: Path
) -> None:
    trusted = trusted_file(tmp_path, keys.alice)
    source = await make_source("gpg", trusted)
    good = await commit(
        intents_repo, {"kuma.yaml": intent_yaml("kuma"), "proxy.yaml": intent_yaml("proxy")}, keys.alice.sign
    )
    report = await source.sync()
    assert report.revision == good and sorted(report.changed) == ["kuma", "proxy"] and report.refused is None
    status = await source_status(store)
    assert (status.revision, status.signed_by, status.last_error) == (good, keys.alice.fingerprint, None)
    [created] = await store.list_audit(resource="DeploymentIntent/kuma")
    assert created.details["signedBy"] == keys.alice.fingerprint

    # An unsigned commit that changes one intent and deletes the other: nothing of it is applied.
    unsigned = await commit(
        intents_repo, {"kuma.yaml": intent_yaml("kuma", port=9999), "proxy.yaml": None}, None
    )
    report = await source.sync()
    assert report.revision is None and report.changed == []
    assert report.refused is not None and f"commit {unsigned[:7]} is not signed" in report.refused
    assert await port_of(store, "kuma") == 3001
    assert {i.metadata.name for i in await store.list_intents()} == {"kuma", "proxy"}
    status = await source_status(store)
    assert status.revision == good and status.signed_by == keys.alice.fingerprint and status.intents == 2
    assert status.last_error == report.refused and f"as they were at {good[:7]}" in status.last_error
    await source.sync()  # refused again: audited once per refused revision
    assert await verify_events(store) == [("failure", unsigned, UNSIGNED)]
    # So it is after a restart, which also reads from the store what the intents are kept at.
    restarted = await make_source("gpg", trusted)
    assert (await restarted.sync()).refused == report.refused
    assert await verify_events(store) == [("failure", unsigned, UNSIGNED)]
    [refusal] = await store.list_audit(action="source.verify")
    assert refusal.resource == "GitSource/intents" and refusal.details["author"] == str(ALICE)

    # Signed, but by a key that is not trusted.
    forged = await commit(intents_repo, {"kuma.yaml": intent_yaml("kuma", port=6666)}, keys.mallory.sign)
    report = await source.sync()
    assert report.refused is not None and "which is not one of the trusted keys" in report.refused
    assert await port_of(store, "kuma") == 3001
    assert (await verify_events(store))[-1] == ("failure", forged, UNKNOWN_KEY)

    # A trusted signature on top vouches for the tip as a whole (as in Flux): sync resumes.
    fixed = await commit(intents_repo, {"kuma.yaml": intent_yaml("kuma", port=3002)}, keys.alice.sign)
    report = await source.sync()
    assert report.revision == fixed and report.refused is None and sorted(report.changed) == ["kuma", "proxy"]
    assert await port_of(store, "kuma") == 3002 and await store.get_intent("proxy") is None
    status = await source_status(store)
    assert (status.revision, status.last_error, status.signed_by) == (fixed, None, keys.alice.fingerprint)
    assert (await verify_events(store))[-1] == ("success", fixed, "Verified")


async def test_a_tampered_commit_has_a_bad_signature(
    make_source: MakeSource, intents_repo: GitRepo, store: Store, keys: Keys, tmp_path: Path
) -> None:
    source = await make_source("gpg", trusted_file(tmp_path, keys.alice))
    signed = await commit(intents_repo, {"kuma.yaml": intent_yaml("kuma")}, keys.alice.sign)
    raw = await intents_repo.git("cat-file", "commit", signed)
    tampered = await intents_repo.git("hash-object", "-t", "commit", "-w", "--stdin", stdin=raw + b"more\n")
    await intents_repo.git("update-ref", "refs/heads/main", tampered.decode().strip())
    report = await source.sync()
    assert report.refused is not None and "bad signature" in report.refused
    assert await verify_events(store) == [("failure", tampered.decode().strip(), BAD_SIGNATURE)]
    assert await store.list_intents() == []


async def test_trusted_keys_are_read_again_when_their_file_changes(
    make_source: MakeSource, intents_repo: GitRepo, store: Store, keys: Keys, tmp_path: Path
) -> None:
    trusted = trusted_file(tmp_path, keys.alice)
    source = await make_source("gpg", trusted)
    await commit(intents_repo, {"kuma.yaml": intent_yaml("kuma")}, keys.alice.sign)
    assert (await source.sync()).refused is None
    trusted.write_bytes(keys.mallory.public.read_bytes())  # alice's key is withdrawn
    report = await source.sync()
    # A key gpg does not have is named by its long key id, the end of its fingerprint.
    assert report.refused is not None and f"by key {keys.alice.fingerprint[-16:]}," in report.refused
    trusted.unlink()  # a keys file that disappears fails closed
    with pytest.raises(SignatureConfigError, match=r"intents_trusted_keys: .* does not exist"):
        await source.sync()
    assert [i.metadata.name for i in await store.list_intents()] == ["kuma"]


# SSH ---------------------------------------------------------------------------------------


async def test_ssh_signatures_by_allowed_signers_only(
    make_source: MakeSource, intents_repo: GitRepo, store: Store, keys: Keys, tmp_path: Path
) -> None:
    source = await make_source("ssh", allowed_signers(tmp_path, keys.alice_ssh.allowed("alice@example.com")))
    good = await commit(intents_repo, {"kuma.yaml": intent_yaml("kuma")}, keys.alice_ssh.sign)
    assert (await source.sync()).revision == good
    status = await source_status(store)
    assert status.signed_by is not None and status.signed_by.startswith("SHA256:")

    cases = [
        (None, UNSIGNED, "is not signed"),
        (keys.mallory_ssh.sign, UNKNOWN_KEY, "which is not one of the trusted keys"),
        (keys.alice.sign, UNTRUSTED_FORMAT, "has a GPG signature, but only SSH keys are trusted"),
    ]
    for port, (sign, reason, said) in enumerate(cases, start=4000):
        refused = await commit(intents_repo, {"kuma.yaml": intent_yaml("kuma", port=port)}, sign)
        report = await source.sync()
        assert report.refused is not None and said in report.refused, reason
        assert (await verify_events(store))[-1] == ("failure", refused, reason)
        assert await port_of(store, "kuma") == 3001
    fixed = await commit(intents_repo, {"kuma.yaml": intent_yaml("kuma", port=3002)}, keys.alice_ssh.sign)
    assert (await source.sync()).revision == fixed and await port_of(store, "kuma") == 3002
    assert (await source_status(store)).last_error is None


async def test_a_gpg_source_refuses_an_ssh_signature(
    make_source: MakeSource, intents_repo: GitRepo, keys: Keys, tmp_path: Path
) -> None:
    source = await make_source("gpg", trusted_file(tmp_path, keys.alice))
    await commit(intents_repo, {"kuma.yaml": intent_yaml("kuma")}, keys.alice_ssh.sign)
    report = await source.sync()
    assert (
        report.refused is not None and "has an SSH signature, but only GPG keys are trusted" in report.refused
    )


# Chiffon's own commits -------------------------------------------------------------------


def submitted(name: str, port: int = 3001) -> list[SubmittedFile]:
    return [SubmittedFile(f"{name}.yaml", intent_yaml(name, port=port).encode())]


async def test_without_a_signing_key_the_writer_refuses_and_the_api_says_409(
    make_source: MakeSource, intents_repo: GitRepo, store: Store, keys: Keys, tmp_path: Path
) -> None:
    source = await make_source("gpg", trusted_file(tmp_path, keys.alice))
    await commit(intents_repo, {"kuma.yaml": intent_yaml("kuma")}, keys.alice.sign)
    await source.sync()
    head = await intents_repo.resolve("HEAD")
    writer = IntentsWriter(source)
    with pytest.raises(SigningRequiredError, match=r"must be signed .*intents_signing_key"):
        await writer.apply(submitted("proxy"), ALICE)
    assert await intents_repo.resolve("HEAD") == head

    context = ServerContext(Settings(home=tmp_path), store, source, writer)
    transport = httpx.ASGITransport(app=create_app(context))
    async with httpx.AsyncClient(transport=transport, base_url="http://chiffon") as api:
        body = {"files": [{"name": "proxy.yaml", "content": intent_yaml("proxy")}]}
        response = await api.post("/api/v1/intents/apply", json=body)
    assert response.status_code == 409, response.text
    assert "must be signed" in response.json()["detail"]
    assert await intents_repo.resolve("HEAD") == head


@pytest.mark.parametrize("mode", ["gpg", "ssh"])
async def test_with_a_signing_key_chiffon_signs_its_commits(
    mode: str, make_source: MakeSource, intents_repo: GitRepo, store: Store, keys: Keys, tmp_path: Path
) -> None:
    person: GpgKey | SshKey
    if mode == "gpg":
        trusted, signing = trusted_file(tmp_path, keys.alice, keys.chiffon), keys.chiffon.secret
        person, chiffon_key = keys.alice, keys.chiffon.fingerprint
    else:
        lines = [
            keys.alice_ssh.allowed("alice@example.com"),
            keys.chiffon_ssh.allowed("chiffon@chiffon.local"),
        ]
        trusted, signing = allowed_signers(tmp_path, *lines), keys.chiffon_ssh.private
        person, chiffon_key = keys.alice_ssh, None
    source = await make_source(mode, trusted, signing)
    await commit(intents_repo, {"README.md": "# intents, signed\n"}, person.sign)
    writer = IntentsWriter(source)
    report = await writer.apply(submitted("kuma"), ALICE)
    assert report.committed and report.revision == await intents_repo.resolve("HEAD")
    assert (await store.get_intent("kuma")) is not None
    status = await source_status(store)
    assert status.last_error is None and status.signed_by is not None
    if chiffon_key is not None:
        assert status.signed_by == chiffon_key
    assert (await intents_repo.commit_info("HEAD")).author == ALICE

    # Chiffon does not sign on top of a commit it would refuse: that would vouch for it.
    await commit(intents_repo, {"kuma.yaml": intent_yaml("kuma", port=7777)}, None)
    head = await intents_repo.resolve("HEAD")
    with pytest.raises(SigningRequiredError, match="will not sign one on top of an unverified commit"):
        await writer.apply(submitted("proxy"), ALICE)
    assert await intents_repo.resolve("HEAD") == head


async def test_a_new_embedded_intents_repo_starts_with_a_signed_commit(keys: Keys, tmp_path: Path) -> None:
    trusted = trusted_file(tmp_path, keys.alice)
    settings = Settings(
        home=tmp_path / "home",
        intents_verify_commits="gpg",
        intents_trusted_keys=trusted,
        intents_signing_key=keys.alice.secret,
    )
    await cli.prepare_git_repos(settings)
    repo = GitRepo(Path(settings.resolved_intents_repo))
    verifier = CommitVerifier(VerifyConfig("gpg", trusted))
    await verifier.open()
    try:
        head = await repo.resolve("HEAD")
        assert head is not None and (await verifier.verify(repo, head)).ok
    finally:
        verifier.close()


# Misconfiguration ------------------------------------------------------------------------


async def _open_error(tmp_path: Path, mode: str, trusted: Path, signing: Path | None = None) -> str:
    verifier = CommitVerifier(VerifyConfig(mode, trusted, signing))
    try:
        with pytest.raises(SignatureConfigError) as raised:
            await verifier.open()
    finally:
        verifier.close()
    return str(raised.value)


async def test_key_files_that_cannot_be_used_are_named_at_startup(keys: Keys, tmp_path: Path) -> None:
    missing = tmp_path / "nope.asc"
    assert await _open_error(tmp_path, "gpg", missing) == f"intents_trusted_keys: {missing} does not exist"
    assert "is a folder" in await _open_error(tmp_path, "ssh", tmp_path)
    garbage = tmp_path / "garbage.asc"
    garbage.write_text("not a key\n")
    said = await _open_error(tmp_path, "gpg", garbage)
    assert said.startswith(f"intents_trusted_keys: {garbage} holds no GPG public key")
    empty = allowed_signers(tmp_path)
    assert "holds no allowed signer" in await _open_error(tmp_path, "ssh", empty)
    bad_line = allowed_signers(tmp_path, keys.alice_ssh.allowed("a@x"), "ssh-ed25519 AAAAC3 no principal\n")
    assert f"{bad_line}:3 is not an allowed signers line" in await _open_error(tmp_path, "ssh", bad_line)

    # Chiffon's own key: untrusted, public only, or protected by a passphrase.
    trusted = trusted_file(tmp_path, keys.alice)
    said = await _open_error(tmp_path, "gpg", trusted, keys.chiffon.secret)
    assert said.startswith("intents_signing_key: the key in") and "would refuse its own commits" in said
    said = await _open_error(tmp_path, "gpg", trusted, keys.alice.public)
    assert "holds no GPG secret key" in said
    locked = make_ssh_key(tmp_path, "locked", passphrase="secret")
    allowed = allowed_signers(tmp_path, keys.alice_ssh.allowed("alice@example.com"))
    said = await _open_error(tmp_path, "ssh", allowed, locked.private)
    assert said.startswith(f"intents_signing_key: cannot sign with {locked.private}") and "passphrase" in said


def test_settings_name_the_mode_and_the_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="intents_verify_commits"):
        Settings(home=tmp_path, intents_verify_commits="pgp")
    with pytest.raises(ValueError, match="intents_verify_commits=ssh needs intents_trusted_keys"):
        Settings(home=tmp_path, intents_verify_commits="ssh")
    with pytest.raises(ValueError, match="intents_signing_key is set but intents_verify_commits is off"):
        Settings(home=tmp_path, intents_signing_key=tmp_path / "key")
    assert Settings(home=tmp_path, intents_verify_commits=False).intents_verify_commits == "off"
    assert Settings(home=tmp_path, intents_verify_commits="OpenPGP", intents_trusted_keys=tmp_path)
    assert Settings(home=tmp_path).intents_verify_commits == "off"


def test_the_controller_does_not_start_with_a_missing_keys_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith("CHIFFON_"):
            monkeypatch.delenv(name)
    missing = tmp_path / "trusted.asc"
    monkeypatch.setenv("CHIFFON_INTENTS_VERIFY_COMMITS", "gpg")
    monkeypatch.setenv("CHIFFON_INTENTS_TRUSTED_KEYS", str(missing))
    result = CliRunner().invoke(cli.app, ["controller", "--home", str(tmp_path / "home")])
    assert result.exit_code == 2, result.output
    assert f"chiffon: error: intents_trusted_keys: {missing} does not exist" in result.stderr
