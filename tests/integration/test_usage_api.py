"""``GET /api/v1/usage`` and ``chiffonctl usage`` over a real ledger (SQLite and PostgreSQL).

The ledger rows are written the way LlmRouter writes them (``record_llm_usage``);
the API adds them up, and ``chiffonctl`` runs as a subprocess against the API
on a real socket, exactly as a person runs it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from chiffon.api.app import create_app
from chiffon.api.context import ServerContext
from chiffon.controllers.intents_writer import IntentsWriter
from chiffon.settings import Settings
from chiffon.store import Store
from tests.integration.live import chiffonctl, serve

OLLAMA = "ollama/llama3.1:8b"
CLAUDE = "anthropic/claude-sonnet-4-5"
SECRET = "sk-ant-test-SECRET-51d2"


def llm_settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "home": tmp_path,
        "llm_local_model": OLLAMA,
        "llm_external_model": CLAUDE,
        "llm_external_api_key": SECRET,
        "llm_local_daily_tokens": 10_000,
        "llm_external_monthly_budget_usd": 2.0,
    }
    return Settings(**{**values, **overrides})  # type: ignore[arg-type]


@pytest.fixture
def context(source, store: Store, tmp_path: Path) -> ServerContext:  # type: ignore[no-untyped-def]
    return ServerContext(llm_settings(tmp_path), store, source, IntentsWriter(source))


@pytest.fixture
async def api(context: ServerContext) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(context))
    async with httpx.AsyncClient(transport=transport, base_url="http://chiffon") as client:
        yield client


async def record(
    store: Store, model: str, *, tokens: int, cost: float, outcome: str = "success", **kw: object
) -> None:
    await store.record_llm_usage(
        model=model,
        provider=model.split("/")[0],
        prompt_tokens=tokens,
        completion_tokens=tokens // 2,
        cost_usd=cost,
        latency_ms=800,
        reason="local first; complexity 0.10, priority Normal",
        outcome=outcome,
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
async def ledger(store: Store) -> Store:
    """Two local calls (one failed) and one external call today, one external call 40 days ago."""
    await record(store, OLLAMA, tokens=2000, cost=0.0)
    await record(store, OLLAMA, tokens=0, cost=0.0, outcome="timeout")
    await record(store, CLAUDE, tokens=1000, cost=0.5)
    await record(store, CLAUDE, tokens=9000, cost=7.0, time=datetime.now(UTC) - timedelta(days=40))
    return store


async def test_usage_adds_up_spend_quota_and_budget(api: httpx.AsyncClient, ledger: Store) -> None:
    response = await api.get("/api/v1/usage")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["kind"] == "LlmUsage" and body["configured"] is True
    by_model = {item["model"]: item for item in body["items"]}
    assert by_model[OLLAMA] == {
        "provider": "ollama",
        "model": OLLAMA,
        "role": "local",
        "calls": 2,
        "failures": 1,
        "promptTokens": 2000,
        "completionTokens": 1000,
        "tokens": 3000,
        "costUsd": 0.0,
    }
    assert by_model[CLAUDE]["calls"] == 1 and by_model[CLAUDE]["costUsd"] == 0.5  # not the old call
    assert body["totals"]["calls"] == 3 and body["totals"]["costUsd"] == 0.5
    assert body["local"] == {
        "model": OLLAMA,
        "dailyTokens": 10_000,
        "usedTokens": 3000,
        "usedPercent": 30.0,
        "leftPercent": 70.0,
    }
    assert body["external"] == {
        "model": CLAUDE,
        "monthlyBudgetUsd": 2.0,
        "spentUsd": 0.5,
        "leftUsd": 1.5,
        "spentPercent": 25.0,
    }
    assert SECRET not in response.text


async def test_since_widens_and_narrows_the_window(api: httpx.AsyncClient, ledger: Store) -> None:
    wide = (await api.get("/api/v1/usage", params={"since": "60d"})).json()
    assert wide["totals"]["calls"] == 4 and wide["totals"]["costUsd"] == 7.5
    narrow = (await api.get("/api/v1/usage", params={"since": "30m"})).json()
    assert narrow["totals"]["calls"] == 3
    since = datetime.fromisoformat(narrow["since"].replace("Z", "+00:00"))
    assert timedelta(minutes=29) < datetime.now(UTC) - since < timedelta(minutes=31)


@pytest.mark.parametrize("since", ["soon", "0d", "-5m", "4000d", "x" * 21])
async def test_bad_since_is_422_naming_the_parameter(api: httpx.AsyncClient, since: str) -> None:
    response = await api.get("/api/v1/usage", params={"since": since})
    assert response.status_code == 422
    assert "since" in response.text


async def test_nothing_configured_still_reports(source, store: Store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    context = ServerContext(Settings(home=tmp_path), store, source, IntentsWriter(source))
    transport = httpx.ASGITransport(app=create_app(context))
    async with httpx.AsyncClient(transport=transport, base_url="http://chiffon") as client:
        body = (await client.get("/api/v1/usage")).json()
    assert body["configured"] is False and body["items"] == [] and body["totals"]["calls"] == 0
    assert body["local"]["model"] is None and body["external"]["model"] is None


# chiffonctl ---------------------------------------------------------------------------------


async def test_chiffonctl_usage(context: ServerContext, ledger: Store) -> None:
    async with serve(create_app(context)) as url:
        table = await chiffonctl(url, "usage")
        assert table.code == 0, table.stderr
        header, *rows = table.stdout.splitlines()
        assert header.split() == ["PROVIDER", "MODEL", "ROLE", "CALLS", "FAILED", "TOKENS", "COST"]
        assert rows[0].split() == ["anthropic", CLAUDE, "external", "1", "0", "1,500", "$0.5000"]
        assert rows[1].split() == ["ollama", OLLAMA, "local", "2", "1", "3,000", "$0.0000"]
        assert rows[2].split() == ["TOTAL", "3", "1", "4,500", "$0.5000"]
        assert f"Local quota ({OLLAMA}): 3,000 of 10,000 tokens used today (30 %), 70 % left." in table.stdout
        assert f"External budget ({CLAUDE}): $0.50 of $2.00 spent this month, $1.50 left." in table.stdout

        as_json = await chiffonctl(url, "usage", "--since", "60d", "-o", "json")
        assert as_json.code == 0 and json.loads(as_json.stdout)["totals"]["calls"] == 4
        as_yaml = await chiffonctl(url, "usage", "-o", "yaml")
        assert as_yaml.code == 0 and "kind: LlmUsage" in as_yaml.stdout
        for result in (table, as_json, as_yaml):
            assert SECRET not in result.stdout + result.stderr


async def test_chiffonctl_usage_with_no_calls(source, store: Store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    context = ServerContext(Settings(home=tmp_path), store, source, IntentsWriter(source))
    async with serve(create_app(context)) as url:
        result = await chiffonctl(url, "usage", "--since", "7d")
    assert result.code == 0
    assert "No LLM calls in the last 7d." in result.stdout and "No LLM is configured" in result.stderr


@pytest.mark.parametrize("since", ["soon", "0d", "30 days"])
async def test_chiffonctl_bad_since_exits_1_without_a_server(since: str) -> None:
    result = await chiffonctl("http://127.0.0.1:9", "usage", "--since", since)
    assert result.code == 1, (result.stdout, result.stderr)
    assert result.stderr.startswith("chiffonctl: error: --since:")


async def test_chiffonctl_unreachable_server_exits_2() -> None:
    result = await chiffonctl("http://127.0.0.1:9", "usage")
    assert result.code == 2 and "cannot reach the Chiffon server" in result.stderr
