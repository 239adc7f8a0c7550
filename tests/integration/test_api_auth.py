"""Access control over the real store (SQLite and PostgreSQL): tokens, roles, the audit of denials.

The API is driven in process (httpx's ASGI transport); the ``chiffon token``
commands run through typer's runner against a SQLite state directory, and the
token they print is then used against the API.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from chiffon import cli
from chiffon.api import auth
from chiffon.api.app import create_app
from chiffon.api.auth import Role, create_token, revoke_token
from chiffon.api.context import ServerContext
from chiffon.controllers.intents_writer import IntentsWriter
from chiffon.controllers.source import GitSource, SourceConfig
from chiffon.gitrepo import GitRepo
from chiffon.resources import Outcome
from chiffon.settings import Settings
from chiffon.store import ApiToken, Store
from tests.helpers import intent_yaml
from tests.integration.test_api import apply_body, planned

STATED = {"X-Chiffon-Actor": "Mallory <mallory@example.com>"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@asynccontextmanager
async def client(source, store, tmp_path: Path, **settings: object) -> AsyncIterator[httpx.AsyncClient]:  # type: ignore[no-untyped-def]
    context = ServerContext(Settings(home=tmp_path, **settings), store, source, IntentsWriter(source))
    transport = httpx.ASGITransport(app=create_app(context))
    async with httpx.AsyncClient(transport=transport, base_url="http://chiffon", headers=STATED) as http:
        yield http


@pytest.fixture
async def tokens(store) -> dict[Role, str]:  # type: ignore[no-untyped-def]
    """One token per role, named after it."""
    return {role: await create_token(store, role.value, role, "test") for role in Role}


async def denials(store: Store) -> list[dict[str, object]]:
    events = await store.list_audit(action="denied")
    assert all(event.outcome is Outcome.FAILURE for event in events)
    return [{"actor": event.actor, **event.details} for event in reversed(events)]


async def test_without_tokens_loopback_is_open_to_the_local_admin(
    source, store, tmp_path, intents_repo
) -> None:
    async with client(source, store, tmp_path) as api:
        who = await api.get("/api/v1/whoami")
        assert who.json() == {"name": "local", "role": "admin", "authenticated": False}
        applied = await api.post("/api/v1/intents/apply", json=apply_body(kuma=intent_yaml("kuma")))
        assert applied.status_code == 200, applied.text
    # Nobody authenticated: the stated identity is all there is, as before tokens existed.
    assert (await intents_repo.commit_info("HEAD")).author.email == "mallory@example.com"
    assert await denials(store) == []


async def test_beyond_loopback_without_any_token_nothing_is_served(source, store, tmp_path) -> None:
    async with client(source, store, tmp_path, host="0.0.0.0") as api:
        response = await api.get("/api/v1/intents")
    assert response.status_code == 401
    assert "listens on 0.0.0.0" in response.json()["detail"]
    assert "chiffon token create" in response.json()["detail"]
    [denied] = await denials(store)
    assert denied["reason"] == "no-token-configured" and denied["role"] is None


async def test_once_a_token_exists_every_call_needs_one(source, store, tmp_path, tokens) -> None:
    async with client(source, store, tmp_path) as api:
        missing = await api.get("/api/v1/intents")
        assert missing.status_code == 401
        assert missing.headers["WWW-Authenticate"].startswith("Bearer")
        assert "CHIFFON_TOKEN" in missing.json()["detail"]
        assert "chiffon token create" in missing.json()["detail"]
        wrong = await api.get("/api/v1/intents", headers=bearer("chf_not-a-token"))
        assert wrong.status_code == 401 and "not one this server knows" in wrong.json()["detail"]
        not_bearer = await api.get("/api/v1/intents", headers={"Authorization": "Basic YTpi"})
        assert not_bearer.status_code == 401
        assert (await api.get("/api/v1/healthz")).status_code == 401
        ok = await api.get("/api/v1/intents", headers=bearer(tokens[Role.VIEWER]))
        assert ok.status_code == 200
    assert [d["reason"] for d in await denials(store)] == ["missing", "unknown", "missing", "missing"]


async def test_each_role_does_what_it_may_and_no_more(source, store, tmp_path, tokens, intents_repo) -> None:
    async with client(source, store, tmp_path) as api:
        viewer, operator = bearer(tokens[Role.VIEWER]), bearer(tokens[Role.OPERATOR])
        approver = bearer(tokens[Role.APPROVER])
        body = apply_body(kuma=intent_yaml("kuma"))

        assert (await api.get("/api/v1/audit", headers=viewer)).status_code == 200
        refused = await api.post("/api/v1/intents/apply", json=body, headers=viewer)
        assert refused.status_code == 403
        assert refused.json()["detail"] == "this needs the operator role; token 'viewer' has viewer"
        assert (await api.post("/api/v1/sources/sync", headers=viewer)).status_code == 403
        assert (await api.post("/api/v1/suggestions/1/dismiss", json={}, headers=viewer)).status_code == 403

        applied = await api.post("/api/v1/intents/apply", json=body, headers=operator)
        assert applied.status_code == 200, applied.text
        # A token acts under its own name, whatever X-Chiffon-Actor says.
        author = (await intents_repo.commit_info("HEAD")).author
        assert (author.name, author.email) == ("operator", "token:operator")

        await planned(store, "kuma")
        not_yours = await api.post("/api/v1/intents/kuma/approve", json={}, headers=operator)
        assert not_yours.status_code == 403
        assert not_yours.json()["detail"] == "this needs the approver role; token 'operator' has operator"
        approved = await api.post("/api/v1/intents/kuma/approve", json={"reason": "ok"}, headers=approver)
        assert approved.status_code == 200, approved.text
        assert approved.json()["actor"] == "approver <token:approver>"
        # An approver is also an operator; an admin is everything.
        assert (await api.delete("/api/v1/intents/kuma", headers=approver)).status_code == 200
        admin = bearer(tokens[Role.ADMIN])
        assert (await api.post("/api/v1/intents/apply", json=body, headers=admin)).status_code == 200
        who = await api.get("/api/v1/whoami", headers=operator)
        assert who.json() == {"name": "operator", "role": "operator", "authenticated": True}

    [approval] = await store.list_approvals("kuma")
    assert approval.actor == "approver <token:approver>"
    assert await denials(store) == [
        {
            "actor": "viewer <token:viewer>",
            "method": "POST",
            "path": "/api/v1/intents/apply",
            "required": "operator",
            "role": "viewer",
            "reason": "role",
        },
        {
            "actor": "viewer <token:viewer>",
            "method": "POST",
            "path": "/api/v1/sources/sync",
            "required": "operator",
            "role": "viewer",
            "reason": "role",
        },
        {
            "actor": "viewer <token:viewer>",
            "method": "POST",
            "path": "/api/v1/suggestions/1/dismiss",
            "required": "operator",
            "role": "viewer",
            "reason": "role",
        },
        {
            "actor": "operator <token:operator>",
            "method": "POST",
            "path": "/api/v1/intents/kuma/approve",
            "required": "approver",
            "role": "operator",
            "reason": "role",
        },
    ]


async def test_a_call_without_a_token_is_audited_with_what_the_route_needs(
    source, store, tmp_path, tokens
) -> None:
    async with client(source, store, tmp_path) as api:
        response = await api.post("/api/v1/intents/kuma/approve", json={})
    assert response.status_code == 401
    [denied] = await denials(store)
    assert denied == {
        "actor": "anonymous <anonymous@chiffon.local>",
        "method": "POST",
        "path": "/api/v1/intents/kuma/approve",
        "required": "approver",
        "role": None,
        "reason": "missing",
    }


async def test_a_revoked_token_is_refused_at_once(source, store, tmp_path) -> None:
    token = await create_token(store, "ci", Role.OPERATOR, "test")
    async with client(source, store, tmp_path) as api:
        assert (await api.get("/api/v1/intents", headers=bearer(token))).status_code == 200
        assert await revoke_token(store, "ci")
        assert not await revoke_token(store, "ci")
        revoked = await api.get("/api/v1/intents", headers=bearer(token))
        assert revoked.status_code == 401 and "token 'ci' was revoked" in revoked.json()["detail"]
        # The last live token is gone: a local server is open again, at once (no stale cache).
        assert (await api.get("/api/v1/whoami")).json()["name"] == "local"
        # ... and a new token closes it at once.
        await create_token(store, "ci-2", Role.VIEWER, "test")
        assert (await api.get("/api/v1/whoami")).status_code == 401
    assert [d["reason"] for d in await denials(store)] == ["revoked", "missing"]


async def test_the_legacy_api_token_is_an_admin(source, store, tmp_path) -> None:
    async with client(source, store, tmp_path, api_token="s3cret-token") as api:
        assert (await api.get("/api/v1/intents")).status_code == 401
        who = await api.get("/api/v1/whoami", headers=bearer("s3cret-token"))
        assert who.json() == {"name": "admin token", "role": "admin", "authenticated": True}
        await api.post(
            "/api/v1/intents/apply", json=apply_body(kuma=intent_yaml("kuma")), headers=bearer("s3cret-token")
        )
        await planned(store, "kuma")
        approved = await api.post("/api/v1/intents/kuma/approve", json={}, headers=bearer("s3cret-token"))
        assert approved.status_code == 200 and approved.json()["actor"] == "admin token <token:admin-token>"
        # Stored tokens work beside it.
        token = await create_token(store, "viewer", Role.VIEWER, "test")
        assert (await api.get("/api/v1/intents", headers=bearer(token))).status_code == 200


async def test_token_text_appears_in_no_audit_and_no_log(source, store, tmp_path, tokens, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    revoked = await create_token(store, "old", Role.ADMIN, "test")
    await revoke_token(store, "old")
    async with client(source, store, tmp_path, api_token="legacy-s3cret") as api:
        for token in [*tokens.values(), revoked, "legacy-s3cret", "chf_guessed"]:
            for method, path in [("GET", "/api/v1/intents"), ("POST", "/api/v1/intents/kuma/approve")]:
                response = await api.request(method, path, json={}, headers=bearer(token))
                assert token not in response.text
    secrets = [*tokens.values(), revoked, "legacy-s3cret", "chf_guessed"]
    audit = [event.model_dump_json() for event in await store.list_audit(limit=1000)]
    assert len([1 for text in audit if '"denied"' in text]) >= 4
    for secret in secrets:
        assert secret not in caplog.text
        assert not any(secret in text for text in audit)
    stored = "".join(repr(token) for token in await store.list_tokens())
    assert not any(secret in stored for secret in secrets)


async def test_live_tokens_are_cached_briefly_per_store(store) -> None:
    now = [100.0]
    assert not await auth.has_live_tokens(store, clock=lambda: now[0])
    # Written by another process: not seen until the cache expires.
    from datetime import UTC, datetime

    await store.create_token(
        ApiToken("elsewhere", "viewer", auth.hash_token("x"), datetime.now(UTC), "another process")
    )
    now[0] += auth.LIVE_TOKENS_TTL / 2
    assert not await auth.has_live_tokens(store, clock=lambda: now[0])
    now[0] += auth.LIVE_TOKENS_TTL
    assert await auth.has_live_tokens(store, clock=lambda: now[0])
    # Through this process: seen at once.
    await revoke_token(store, "elsewhere")
    assert not await auth.has_live_tokens(store, clock=lambda: now[0])


# chiffon token create / list / revoke --------------------------------------------------------


def run_cli(home: Path, *args: str) -> tuple[int, str, str]:
    """Exit code, stdout, and stderr with typer's error box flattened to one line of words."""
    result = CliRunner().invoke(cli.app, [*args, "--home", str(home)])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, " ".join(result.stderr.replace("│", " ").split())


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CHIFFON_DATABASE_URL", "CHIFFON_API_TOKEN", "CHIFFON_CONFIG", "CHIFFON_HOST"):
        monkeypatch.delenv(name, raising=False)


