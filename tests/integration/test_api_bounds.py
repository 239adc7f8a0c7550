"""What the REST API refuses with a 4xx instead of failing with a 500, on SQLite and PostgreSQL.

Each case was a 500 found by fuzzing the API (tests/fuzz/test_openapi.py) or by
replaying its inputs against PostgreSQL: a NUL character in a parameter or a
body (PostgreSQL cannot store or compare it), a lone surrogate in a JSON body,
numbers past the database's 32-bit integers, a time that is naive or out of
range in UTC, and an intent holding a NUL, which was committed to git and then
failed every sync of the intents repo.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from chiffon.resources import Run, RunStatus
from chiffon.store import Store
from tests.helpers import intent_yaml
from tests.integration.test_api import apply_body, make_client

RUN_ID = "kuma-0000000000000001"
TOO_BIG = 2**31


@pytest.fixture
async def api(source, store: Store, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:  # type: ignore[no-untyped-def]
    await store.upsert_run(
        Run(
            id=RUN_ID,
            intent="kuma",
            generation=1,
            plan_digest="a" * 64,
            step="deploy",
            step_index=0,
            status=RunStatus.SUCCESSFUL,
            created_at=datetime.now(UTC),
            finished_at=datetime.now(UTC),
        )
    )
    async with make_client(source, store, tmp_path) as client:
        yield client


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("GET", "/api/v1/intents/a%00b"),
        ("GET", "/api/v1/intents/a%00b/summary"),
        ("GET", "/api/v1/intents/a%00b/history"),
        ("POST", "/api/v1/intents/a%00b/abort"),
        ("DELETE", "/api/v1/intents/a%00b"),
        ("GET", "/api/v1/runs/a%00b"),
        ("GET", "/api/v1/runs?intent=a%00b"),
        ("GET", "/api/v1/runs/a%00b/events"),
        ("GET", "/api/v1/runs/a%00b/postmortem"),
        ("GET", "/api/v1/agents/a%00b"),
        ("GET", "/api/v1/agents/a%00b/capacity"),
        ("GET", "/api/v1/audit?actor=a%00b"),
        ("GET", "/api/v1/audit?service=%00&resource=%00&action=%00"),
        ("GET", "/api/v1/intents?a%00=1"),
    ],
)
async def test_a_nul_in_a_parameter_is_422(api: httpx.AsyncClient, method: str, url: str) -> None:
    body = {"reason": "x"} if url.endswith("/abort") else None
    response = await api.request(method, url, json=body)
    assert response.status_code == 422, response.text
    assert "NUL character" in response.json()["detail"]


@pytest.mark.parametrize(
    "url",
    [
        f"/api/v1/runs/{RUN_ID}/events?after={TOO_BIG}",
        f"/api/v1/runs/{RUN_ID}/events?after={2**64}",
        f"/api/v1/runs/{RUN_ID}/stream?after={TOO_BIG}",
        f"/api/v1/suggestions/{TOO_BIG}",
        f"/api/v1/suggestions/{-(2**63) - 1}",
    ],
)
async def test_numbers_past_the_database_integers_are_422(api: httpx.AsyncClient, url: str) -> None:
    response = await api.get(url)
    assert response.status_code == 422, response.text


async def test_a_last_event_id_past_the_database_integers_is_422(api: httpx.AsyncClient) -> None:
    response = await api.get(f"/api/v1/runs/{RUN_ID}/stream", headers={"Last-Event-ID": str(TOO_BIG)})
    assert response.status_code == 422, response.text
    assert "Last-Event-ID" in response.json()["detail"]


async def test_audit_since_is_read_in_utc(api: httpx.AsyncClient) -> None:
    naive = await api.get("/api/v1/audit", params={"since": "2000-01-01T00:00:00"})
    assert naive.status_code == 200, naive.text
    out_of_range = await api.get("/api/v1/audit", params={"since": "9999-12-31T23:59:59-23:00"})
    assert out_of_range.status_code == 422, out_of_range.text
    assert "out of range" in out_of_range.json()["detail"]


@pytest.mark.parametrize("number", ["0.0", "1700000000", "-5", "+12.5", "1.94e+16", "now"])
async def test_audit_since_is_not_read_as_unix_time(api: httpx.AsyncClient, number: str) -> None:
    response = await api.get("/api/v1/audit", params={"since": number})
    assert response.status_code == 422, response.text
    assert "RFC 3339" in response.text


@pytest.mark.parametrize(
    ("url", "body"),
    [
        ("/api/v1/intents/kuma/abort", b'{"reason": "a\\u0000b"}'),
        ("/api/v1/intents/kuma/rollback", b'{"to": "HEAD", "reason": "\\u0000"}'),
        ("/api/v1/intents/apply", b'{"files": [{"name": "a\\u0000.yaml", "content": "x: 1"}]}'),
        ("/api/v1/intents/apply", b'{"files": [{"name": "a.yaml", "content": "x"}], "message": "\\u0000"}'),
        ("/api/v1/intents/kuma", b'{"message": "\\u0000"}'),
        ("/api/v1/suggestions/1/dismiss", b'{"reason": "\\u0000"}'),
    ],
)
async def test_a_nul_in_a_body_is_422(api: httpx.AsyncClient, url: str, body: bytes) -> None:
    method = "DELETE" if url == "/api/v1/intents/kuma" else "POST"
    response = await api.request(method, url, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert "NUL character" in response.text


async def test_a_lone_surrogate_in_a_body_is_422(api: httpx.AsyncClient) -> None:
    response = await api.post(
        "/api/v1/intents/kuma/abort",
        content=b'{"reason": "\\ud800"}',
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 422, response.text


async def test_an_intent_holding_a_nul_is_refused_and_the_source_keeps_working(
    api: httpx.AsyncClient, store: Store
) -> None:
    nul = intent_yaml("nul").replace("vars: {port: 3001}", 'vars: {port: "30\\0"}')
    refused = await api.post("/api/v1/intents/apply", json=apply_body(nul=nul))
    assert refused.status_code == 422, refused.text
    [problem] = refused.json()["errors"]
    assert problem["field"] == "spec.vars" and "NUL character" in problem["message"]

    applied = await api.post("/api/v1/intents/apply", json=apply_body(good=intent_yaml("good")))
    assert applied.status_code == 200, applied.text
    assert [intent.metadata.name for intent in await store.list_intents()] == ["good"]
    assert (await api.post("/api/v1/sources/sync", json={})).status_code == 200
