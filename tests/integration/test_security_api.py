"""The API's safety rules over the real store (SQLite and PostgreSQL) and a real intents repo (docs/auth.md).

Separation of duties, cross-site and non-JSON posts, the chat's rate limit,
oversized and streamed bodies, YAML bombs, malformed and stale digests —
each refused with a clear status and message, audited as ``denied``, and
nothing else disturbed.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from chiffon.api.app import MAX_BODY_BYTES, create_app
from chiffon.api.auth import Role, create_token
from chiffon.api.context import ServerContext
from chiffon.api.guards import Guards, RateLimiter
from chiffon.controllers.audit_throttle import AuditThrottle
from chiffon.controllers.intents_writer import IntentsWriter
from chiffon.gitrepo import GitRepo
from chiffon.resources import AuditEvent, Outcome
from chiffon.settings import Settings
from chiffon.store import Store
from tests.helpers import BOMB, intent_yaml
from tests.integration.live import serve
from tests.integration.test_api import apply_body, planned

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "homelab-infra"
EVIL = "https://evil.example"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def make_app(source, store: Store, tmp_path: Path, **settings: object) -> FastAPI:  # type: ignore[no-untyped-def]
    context = ServerContext(Settings(home=tmp_path, **settings), store, source, IntentsWriter(source))
    return create_app(context)


@asynccontextmanager
async def client(app: FastAPI, **headers: str) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://chiffon", headers=headers) as http:
        yield http


async def denials(store: Store, reason: str | None = None) -> list[AuditEvent]:
    events = [e for e in await store.list_audit(action="denied", limit=1000) if e.outcome is Outcome.FAILURE]
    return [e for e in reversed(events) if reason is None or e.details.get("reason") == reason]


# 1. Separation of duties --------------------------------------------------------------------------


async def test_with_the_rule_on_the_requester_may_not_approve_but_someone_else_may(
    source, store: Store, tmp_path: Path
) -> None:
    alice = await create_token(store, "alice", Role.APPROVER, "test")
    bob = await create_token(store, "bob", Role.APPROVER, "test")
    app = make_app(source, store, tmp_path, approval_requires_other_person=True)
    async with client(app) as api:
        applied = await api.post(
            "/api/v1/intents/apply", json=apply_body(kuma=intent_yaml("kuma")), headers=bearer(alice)
        )
        assert applied.status_code == 200, applied.text
        await planned(store, "kuma")

        own = await api.post("/api/v1/intents/kuma/approve", json={}, headers=bearer(alice))
        assert own.status_code == 403
        assert own.json()["detail"].startswith("alice <token:alice> requested this change")
        assert "approval_requires_other_person" in own.json()["detail"]
        # Rejecting your own change is always allowed.
        rejected = await api.post(
            "/api/v1/intents/kuma/reject", json={"reason": "not yet"}, headers=bearer(alice)
        )
        assert rejected.status_code == 200
        other = await api.post("/api/v1/intents/kuma/approve", json={}, headers=bearer(bob))
        assert other.status_code == 200 and other.json()["actor"] == "bob <token:bob>"

    assert [(a.actor, a.decision.value) for a in await store.list_approvals("kuma")] == [
        ("bob <token:bob>", "Approved"),
        ("alice <token:alice>", "Rejected"),
    ]
    [denied] = await denials(store)
    assert denied.actor == "alice <token:alice>" and denied.resource == "DeploymentIntent/kuma"
    assert denied.service == "kuma"
    assert denied.details == {
        "method": "POST",
        "path": "/api/v1/intents/kuma/approve",
        "required": "approver",
        "role": "approver",
        "reason": "same-person",
        "requester": "alice <token:alice>",
    }


async def test_with_the_rule_off_the_requester_may_approve(source, store: Store, tmp_path: Path) -> None:
    alice = await create_token(store, "alice", Role.APPROVER, "test")
    async with client(make_app(source, store, tmp_path)) as api:
        await api.post(
            "/api/v1/intents/apply", json=apply_body(kuma=intent_yaml("kuma")), headers=bearer(alice)
        )
        await planned(store, "kuma")
        own = await api.post("/api/v1/intents/kuma/approve", json={}, headers=bearer(alice))
    assert own.status_code == 200 and own.json()["actor"] == "alice <token:alice>"
    assert await denials(store) == []


async def test_the_author_of_the_latest_change_is_the_requester(source, store: Store, tmp_path: Path) -> None:
    """Bob changes Alice's intent: now Bob may not approve, Alice may."""
    alice = await create_token(store, "alice", Role.APPROVER, "test")
    bob = await create_token(store, "bob", Role.APPROVER, "test")
    async with client(make_app(source, store, tmp_path, approval_requires_other_person=True)) as api:
        await api.post(
            "/api/v1/intents/apply", json=apply_body(kuma=intent_yaml("kuma")), headers=bearer(alice)
        )
        changed = await api.post(
            "/api/v1/intents/apply", json=apply_body(kuma=intent_yaml("kuma", port=3002)), headers=bearer(bob)
        )
        assert changed.json()["intents"][0]["outcome"] == "configured"
        await planned(store, "kuma")
        assert (
            await api.post("/api/v1/intents/kuma/approve", json={}, headers=bearer(bob))
        ).status_code == 403
        assert (
            await api.post("/api/v1/intents/kuma/approve", json={}, headers=bearer(alice))
        ).status_code == 200
    [denied] = await denials(store)
    assert denied.details["requester"] == "bob <token:bob>"


