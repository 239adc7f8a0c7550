"""Roles, token text and hashing, and the bearer header: the pure parts of access control."""

from __future__ import annotations

import hashlib

import pytest

from chiffon import cli
from chiffon.api.auth import (
    TOKEN_PREFIX,
    Principal,
    Role,
    bearer_token,
    check_token_name,
    hash_token,
    new_token,
)


def test_roles_are_ordered_by_power_not_by_spelling() -> None:
    assert Role.VIEWER < Role.OPERATOR < Role.APPROVER < Role.ADMIN
    assert sorted([Role.ADMIN, Role.VIEWER, Role.APPROVER, Role.OPERATOR]) == list(Role)
    assert max(Role) is Role.ADMIN and min(Role) is Role.VIEWER
    assert Role.ADMIN >= Role.ADMIN and not Role.ADMIN > Role.ADMIN
    assert Role.OPERATOR <= Role.APPROVER and not Role.APPROVER <= Role.OPERATOR


@pytest.mark.parametrize(
    ("have", "need", "allowed"),
    [
        (Role.VIEWER, Role.VIEWER, True),
        (Role.VIEWER, Role.OPERATOR, False),
        (Role.OPERATOR, Role.OPERATOR, True),
        (Role.OPERATOR, Role.APPROVER, False),
        (Role.APPROVER, Role.OPERATOR, True),
        (Role.APPROVER, Role.ADMIN, False),
        (Role.ADMIN, Role.APPROVER, True),
    ],
)
def test_principal_allows_its_role_and_those_below(have: Role, need: Role, allowed: bool) -> None:
    assert Principal("ci", have, authenticated=True).allows(need) is allowed


@pytest.mark.parametrize(("text", "role"), [("viewer", Role.VIEWER), (" Approver ", Role.APPROVER)])
def test_role_parse(text: str, role: Role) -> None:
    assert Role.parse(text) is role


def test_unknown_role_names_the_choices() -> None:
    with pytest.raises(ValueError, match="choose one of viewer, operator, approver, admin"):
        Role.parse("root")


def test_the_cli_spells_the_roles_as_the_api_does() -> None:
    assert tuple(role.value for role in Role) == cli.ROLE_NAMES


def test_hash_is_sha256_hex_of_the_token() -> None:
    assert hash_token("chf_abc") == hashlib.sha256(b"chf_abc").hexdigest()
    assert len(hash_token("x")) == 64 and hash_token("x") != hash_token("y")


def test_new_tokens_are_prefixed_random_and_long() -> None:
    tokens = {new_token() for _ in range(50)}
    assert len(tokens) == 50
    for token in tokens:
        assert token.startswith(TOKEN_PREFIX) and len(token) >= len(TOKEN_PREFIX) + 43
        assert token[len(TOKEN_PREFIX) :].replace("-", "").replace("_", "").isalnum()


@pytest.mark.parametrize(
    ("header", "token"),
    [
        (None, None),
        ("", None),
        ("Bearer", None),
        ("Bearer   ", None),
        ("Basic dXNlcjpwYXNz", None),
        ("Bearer chf_x", "chf_x"),
        ("bearer  chf_x ", "chf_x"),
    ],
)
def test_bearer_token_from_the_header(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


@pytest.mark.parametrize("name", ["alice", "ci", "backup-bot.2", "A_1"])
def test_good_token_names(name: str) -> None:
    assert check_token_name(name) == name


@pytest.mark.parametrize("name", ["", "-x", "with space", "a" * 64, "x<y>", "a\nb", "ci\n", "ünï"])
def test_bad_token_names(name: str) -> None:
    with pytest.raises(ValueError, match="not a token name"):
        check_token_name(name)


def test_a_token_acts_under_its_own_name() -> None:
    identity = Principal("ci", Role.OPERATOR, authenticated=True).identity
    assert str(identity) == "ci <token:ci>"
    legacy = Principal("admin token", Role.ADMIN, authenticated=True).identity
    assert str(legacy) == "admin token <token:admin-token>"
    assert Principal("ci", Role.OPERATOR, authenticated=True).to_wire() == {
        "name": "ci",
        "role": "operator",
        "authenticated": True,
    }