async def _whoami(home: Path, token: str | None) -> httpx.Response:
    """Ask the API over the state directory's SQLite database who ``token`` is."""
    intents = await GitRepo.init(home / "intents", initial_files={"README.md": b"# intents\n"})
    store = Store.from_url(f"sqlite+aiosqlite:///{home / 'chiffon.db'}")
    await store.migrate()
    try:
        source = GitSource(SourceConfig(location=str(intents.path), checkout_dir=home / "checkout"), store)
        await source.open()
        async with client(source, store, home) as api:
            return await api.get("/api/v1/whoami", headers=bearer(token) if token else None)
    finally:
        await store.close()


def test_token_commands_create_list_and_revoke(tmp_path: Path, clean_env: None) -> None:
    home = tmp_path / "home"
    code, out, _ = run_cli(home, "token", "list")
    assert code == 0 and "No tokens" in out

    code, out, _ = run_cli(home, "token", "create", "ci", "--role", "operator")
    assert code == 0, out
    [token] = [word for word in out.split() if word.startswith("chf_")]
    assert f"export CHIFFON_TOKEN={token}" in out and "first token" in out
    who = asyncio.run(_whoami(home, token))
    assert who.json() == {"name": "ci", "role": "operator", "authenticated": True}
    assert asyncio.run(_whoami(home, None)).status_code == 401

    code, out, err = run_cli(home, "token", "create", "ci", "--role", "viewer")
    assert code == 1 and "already exists" in err
    code, out, err = run_cli(home, "token", "create", "bob", "--role", "root")
    assert code == 2 and "--role" in err and "choose one of viewer, operator, approver, admin" in err
    code, out, err = run_cli(home, "token", "create", "bad name", "--role", "viewer")
    assert code == 2 and "not a token name" in err

    code, out, _ = run_cli(home, "token", "list")
    assert code == 0
    header, row = out.splitlines()
    assert header.split() == ["NAME", "ROLE", "CREATED", "BY", "REVOKED"]
    assert row.split()[:2] == ["ci", "operator"] and row.rstrip().endswith("-")
    assert token not in out and auth.hash_token(token) not in out

    code, out, _ = run_cli(home, "token", "revoke", "ci")
    assert code == 0 and "Revoked" in out
    code, _, err = run_cli(home, "token", "revoke", "ci")
    assert code == 1 and "no live token is named 'ci'" in err
    assert asyncio.run(_whoami(home, token)).status_code == 401
    code, out, _ = run_cli(home, "token", "list")
    assert not out.splitlines()[1].rstrip().endswith("-")


def test_up_may_listen_beyond_loopback_once_a_token_is_stored(tmp_path: Path, clean_env: None) -> None:
    home = tmp_path / "home"
    settings = Settings(home=home, host="0.0.0.0")
    assert not asyncio.run(cli.stored_tokens_exist(settings))
    assert not home.exists()  # asking created nothing
    with pytest.raises(cli.StartupError, match=r"refusing to listen on 0\.0\.0\.0 without authentication"):
        cli.check_listen_address(settings, stored_tokens=False)
    assert run_cli(home, "token", "create", "admin", "--role", "admin")[0] == 0
    assert asyncio.run(cli.stored_tokens_exist(settings))