async def test_a_chat_confirm_makes_the_confirming_token_the_requester(
    source, store: Store, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    infra = tmp_path / "homelab-infra"
    shutil.copytree(EXAMPLE, infra)
    carol = await create_token(store, "carol", Role.APPROVER, "test")
    dave = await create_token(store, "dave", Role.APPROVER, "test")
    app = make_app(
        source,
        store,
        tmp_path,
        infra_repo=infra,
        catalog_cache_dir=tmp_path_factory.getbasetemp() / "chat-catalog-cache",
        compiler_default_limit="localhost",
        approval_requires_other_person=True,
    )
    async with client(app) as api:
        proposal = await api.post(
            "/api/v1/chat", json={"message": "Deploy Kuma Uptime"}, headers=bearer(carol)
        )
        assert proposal.status_code == 200, proposal.text
        confirmed = await api.post(f"/api/v1/chat/{proposal.json()['id']}/confirm", headers=bearer(carol))
        assert confirmed.status_code == 200, confirmed.text
        [name] = [i.metadata.name for i in await store.list_intents()]
        await planned(store, name)
        own = await api.post(f"/api/v1/intents/{name}/approve", json={}, headers=bearer(carol))
        assert own.status_code == 403 and "carol <token:carol> requested this change" in own.text
        other = await api.post(f"/api/v1/intents/{name}/approve", json={}, headers=bearer(dave))
        assert other.status_code == 200
    [confirm] = await store.list_audit(action="chat.confirm")
    assert confirm.actor == "carol <token:carol>"


async def test_an_intent_with_no_recorded_requester_is_not_approved(
    source, store: Store, tmp_path: Path
) -> None:
    """The rule fails closed: without an intent.created/configured event nobody can tell who asked."""
    bob = await create_token(store, "bob", Role.APPROVER, "test")
    async with client(make_app(source, store, tmp_path, approval_requires_other_person=True)) as api:
        await api.post(
            "/api/v1/intents/apply", json=apply_body(kuma=intent_yaml("kuma")), headers=bearer(bob)
        )
        await planned(store, "kuma")
        async with store.engine.begin() as connection:
            from sqlalchemy import text

            await connection.execute(text("DELETE FROM audit_events WHERE action = 'intent.created'"))
        refused = await api.post("/api/v1/intents/kuma/approve", json={}, headers=bearer(bob))
    assert refused.status_code == 403 and "does not say who requested" in refused.json()["detail"]
    assert [d.details["reason"] for d in await denials(store)] == ["requester-unknown"]


# 2. Cross-site requests --------------------------------------------------------------------------


async def test_a_cross_site_form_post_is_refused_and_audited(
    source, store: Store, tmp_path: Path, intents_repo: GitRepo
) -> None:
    """The open local server (no tokens) is what a cross-site form could reach: it cannot."""
    head = await intents_repo.resolve("HEAD")
    async with client(make_app(source, store, tmp_path)) as api:
        form = await api.post(
            "/api/v1/intents/apply",
            data={"files": "whatever"},
            headers={"Origin": EVIL, "Sec-Fetch-Site": "cross-site"},
        )
        assert form.status_code == 403
        assert "'https://evil.example' may not change anything here" in form.json()["detail"]
        # No Origin at all (an old browser, a stripped header): a form body is still not JSON.
        bare = await api.post("/api/v1/sources/sync", data={"a": "b"})
        assert bare.status_code == 415 and "application/json" in bare.json()["detail"]
        # A "simple" cross-site fetch: text/plain carrying JSON.
        simple = await api.post(
            "/api/v1/intents/apply",
            content=b'{"files": []}',
            headers={"Content-Type": "text/plain", "Origin": "null"},
        )
        assert simple.status_code == 403
        # A body-less cross-site POST (a form with no fields, fetch no-cors).
        empty = await api.post("/api/v1/sources/sync", headers={"Origin": EVIL})
        assert empty.status_code == 403
        # The server's own page (same origin) and the CLI (no Origin) still may.
        own = await api.post(
            "/api/v1/intents/apply",
            json=apply_body(kuma=intent_yaml("kuma")),
            headers={"Origin": "http://chiffon", "Sec-Fetch-Site": "same-origin"},
        )
        assert own.status_code == 200, own.text
        assert (await api.post("/api/v1/sources/sync")).status_code == 200
        assert (await api.get("/api/v1/intents", headers={"Origin": EVIL})).status_code == 200  # reads
    assert await intents_repo.resolve("HEAD") != head  # only the own page's apply committed
    refusals = await denials(store)
    assert [(d.details["reason"], d.details["count"]) for d in refusals] == [
        ("cross-site", 1),
        ("content-type", 1),
    ]
    first = refusals[0]
    assert first.actor == "anonymous <anonymous@chiffon.local>"
    assert first.details["origin"] == EVIL and first.details["path"] == "/api/v1/intents/apply"
    assert first.details["required"] == "operator" and first.details["client"] == "address:127.0.0.1"


async def test_cross_site_refusals_do_not_flood_the_audit(source, store: Store, tmp_path: Path) -> None:
    clock = Clock()
    app = make_app(source, store, tmp_path)
    app.state.guards.refusals = AuditThrottle(60, clock=clock)
    async with client(app) as api:
        for _ in range(25):
            response = await api.post("/api/v1/sources/sync", headers={"Origin": EVIL})
            assert response.status_code == 403
        clock.now += 61
        await api.post("/api/v1/sources/sync", headers={"Origin": EVIL})
    assert [d.details["count"] for d in await denials(store)] == [1, 25]


async def test_allowed_origins_may_call_and_a_token_server_refuses_cross_site_first(
    source, store: Store, tmp_path: Path
) -> None:
    token = await create_token(store, "ops", Role.OPERATOR, "test")
    app = make_app(source, store, tmp_path, allowed_origins=["https://chiffon.example"])
    async with client(app) as api:
        proxied = await api.post(
            "/api/v1/sources/sync", headers={"Origin": "https://chiffon.example", **bearer(token)}
        )
        assert proxied.status_code == 200
        evil = await api.post("/api/v1/sources/sync", headers={"Origin": EVIL, **bearer(token)})
        assert evil.status_code == 403
    [denied] = await denials(store)
    assert denied.actor == "ops <token:ops>" and denied.details["role"] == "operator"


# 3. Rate limit of the chat -----------------------------------------------------------------------


async def test_chat_calls_are_rate_limited_per_token_with_retry_after(
    source, store: Store, tmp_path: Path
) -> None:
    ci = await create_token(store, "ci", Role.OPERATOR, "test")
    other = await create_token(store, "other", Role.OPERATOR, "test")
    clock = Clock()
    app = make_app(source, store, tmp_path)
    app.state.guards = Guards(
        chat=RateLimiter(per_minute=6, burst=2, clock=clock), refusals=AuditThrottle(60, clock=clock)
    )
    discard = "/api/v1/chat/p-0123456789/discard"
    async with client(app) as api:
        # Each call spends a token, whatever it finds (here: no such proposal).
        assert [(await api.post(discard, headers=bearer(ci))).status_code for _ in range(2)] == [404, 404]
        limited = await api.post(discard, headers=bearer(ci))
        assert limited.status_code == 429 and limited.headers["Retry-After"] == "10"
        assert limited.json()["detail"] == (
            "too many chat requests from token 'ci': at most 6 a minute (bursts of 2); try again in 10 s"
        )
        proposal = await api.post("/api/v1/chat", json={"message": "deploy kuma"}, headers=bearer(ci))
        assert proposal.status_code == 429  # the LLM endpoint above all
        assert (await api.post(discard, headers=bearer(other))).status_code == 404  # a bucket per token
        # Reads are not limited.
        assert (await api.get("/api/v1/chat/p-0123456789", headers=bearer(ci))).status_code == 404
        for _ in range(10):
            assert (await api.post(discard, headers=bearer(ci))).status_code == 429
        clock.now += 10
        assert (await api.post(discard, headers=bearer(ci))).status_code == 404  # refilled
        clock.now += 60
        for _ in range(3):
            await api.post(discard, headers=bearer(ci))
    limited_audits = await denials(store, "rate-limit")
    assert [(d.actor, d.details["count"]) for d in limited_audits] == [
        ("ci <token:ci>", 1),
        ("ci <token:ci>", 12),
    ]
    assert (
        limited_audits[0].details["client"] == "token:ci" and limited_audits[0].details["retry_after"] == 10
    )


async def test_without_tokens_the_chat_limit_counts_per_client_address(
    source, store: Store, tmp_path: Path
) -> None:
    app = make_app(source, store, tmp_path, chat_rate_per_minute=1, chat_rate_burst=1)
    async with client(app, **{"X-Chiffon-Actor": "Alice <alice@example.com>"}) as api:
        assert (await api.post("/api/v1/chat/p-0123456789/discard")).status_code == 404
        limited = await api.post("/api/v1/chat/p-0123456789/discard")
    assert limited.status_code == 429 and "from address 127.0.0.1" in limited.json()["detail"]
    assert int(limited.headers["Retry-After"]) in (59, 60)
    [denied] = await denials(store, "rate-limit")
    assert denied.details["client"] == "address:127.0.0.1"


async def test_a_zero_rate_means_no_chat_limit(source, store: Store, tmp_path: Path) -> None:
    app = make_app(source, store, tmp_path, chat_rate_per_minute=0, chat_rate_burst=1)
    async with client(app) as api:
        codes = {(await api.post("/api/v1/chat/p-0123456789/discard")).status_code for _ in range(30)}
    assert codes == {404}


# 4. Oversized bodies and YAML bombs --------------------------------------------------------------


async def chunks(total: int, size: int = 1 << 20) -> AsyncIterator[bytes]:
    sent = 0
    yield b'{"files": [{"name": "big.yaml", "content": "'
    while sent < total:
        piece = min(size, total - sent)
        sent += piece
        yield b"x" * piece
    yield b'"}]}'


async def test_a_streamed_body_without_length_is_refused_past_the_limit(
    source, store: Store, tmp_path: Path
) -> None:
    async with client(make_app(source, store, tmp_path)) as api:
        response = await api.post(
            "/api/v1/intents/apply",
            content=chunks(MAX_BODY_BYTES + 1024),
            headers={"Content-Type": "application/json"},
        )
        assert "content-length" not in {k.lower() for k in response.request.headers}
        assert response.status_code == 413
        assert response.json()["detail"] == f"request body is larger; the limit is {MAX_BODY_BYTES}"
        small = await api.post(
            "/api/v1/intents/apply",
            content=chunks(100),
            headers={"Content-Type": "application/json"},
        )
        assert small.status_code == 422  # read whole, then judged: "x..." is no intent


async def test_a_streamed_body_is_refused_on_a_real_socket(source, store: Store, tmp_path: Path) -> None:
    async with (
        serve(make_app(source, store, tmp_path)) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as http,
    ):
        started = time.monotonic()
        response = await http.post(
            "/api/v1/intents/apply",
            content=chunks(MAX_BODY_BYTES + 1024, size=256 * 1024),
            headers={"Content-Type": "application/json"},
        )
        assert response.status_code == 413
        assert time.monotonic() - started < 10
        # A declared length over the limit is answered before a byte of the body is sent.
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            b"POST /api/v1/intents/apply HTTP/1.1\r\nHost: chiffon\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {MAX_BODY_BYTES + 1}\r\n\r\n".encode()
        )
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 10)
        writer.close()
        assert status_line.startswith(b"HTTP/1.1 413")
        assert (await http.get("/api/v1/healthz")).status_code == 200  # nothing else disturbed


