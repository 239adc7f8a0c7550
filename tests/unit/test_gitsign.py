"""Commit verification's pure decisions: what git said -> accept or refuse, and why."""

from __future__ import annotations

from pathlib import Path

import pytest

from chiffon.controllers.source import refusal_message
from chiffon.gitrepo import CommitSignature, signature_kind
from chiffon.gitsign import (
    BAD_SIGNATURE,
    EXPIRED_KEY,
    REVOKED_KEY,
    UNKNOWN_KEY,
    UNSIGNED,
    UNTRUSTED_FORMAT,
    VERIFIED,
    SignatureConfigError,
    allowed_signer_keys,
    gpg_fingerprints,
    judge,
)

COMMIT = "1a2b3c4d" + "0" * 32
FPR = "FC5A1959BA67524C2F0E316F8D91579ABB7C9D05"
SUBKEY = "0123456789ABCDEF0123456789ABCDEF01234567"
SSH_FPR = "SHA256:d2Uq90bw55lPwmsM8rMlx0wxTOsdMVBX0Ng3y+UW0qA"


@pytest.mark.parametrize(
    ("mode", "signature", "reason", "key"),
    [
        ("gpg", CommitSignature(None), UNSIGNED, ""),
        ("gpg", CommitSignature("gpg", "G", FPR[-16:], FPR, FPR, "Alice"), VERIFIED, FPR),
        # A subkey signed: the primary key is what is trusted and recorded.
        ("gpg", CommitSignature("gpg", "G", SUBKEY[-16:], SUBKEY, FPR, "Alice"), VERIFIED, FPR),
        # In Chiffon's own keyring every key is trusted, whatever validity gpg gives it.
        ("gpg", CommitSignature("gpg", "U", FPR[-16:], FPR, FPR, "Alice"), VERIFIED, FPR),
        ("gpg", CommitSignature("gpg", "E", FPR[-16:]), UNKNOWN_KEY, FPR[-16:]),
        ("gpg", CommitSignature("gpg", "B", FPR[-16:], "", "", "Alice"), BAD_SIGNATURE, FPR[-16:]),
        ("gpg", CommitSignature("gpg", "X", FPR[-16:], FPR, FPR), EXPIRED_KEY, FPR),
        ("gpg", CommitSignature("gpg", "Y", FPR[-16:], FPR, FPR), EXPIRED_KEY, FPR),
        ("gpg", CommitSignature("gpg", "R", FPR[-16:], FPR, FPR), REVOKED_KEY, FPR),
        ("gpg", CommitSignature("ssh", "G", SSH_FPR, SSH_FPR), UNTRUSTED_FORMAT, ""),
        ("gpg", CommitSignature("x509", "G"), UNTRUSTED_FORMAT, ""),
        ("ssh", CommitSignature("ssh", "G", SSH_FPR, SSH_FPR, "", "alice@example.com"), VERIFIED, SSH_FPR),
        # For SSH, U is a good signature by a key that is no allowed signer.
        ("ssh", CommitSignature("ssh", "U", SSH_FPR, SSH_FPR), UNKNOWN_KEY, SSH_FPR),
        ("ssh", CommitSignature("ssh", "N"), UNKNOWN_KEY, ""),
        ("ssh", CommitSignature("gpg", "G", FPR[-16:], FPR, FPR), UNTRUSTED_FORMAT, ""),
        ("ssh", CommitSignature("unknown", "N"), UNTRUSTED_FORMAT, ""),
    ],
)
def test_judge(mode: str, signature: CommitSignature, reason: str, key: str) -> None:
    verdict = judge(COMMIT, mode, signature)
    assert (verdict.reason, verdict.key, verdict.ok) == (reason, key, reason == VERIFIED)
    assert verdict.describe().startswith("commit 1a2b3c4 ")


