"""Who is calling the API: bearer tokens bound to roles (DESIGN §7).

Roles are ordered ``viewer < operator < approver < admin``; a route names the
least role it needs (:mod:`chiffon.api.deps`), and a caller with that role or
a higher one passes.

How a request's bearer token becomes a :class:`Principal` (:func:`resolve_principal`):

1. its sha256 equals that of ``settings.api_token`` (``CHIFFON_API_TOKEN``, the
   single shared token of earlier versions): ``"admin token"``, role admin;
2. a stored token has that sha256 and is not revoked: the token's name and role;
3. no token at all, and no authentication configured — no ``api_token`` and no
   live stored token — while the server listens on loopback: ``"local"``, role
   admin, *unauthenticated* (the embedded demo works without tokens, as before).

Anything else is :class:`AuthenticationError` (HTTP 401): a missing token once any
token exists, an unknown or revoked one, or a server listening beyond loopback
with no token configured at all (it fails closed; ``chiffon`` refuses to start
that way, and revoking the last token later locks the API rather than opening it).

Tokens are ``chf_`` + 32 random bytes (url-safe base64), recognisable in leak
scans. The store keeps only their sha256 hex (:func:`hash_token`), so a token is
shown once, when created, and compared by its hash — never kept, logged or
audited.

Whether any live stored token exists is asked on every unauthenticated request,
so the answer is cached per store for :data:`LIVE_TOKENS_TTL` seconds;
:func:`create_token` and :func:`revoke_token` drop the cache at once. A token
created by another process (``chiffon token create`` beside a running server)
takes effect within that time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING

from chiffon.gitrepo import Identity

if TYPE_CHECKING:
    from chiffon.settings import Settings
    from chiffon.store import Store

TOKEN_PREFIX = "chf_"
TOKEN_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
LIVE_TOKENS_TTL = 2.0
# Longer bearer values are not ours: refused without hashing megabytes.
MAX_TOKEN_CHARS = 512
LEGACY_TOKEN_NAME = "admin token"
LOCAL_NAME = "local"
CREATE_HINT = "`chiffon token create NAME --role ROLE` on the server"


class Role(StrEnum):
    """What a caller may do; each role may do everything the ones before it may."""

    VIEWER = "viewer"  # read everything
    OPERATOR = "operator"  # apply and delete intents, sync sources, act on suggestions
    APPROVER = "approver"  # approve and reject plans
    ADMIN = "admin"  # everything

    @classmethod
    def parse(cls, text: str) -> Role:
        try:
            return cls(text.strip().lower())
        except ValueError:
            choices = ", ".join(role.value for role in cls)
            raise ValueError(f"unknown role {text!r}; choose one of {choices}") from None

    @property
    def rank(self) -> int:
        return _RANKS[self]

    # A str enum compares as text ("admin" < "viewer"); roles compare by rank.
    def __lt__(self, other: object) -> bool:
        return self.rank < other.rank if isinstance(other, Role) else NotImplemented

    def __le__(self, other: object) -> bool:
        return self.rank <= other.rank if isinstance(other, Role) else NotImplemented

    def __gt__(self, other: object) -> bool:
        return self.rank > other.rank if isinstance(other, Role) else NotImplemented

    def __ge__(self, other: object) -> bool:
        return self.rank >= other.rank if isinstance(other, Role) else NotImplemented


_RANKS = {role: rank for rank, role in enumerate(Role)}


def hash_token(token: str) -> str:
    """The sha256 hex of a token: what the store keeps and what is compared."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def check_token_name(name: str) -> str:
    """A token's name: 1-63 letters, digits, ``.``, ``_`` or ``-``, starting with a letter or digit."""
    if not TOKEN_NAME_PATTERN.fullmatch(name):
        raise ValueError(
            f"{name!r} is not a token name: use 1-63 letters, digits, '.', '_' or '-', "
            "starting with a letter or a digit"
        )
    return name


@dataclass(frozen=True)
class Principal:
    """Who is calling, with which role; ``authenticated`` is False only for the open local server."""

    name: str
    role: Role
    authenticated: bool

    def allows(self, role: Role) -> bool:
        return self.role >= role

    @property
    def identity(self) -> Identity:
        """The identity a token acts as: commits and audit events name the token, not a header."""
        return Identity(self.name, f"token:{re.sub(r'[^A-Za-z0-9._-]', '-', self.name)}")

    def describe(self) -> str:
        """``token 'ci'`` — how a message names this caller."""
        return f"token {self.name!r}" if self.authenticated else f"the {self.name} caller"

    def to_wire(self) -> dict[str, object]:
        return {"name": self.name, "role": self.role.value, "authenticated": self.authenticated}


