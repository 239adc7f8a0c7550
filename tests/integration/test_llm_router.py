"""LlmRouter against real stores (SQLite and PostgreSQL) and a fake OpenAI-compatible server.

Answers come from litellm's ``mock_response`` (no socket at all) or from a small
server on 127.0.0.1 that answers, fails with a 500, refuses the key with a 401
that echoes it back, or hangs past the timeout, per path: ``{url}/{mode}/v1``.
What is checked is the state of the world: the ``llm_usage`` rows, the answer,
what the server saw, and what was logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from chiffon.agents.llm import LlmConfig, LlmRouter, LlmUnavailable, usage_report
from chiffon.store import Store
from chiffon.store.records import LlmUsage
from tests.integration.live import serve

OLLAMA = "ollama/llama3.1:8b"
CLAUDE = "anthropic/claude-sonnet-4-5"
FAKE_LOCAL = "openai/fake-local"
FAKE_EXTERNAL = "openai/fake-external"
SECRET = "sk-test-SECRET-7f3a9c"
MESSAGES = [{"role": "user", "content": "deploy uptime kuma on nas01"}]
HUNG_SECONDS = 10  # a hung request is released at teardown, or after this long


@dataclass
class FakeLlm:
    """An OpenAI-compatible chat endpoint; the first path segment says how it behaves."""

    url: str
    hits: list[dict[str, Any]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def base(self, mode: str) -> str:
        return f"{self.url}/{mode}/v1"

    def modes(self) -> list[str]:
        return [hit["mode"] for hit in self.hits]


def fake_app(fake: FakeLlm) -> Starlette:
    async def chat(request: Request) -> JSONResponse:
        mode = request.path_params["mode"]
        body = await request.json()
        auth = request.headers.get("authorization", "")
        fake.hits.append({"mode": mode, "body": body, "authorization": auth})
        if mode == "fail":
            return JSONResponse({"error": {"message": "boom", "type": "server_error"}}, status_code=500)
        if mode == "deny":
            message = f"Incorrect API key provided: {auth.removeprefix('Bearer ')}"
            return JSONResponse(
                {"error": {"message": message, "type": "invalid_request_error"}}, status_code=401
            )
        if mode == "hang":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(fake.release.wait(), HUNG_SECONDS)
        return JSONResponse(
            {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": 1,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": f"answer from {mode}"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
            }
        )

    return Starlette(routes=[Route("/{mode}/v1/chat/completions", chat, methods=["POST"])])


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeLlm]:
    found = FakeLlm(url="")
    async with serve(fake_app(found), grace=1) as url:
        found.url = url
        # The fake local model speaks OpenAI, whose client insists on some key; the external
        # model is reached through OpenAI's own base-URL variable (LlmConfig has no external base).
        monkeypatch.setenv("OPENAI_API_KEY", "sk-local-not-a-secret")
        try:
            yield found
        finally:
            found.release.set()


def fake_config(
    fake: FakeLlm, monkeypatch: pytest.MonkeyPatch, local: str, external: str | None, **kw: Any
) -> LlmConfig:
    if external is not None:
        monkeypatch.setenv("OPENAI_BASE_URL", fake.base(external))
    return LlmConfig(
        local_model=FAKE_LOCAL,
        local_api_base=fake.base(local),
        external_model=FAKE_EXTERNAL if external is not None else None,
        external_api_key=SecretStr(SECRET) if external is not None else None,
        **{"timeout": 5.0, **kw},
    )


async def rows(store: Store) -> list[LlmUsage]:
    """Ledger rows, oldest first."""
    return list(reversed(await store.list_llm_usage()))


# mock_response: the policy and the ledger without a socket ----------------------------------------


async def test_plain_request_goes_local_and_is_recorded(store: Store) -> None:
    router = LlmRouter(LlmConfig(local_model=OLLAMA, external_model=CLAUDE), store)
    done = await router.complete(MESSAGES, complexity=0.1, intent="uptime-kuma", mock_response="hello")
    assert (done.text, done.model, done.provider, done.fallback_from) == ("hello", OLLAMA, "ollama", None)
    assert done.reason.startswith("local first; local quota 100 % left, complexity 0.10, priority Normal")
    [row] = await rows(store)
    assert (row.model, row.provider, row.outcome, row.intent) == (OLLAMA, "ollama", "success", "uptime-kuma")
    assert (row.prompt_tokens, row.completion_tokens, row.cost_usd) == (10, 20, 0.0)
    assert row.reason == done.reason and row.latency_ms >= 0


async def test_high_priority_goes_external_and_costs_money(store: Store) -> None:
    router = LlmRouter(LlmConfig(local_model=OLLAMA, external_model=CLAUDE), store)
    done = await router.complete(MESSAGES, complexity=0.1, priority="High", mock_response="hi")
    assert done.model == CLAUDE and done.provider == "anthropic" and done.cost_usd > 0
    assert done.reason.startswith("external first: priority High")
    [row] = await rows(store)
    assert row.model == CLAUDE and row.cost_usd == pytest.approx(done.cost_usd)


async def test_complex_request_goes_external(store: Store) -> None:
    router = LlmRouter(LlmConfig(local_model=OLLAMA, external_model=CLAUDE), store)
    done = await router.complete(MESSAGES, complexity=0.75, mock_response="hi")
    assert done.model == CLAUDE and "complexity 0.75 ≥ 0.60" in done.reason


async def test_low_local_quota_prefers_external(store: Store) -> None:
    await store.record_llm_usage(
        model=OLLAMA,
        provider="ollama",
        prompt_tokens=170_000,
        completion_tokens=20_000,
        cost_usd=0.0,
        latency_ms=900,
        reason="earlier",
        outcome="success",
    )
    router = LlmRouter(LlmConfig(local_model=OLLAMA, external_model=CLAUDE), store)
    assert await router.headroom() == (pytest.approx(0.05), pytest.approx(10.0))
    done = await router.complete(MESSAGES, complexity=0.1, mock_response="hi")
    assert done.model == CLAUDE and "local quota under 20 %" in done.reason and "5 % left" in done.reason


async def test_yesterdays_tokens_and_last_months_cost_do_not_count(store: Store) -> None:
    old = datetime.now(UTC) - timedelta(days=40)
    for model, cost in ((OLLAMA, 0.0), (CLAUDE, 50.0)):
        await store.record_llm_usage(
            model=model,
            provider=model.split("/")[0],
            prompt_tokens=500_000,
            completion_tokens=0,
            cost_usd=cost,
            latency_ms=1,
            reason="long ago",
            outcome="success",
            time=old,
        )
    router = LlmRouter(LlmConfig(local_model=OLLAMA, external_model=CLAUDE), store)
    assert await router.headroom() == (1.0, 10.0)


async def test_spent_budget_refuses_external_and_says_so(store: Store) -> None:
    await store.record_llm_usage(
        model=CLAUDE,
        provider="anthropic",
        prompt_tokens=1000,
        completion_tokens=1000,
        cost_usd=10.5,
        latency_ms=2000,
        reason="earlier",
        outcome="success",
    )
    router = LlmRouter(LlmConfig(local_model=OLLAMA, external_model=CLAUDE), store)
    done = await router.complete(MESSAGES, complexity=0.9, priority="High", mock_response="hi")
    assert done.model == OLLAMA
    assert "local only, external budget spent ($10.50 of $10.00 this month)" in done.reason
    assert (await rows(store))[-1].reason == done.reason


async def test_nothing_configured_is_unavailable(store: Store) -> None:
    router = LlmRouter(LlmConfig(), store)
    with pytest.raises(LlmUnavailable, match="no LLM configured"):
        await router.complete(MESSAGES, complexity=0.1, mock_response="hi")
    assert await rows(store) == []


async def test_external_only_with_spent_budget_is_unavailable(store: Store) -> None:
    router = LlmRouter(LlmConfig(external_model=CLAUDE, external_monthly_budget_usd=0), store)
    with pytest.raises(LlmUnavailable, match="no local model configured and external budget spent"):
        await router.complete(MESSAGES, complexity=0.1, mock_response="hi")
    assert await rows(store) == []


# A fake server: errors, timeouts and fallback ---------------------------------------------------


async def test_local_error_falls_back_to_external(
    store: Store, fake: FakeLlm, monkeypatch: pytest.MonkeyPatch
) -> None:
    router = LlmRouter(fake_config(fake, monkeypatch, local="fail", external="ok"), store)
    done = await router.complete(MESSAGES, complexity=0.1, intent="kuma")
    assert (done.text, done.model, done.fallback_from) == ("answer from ok", FAKE_EXTERNAL, "local")
    assert fake.modes() == ["fail", "ok"]
    failed, answered = await rows(store)
    assert (failed.model, failed.provider, failed.outcome) == (FAKE_LOCAL, "openai", "error")
    assert (failed.prompt_tokens, failed.completion_tokens, failed.intent) == (0, 0, "kuma")
    assert failed.reason.startswith("local first;")
    assert (answered.model, answered.outcome, answered.prompt_tokens, answered.completion_tokens) == (
        FAKE_EXTERNAL,
        "success",
        12,
        5,
    )
    assert answered.reason == f"fallback after local error; {failed.reason}" == done.reason


async def test_local_timeout_falls_back_to_external(
    store: Store, fake: FakeLlm, monkeypatch: pytest.MonkeyPatch
) -> None:
    router = LlmRouter(fake_config(fake, monkeypatch, local="hang", external="ok", timeout=0.5), store)
    done = await router.complete(MESSAGES, complexity=0.1)
    assert done.model == FAKE_EXTERNAL and done.fallback_from == "local"
    hung, answered = await rows(store)
    assert hung.outcome == "timeout" and 450 <= hung.latency_ms < 3000
    assert answered.outcome == "success" and answered.reason.startswith(
        "fallback after local timeout; local first;"
    )


async def test_external_error_falls_back_to_local(
    store: Store, fake: FakeLlm, monkeypatch: pytest.MonkeyPatch
) -> None:
    router = LlmRouter(fake_config(fake, monkeypatch, local="ok", external="fail"), store)
    done = await router.complete(MESSAGES, complexity=0.1, priority="High")
    assert (done.model, done.fallback_from) == (FAKE_LOCAL, "external")
    assert [(row.model, row.outcome) for row in await rows(store)] == [
        (FAKE_EXTERNAL, "error"),
        (FAKE_LOCAL, "success"),
    ]
    assert done.reason.startswith("fallback after external error; external first: priority High")


async def test_every_model_failing_is_unavailable_and_says_why(
    store: Store, fake: FakeLlm, monkeypatch: pytest.MonkeyPatch
) -> None:
    router = LlmRouter(fake_config(fake, monkeypatch, local="hang", external="fail", timeout=0.5), store)
    with pytest.raises(LlmUnavailable) as caught:
        await router.complete(MESSAGES, complexity=0.1)
    message = str(caught.value)
    assert f"local model {FAKE_LOCAL}: timed out after 0.5 s" in message
    assert f"external model {FAKE_EXTERNAL}: " in message and "boom" in message
    assert [row.outcome for row in await rows(store)] == ["timeout", "error"]


async def test_spent_budget_means_no_fallback_to_external(
    store: Store, fake: FakeLlm, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = fake_config(fake, monkeypatch, local="fail", external="ok", external_monthly_budget_usd=0)
    with pytest.raises(LlmUnavailable, match="external budget spent"):
        await LlmRouter(config, store).complete(MESSAGES, complexity=0.1)
    assert fake.modes() == ["fail"]
    [row] = await rows(store)
    assert row.outcome == "error" and "local only, external budget spent" in row.reason


async def test_json_schema_asks_for_json(
    store: Store, fake: FakeLlm, monkeypatch: pytest.MonkeyPatch
) -> None:
    router = LlmRouter(fake_config(fake, monkeypatch, local="ok", external=None), store)
    schema = {"type": "object", "properties": {"service": {"type": "string"}}}
    await router.complete(MESSAGES, complexity=0.1, json_schema=schema)
    # litellm knows nothing of this model's schema support: plain JSON mode is asked for
    assert fake.hits[0]["body"]["response_format"] == {"type": "json_object"}


async def test_secrets_never_leak(
    store: Store, fake: FakeLlm, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    config = fake_config(fake, monkeypatch, local="fail", external="deny")
    with pytest.raises(LlmUnavailable) as caught:
        await LlmRouter(config, store).complete(MESSAGES, complexity=0.1)
    # The key did reach the provider, and the provider echoed it back in its error.
    assert fake.hits[-1]["authorization"] == f"Bearer {SECRET}"
    assert "Incorrect API key provided: ***" in str(caught.value)
    report = await usage_report(store, config, since=datetime.now(UTC) - timedelta(days=1))
    assert report["totals"]["failures"] == 2
    stored = await rows(store)
    for text in (str(caught.value), caplog.text, repr(report), repr(stored), repr(config)):
        assert SECRET not in text


async def test_usage_report_adds_up_the_ledger(
    store: Store, fake: FakeLlm, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = fake_config(fake, monkeypatch, local="fail", external="ok", local_daily_tokens=100)
    router = LlmRouter(config, store)
    await router.complete(MESSAGES, complexity=0.1)
    await router.complete(MESSAGES, complexity=0.1, priority="High")
    report = await usage_report(store, config, since=datetime.now(UTC) - timedelta(hours=1))
    by_model = {item["model"]: item for item in report["items"]}
    assert by_model[FAKE_LOCAL] | {"costUsd": 0} == {
        "provider": "openai",
        "model": FAKE_LOCAL,
        "role": "local",
        "calls": 1,
        "failures": 1,
        "promptTokens": 0,
        "completionTokens": 0,
        "tokens": 0,
        "costUsd": 0,
    }
    assert by_model[FAKE_EXTERNAL]["calls"] == 2 and by_model[FAKE_EXTERNAL]["tokens"] == 34
    assert report["totals"]["calls"] == 3 and report["totals"]["failures"] == 1
    assert report["local"]["usedTokens"] == 0 and report["local"]["leftPercent"] == 100.0
    assert report["external"]["model"] == FAKE_EXTERNAL and report["configured"] is True