def test_descriptions_say_why() -> None:
    said = {
        reason: judge(COMMIT, mode, signature).describe()
        for mode, signature, reason in [
            ("gpg", CommitSignature(None), UNSIGNED),
            ("gpg", CommitSignature("gpg", "E", "E0FBE777A29DB20B"), UNKNOWN_KEY),
            ("gpg", CommitSignature("gpg", "B", "E0FBE777A29DB20B", signer="Mallory"), BAD_SIGNATURE),
            ("ssh", CommitSignature("gpg", "G"), UNTRUSTED_FORMAT),
        ]
    }
    assert said == {
        UNSIGNED: "commit 1a2b3c4 is not signed",
        UNKNOWN_KEY: "commit 1a2b3c4 is signed by key E0FBE777A29DB20B, which is not one of the trusted keys "
        "(intents_trusted_keys)",
        BAD_SIGNATURE: "commit 1a2b3c4 has a bad signature by key E0FBE777A29DB20B (Mallory): "
        "the commit is not what was signed",
        UNTRUSTED_FORMAT: "commit 1a2b3c4 has a GPG signature, but only SSH keys are trusted "
        "(intents_verify_commits=ssh)",
    }
    refused = judge(COMMIT, "gpg", CommitSignature(None))
    assert refusal_message(refused, "9f8e7d6c" + "0" * 32) == (
        "commit 1a2b3c4 is not signed; not synced, the intents stay as they were at 9f8e7d6 "
        "until a commit signed by a trusted key is on top"
    )
    assert "the intents stay as they are" in refusal_message(refused, None)


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        (b"tree t\nauthor a\ncommitter c\n\nmessage\n", None),
        (b"tree t\ngpgsig -----BEGIN PGP SIGNATURE-----\n \n abc\n -----END PGP SIGNATURE-----\n\nm", "gpg"),
        (b"tree t\ngpgsig -----BEGIN SSH SIGNATURE-----\n abc\n\nm\n", "ssh"),
        (b"tree t\ngpgsig-sha256 -----BEGIN SIGNED MESSAGE-----\n abc\n\nm\n", "x509"),
        (b"tree t\ngpgsig something else\n\nm\n", "unknown"),
        # A signature quoted in the message is not a signature.
        (b"tree t\nauthor a\n\ngpgsig -----BEGIN PGP SIGNATURE-----\n", None),
    ],
)
def test_signature_kind(raw: bytes, kind: str | None) -> None:
    assert signature_kind(raw) == kind


def test_allowed_signers_lines() -> None:
    text = (
        "# comment\n\n"
        "alice@example.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHUU alice\n"
        'bob@example.com,ops@example.com namespaces="git",valid-after="20240101" '
        "ecdsa-sha2-nistp256 AAAAE2VjZHNh=\n"
        "carol@example.com cert-authority sk-ssh-ed25519@openssh.com AAAAGnNr\n"
    )
    assert allowed_signer_keys(text, Path("signers")) == {
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHUU",
        "ecdsa-sha2-nistp256 AAAAE2VjZHNh=",
        "sk-ssh-ed25519@openssh.com AAAAGnNr",
    }
    with pytest.raises(SignatureConfigError, match="signers:2 is not an allowed signers line"):
        allowed_signer_keys("a@x ssh-ed25519 AAAAC3\nssh-ed25519 AAAAC3 no principal\n", Path("signers"))


def test_gpg_fingerprints_are_the_primary_keys() -> None:
    colons = "\n".join(
        [
            "pub:-:255:22:8D91579ABB7C9D05:1796036411:::-:::scSC:::::ed25519:::0:",
            f"fpr:::::::::{FPR}:",
            "uid:-::::1796036411::AD66::Alice <alice@example.com>::::::::::0:",
            "sub:-:255:18:0123456789ABCDEF:1796036411::::::e:::::cv25519::",
            f"fpr:::::::::{SUBKEY}:",
        ]
    )
    assert gpg_fingerprints(colons, "pub") == [FPR]
    assert gpg_fingerprints(colons.replace("pub:", "sec:"), "sec") == [FPR]
    assert gpg_fingerprints("", "pub") == []