def nesting_bomb(depth: int) -> str:
    return "a: " + "[" * depth + "]" * depth + "\n"


@pytest.mark.parametrize(
    ("document", "words"),
    [
        pytest.param(BOMB, "alias", id="billion-laughs"),
        pytest.param(nesting_bomb(200_000), "nested", id="deep-nesting"),
        pytest.param("a: &a [" + ", ".join(["*a"] * 3) + "]\n", "alias", id="recursive-alias"),
        pytest.param("- " * 50_000 + "x\n", "nested", id="deep-block-sequence"),
        pytest.param("k: v\n" * 400_000, "", id="huge-mapping"),
    ],
)
async def test_yaml_bombs_are_refused_quickly(
    source, store: Store, tmp_path: Path, document: str, words: str
) -> None:
    async with client(make_app(source, store, tmp_path)) as api:
        started = time.monotonic()
        response = await api.post("/api/v1/intents/apply", json=apply_body(bomb=document))
        elapsed = time.monotonic() - started
        assert response.status_code == 422, response.text[:500]
        assert words in response.text.lower()
        assert elapsed < 5, f"took {elapsed:.1f}s"
        assert (await api.get("/api/v1/healthz")).status_code == 200
    assert await store.list_intents() == []


# 5. Malformed and stale digests ------------------------------------------------------------------