class AuthenticationError(Exception):
    """No valid token: ``reason`` is a short code for the audit, ``message`` says what to do."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer …`` header; None when there is none."""
    if not authorization:
        return None
    scheme, _, presented = authorization.strip().partition(" ")
    presented = presented.strip()
    if scheme.lower() != "bearer" or not presented:
        return None
    return presented


# The live-token cache ------------------------------------------------------------------------


@dataclass
class _LiveTokens:
    present: bool = False
    checked_at: float = float("-inf")
    version: int = 0  # bumped by every invalidation: a query that began before it is not cached


_live_tokens: weakref.WeakKeyDictionary[Store, _LiveTokens] = weakref.WeakKeyDictionary()


def forget_live_tokens(store: Store) -> None:
    """Drop the cached answer of :func:`has_live_tokens` (after a token was created or revoked)."""
    entry = _live_tokens.setdefault(store, _LiveTokens())
    entry.checked_at = float("-inf")
    entry.version += 1


async def has_live_tokens(store: Store, *, clock: Callable[[], float] = time.monotonic) -> bool:
    """Whether the store holds a token that is not revoked; cached for :data:`LIVE_TOKENS_TTL` s."""
    entry = _live_tokens.setdefault(store, _LiveTokens())
    if clock() - entry.checked_at < LIVE_TOKENS_TTL:
        return entry.present
    version = entry.version
    present = any(token.revoked_at is None for token in await store.list_tokens())
    if entry.version == version:
        entry.present, entry.checked_at = present, clock()
    return present


# Resolution ----------------------------------------------------------------------------------


async def resolve_principal(settings: Settings, store: Store, authorization: str | None) -> Principal:
    """Who sent a request with this ``Authorization`` header; :class:`AuthenticationError` if nobody valid."""
    presented = bearer_token(authorization)
    if presented is None:
        return await _without_token(settings, store)
    if len(presented) > MAX_TOKEN_CHARS:
        raise _unknown()
    digest = hash_token(presented)
    legacy = settings.api_token
    if legacy is not None and hmac.compare_digest(digest, hash_token(legacy.get_secret_value())):
        return Principal(LEGACY_TOKEN_NAME, Role.ADMIN, authenticated=True)
    stored = await store.token_by_hash(digest)
    if stored is None:
        raise _unknown()
    if stored.revoked_at is not None:
        raise AuthenticationError(
            "revoked",
            f"token {stored.name!r} was revoked on {stored.revoked_at:%Y-%m-%d %H:%M} UTC; "
            f"ask for a new one ({CREATE_HINT})",
        )
    try:
        role = Role.parse(stored.role)
    except ValueError:
        raise AuthenticationError(
            "bad-role", f"token {stored.name!r} has the unknown role {stored.role!r}; create a new one"
        ) from None
    return Principal(stored.name, role, authenticated=True)


async def _without_token(settings: Settings, store: Store) -> Principal:
    if settings.api_token is not None or await has_live_tokens(store):
        raise AuthenticationError(
            "missing",
            "this server needs a bearer token: set CHIFFON_TOKEN (or chiffonctl --token) "
            f"to a token from {CREATE_HINT}",
        )
    if settings.listens_beyond_loopback:
        raise AuthenticationError(
            "no-token-configured",
            f"this server listens on {settings.host} and has no token yet: create one with "
            f"{CREATE_HINT}, then set CHIFFON_TOKEN to it",
        )
    return Principal(LOCAL_NAME, Role.ADMIN, authenticated=False)


def _unknown() -> AuthenticationError:
    return AuthenticationError(
        "unknown",
        "the bearer token is not one this server knows: check CHIFFON_TOKEN, "
        f"or create one with {CREATE_HINT}",
    )


# Creating and revoking -----------------------------------------------------------------------


async def create_token(store: Store, name: str, role: Role, created_by: str) -> str:
    """Store a new token for ``name`` with ``role``; returns the token, the only time it exists in clear.

    ValueError for a bad name or one already taken.
    """
    from chiffon.store import ApiToken

    token = new_token()
    record = ApiToken(
        name=check_token_name(name),
        role=role.value,
        token_hash=hash_token(token),
        created_at=datetime.now(UTC),
        created_by=created_by,
    )
    try:
        await store.create_token(record)
    finally:
        forget_live_tokens(store)
    return token


async def revoke_token(store: Store, name: str) -> bool:
    """Revoke the live token ``name``; False when there is none by that name."""
    try:
        return await store.revoke_token(name)
    finally:
        forget_live_tokens(store)