async def test_malformed_and_stale_digests_are_refused_and_audited(
    source, store: Store, tmp_path: Path
) -> None:
    approver = await create_token(store, "ann", Role.APPROVER, "test")
    async with client(make_app(source, store, tmp_path)) as api:
        await api.post(
            "/api/v1/intents/apply", json=apply_body(kuma=intent_yaml("kuma")), headers=bearer(approver)
        )
        await planned(store, "kuma", "a" * 64)
        for bad in ["not-hex!", "abc", "A" * 12, "a" * 65]:
            malformed = await api.post(
                "/api/v1/intents/kuma/approve", json={"plan": bad}, headers=bearer(approver)
            )
            assert malformed.status_code == 422, bad
            assert malformed.json()["detail"][0]["loc"] == ["body", "plan"]
        stale = await api.post(
            "/api/v1/intents/kuma/reject", json={"plan": "b" * 64, "reason": "no"}, headers=bearer(approver)
        )
        assert stale.status_code == 409
        assert "plan bbbbbbbbbbbb is stale" in stale.json()["detail"]
        assert "current plan of deploymentintent/kuma is aaaaaaaaaaaa" in stale.json()["detail"]
        missing_reason = await api.post("/api/v1/intents/kuma/reject", json={}, headers=bearer(approver))
        assert missing_reason.status_code == 422
    assert await store.list_approvals("kuma") == []
    refused = await denials(store)
    assert [d.details["reason"] for d in refused] == ["malformed-digest"] * 4 + [
        "stale-digest",
        "invalid-request",
    ]
    assert all(d.actor == "ann <token:ann>" and d.resource == "DeploymentIntent/kuma" for d in refused)
    assert refused[0].details["fields"] == ["body.plan"]
    assert "not-hex!" not in str(refused[0].details)  # what was sent is not recorded, only where
    assert refused[4].details["given"] == "b" * 64 and refused[4].details["current"] == "a" * 64
    assert refused[4].details["path"] == "/api/v1/intents/kuma/reject"


async def test_a_malformed_digest_without_a_valid_token_is_a_401_first(
    source, store: Store, tmp_path: Path
) -> None:
    await create_token(store, "ann", Role.APPROVER, "test")
    async with client(make_app(source, store, tmp_path)) as api:
        response = await api.post("/api/v1/intents/kuma/approve", json={"plan": "zz"})
    assert response.status_code == 401
    assert [d.details["reason"] for d in await denials(store)] == ["missing"]


async def test_guards_add_little_to_a_plain_call(source, store: Store, tmp_path: Path) -> None:
    """Sanity: a hundred reads through every guard stay quick (no audit, no token lookups)."""
    async with client(make_app(source, store, tmp_path)) as api:
        started = time.monotonic()
        await asyncio.gather(*(api.get("/api/v1/version") for _ in range(100)))
    assert time.monotonic() - started < 10
    assert await denials(store) == []
