"""The LLM cost policy as tables (DESIGN §6): complexity, routes and their reasons, quota and budget."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import SecretStr

from chiffon.agents.llm import (
    LlmConfig,
    Route,
    build_usage_report,
    choose_route,
    day_start,
    headroom,
    month_start,
    provider_of,
    role_of,
    score_complexity,
)
from chiffon.resources import Priority, parse_window
from chiffon.settings import Settings
from chiffon.store.records import LlmSpend

LOCAL = "ollama/llama3.1:8b"
EXTERNAL = "anthropic/claude-sonnet-4-5"
BOTH = LlmConfig(local_model=LOCAL, external_model=EXTERNAL)
LOCAL_ONLY = LlmConfig(local_model=LOCAL)
EXTERNAL_ONLY = LlmConfig(external_model=EXTERNAL)
NONE = LlmConfig()


def spend(model: str, *, tokens: int = 0, cost: float = 0.0, provider: str | None = None) -> LlmSpend:
    return LlmSpend(
        provider=provider or provider_of(model),
        model=model,
        calls=1,
        prompt_tokens=tokens,
        completion_tokens=0,
        cost_usd=cost,
        failures=0,
    )


# score_complexity ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_text", "want"),
    [
        ("", 0.0),
        ("deploy uptime kuma", 0.01),
        ("restart jellyfin", 0.01),
        # two joining words: 0.2, plus nine distinct words
        ("deploy uptime kuma on nas01 and then restart caddy", 0.23),
        # four joins (two commas, then, and) cap at 0.4; one condition 0.15
        (
            "upgrade postgres on db01, then migrate nextcloud, "
            "and only if backups succeeded restart the proxy",
            0.61,
        ),
        # joins and conditions are capped: 0.4 and 0.3
        ("and and and and and and and", 0.4),
        ("if if if if unless when", 0.31),
        # length alone never makes a request complex
        (" ".join(f"word{i}" for i in range(200)), 0.3),
        (" ".join(["kuma"] * 200), 0.0),
        # six joins (capped at four) and a condition reach the default threshold
        ("Deploy Kuma, Gotify and Caddy; first stop the old stack, then migrate unless empty", 0.6),
    ],
)
def test_score_complexity(request_text: str, want: float) -> None:
    assert score_complexity(request_text) == pytest.approx(want)


def test_score_complexity_is_bounded_and_case_blind() -> None:
    text = "If A, then B; unless C and D, otherwise E when F " * 20
    assert 0.0 <= score_complexity(text) <= 1.0
    assert score_complexity(text.upper()) == score_complexity(text)


# choose_route ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "local_remaining", "budget_left", "complexity", "priority", "want_models", "want_reason"),
    [
        pytest.param(
            BOTH,
            0.64,
            7.5,
            0.2,
            "Normal",
            ("local", "external"),
            "local first; local quota 64 % left, complexity 0.20, priority Normal, "
            "external budget $7.50 left",
            id="plain-request-local-first",
        ),
        pytest.param(
            BOTH,
            0.12,
            7.5,
            0.2,
            "Normal",
            ("external", "local"),
            "external first: local quota under 20 %; local quota 12 % left",
            id="low-local-quota",
        ),
        pytest.param(
            BOTH,
            0.2,
            7.5,
            0.2,
            "Normal",
            ("local", "external"),
            "local first; local quota 20 % left",
            id="quota-exactly-20-is-not-under",
        ),
        pytest.param(
            BOTH,
            0.9,
            7.5,
            0.6,
            "Normal",
            ("external", "local"),
            "external first: complexity 0.60 ≥ 0.60",
            id="complex-at-threshold",
        ),
        pytest.param(
            BOTH, 0.9, 7.5, 0.59, "Normal", ("local", "external"), "local first", id="just-under-threshold"
        ),
        pytest.param(
            BOTH,
            0.9,
            7.5,
            0.1,
            "High",
            ("external", "local"),
            "external first: priority High",
            id="high-priority",
        ),
        pytest.param(
            BOTH, 0.9, 7.5, 0.1, Priority.HIGH, ("external", "local"), "priority High", id="priority-enum"
        ),
        pytest.param(
            BOTH,
            0.05,
            7.5,
            0.9,
            "High",
            ("external", "local"),
            "external first: local quota under 20 %, complexity 0.90 ≥ 0.60, priority High",
            id="every-reason-named",
        ),
        pytest.param(
            BOTH,
            -0.5,
            7.5,
            0.1,
            "Normal",
            ("external", "local"),
            "local quota 0 % left",
            id="overspent-quota-still-falls-back-to-local",
        ),
        pytest.param(
            BOTH,
            0.9,
            0.0,
            0.9,
            "High",
            ("local",),
            "local only, external budget spent ($10.00 of $10.00 this month) "
            "(external wanted: complexity 0.90 ≥ 0.60, priority High)",
            id="budget-spent-refuses-external",
        ),
        pytest.param(
            BOTH,
            0.9,
            -0.25,
            0.1,
            "Normal",
            ("local",),
            "external budget spent ($10.25 of $10.00 this month)",
            id="budget-overspent",
        ),
        pytest.param(
            BOTH,
            None,
            None,
            0.1,
            "Normal",
            ("local", "external"),
            "local first; complexity 0.10, priority Normal",
            id="headroom-unknown",
        ),
        pytest.param(
            LOCAL_ONLY,
            0.1,
            None,
            0.9,
            "High",
            ("local",),
            "local only, no external model configured (external wanted:",
            id="no-external-model",
        ),
        pytest.param(
            EXTERNAL_ONLY,
            None,
            5.0,
            0.1,
            "Normal",
            ("external",),
            "external only, no local model configured",
            id="no-local-model",
        ),
        pytest.param(
            EXTERNAL_ONLY,
            None,
            0.0,
            0.1,
            "Normal",
            (),
            "no model allowed: no local model configured and external budget spent",
            id="no-local-and-budget-spent",
        ),
        pytest.param(NONE, None, None, 0.9, "High", (), "no LLM configured", id="nothing-configured"),
    ],
)
def test_choose_route(
    config: LlmConfig,
    local_remaining: float | None,
    budget_left: float | None,
    complexity: float,
    priority: str,
    want_models: tuple[str, ...],
    want_reason: str,
) -> None:
    route = choose_route(
        config=config,
        local_remaining=local_remaining,
        external_budget_left=budget_left,
        complexity=complexity,
        priority=priority,
    )
    assert isinstance(route, Route)
    assert route.models == want_models
    assert want_reason in route.reason


def test_choose_route_honours_a_configured_threshold() -> None:
    strict = LlmConfig(local_model=LOCAL, external_model=EXTERNAL, complexity_threshold=0.9)
    route = choose_route(
        config=strict, local_remaining=1.0, external_budget_left=1.0, complexity=0.8, priority="Normal"
    )
    assert route.models == ("local", "external")


def test_reasons_never_carry_the_api_key() -> None:
    config = LlmConfig(
        local_model=LOCAL, external_model=EXTERNAL, external_api_key=SecretStr("sk-ant-SECRET")
    )
    for budget in (5.0, 0.0):
        route = choose_route(
            config=config, local_remaining=0.1, external_budget_left=budget, complexity=0.9, priority="High"
        )
        assert "SECRET" not in route.reason
    assert "SECRET" not in repr(config)


# Quota and budget ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "want"),
    [
        (LOCAL, "ollama"),
        ("ollama_chat/qwen2.5:7b", "ollama_chat"),
        (EXTERNAL, "anthropic"),
        ("gpt-4o", "unknown"),
    ],
)
def test_provider_of(model: str, want: str) -> None:
    assert provider_of(model) == want


@pytest.mark.parametrize(
    ("config", "row", "want"),
    [
        (BOTH, spend(LOCAL), "local"),
        (BOTH, spend(EXTERNAL), "external"),
        # another model of the local provider still runs on the local machine
        (BOTH, spend("ollama/qwen2.5:7b"), "local"),
        (BOTH, spend("anthropic/claude-haiku-4-5"), "external"),
        (BOTH, spend("openai/gpt-4o"), None),
        # both roles on one provider: only the exact model decides
        (LlmConfig(local_model="openai/small", external_model="openai/big"), spend("openai/small"), "local"),
        (LlmConfig(local_model="openai/small", external_model="openai/big"), spend("openai/other"), None),
        (NONE, spend(LOCAL), None),
    ],
)
def test_role_of(config: LlmConfig, row: LlmSpend, want: str | None) -> None:
    assert role_of(row, config) == want


@pytest.mark.parametrize(
    ("config", "today", "month", "want"),
    [
        (BOTH, [], [], (1.0, 10.0)),
        (BOTH, [spend(LOCAL, tokens=50_000)], [spend(EXTERNAL, cost=2.5)], (0.75, 7.5)),
        # every paid row counts against the budget, the local model's tokens against the quota
        (
            BOTH,
            [spend(LOCAL, tokens=190_000), spend(EXTERNAL, tokens=9_999)],
            [spend(EXTERNAL, cost=4.0), spend("openai/gpt-4o", cost=1.0), spend(LOCAL, cost=0.0)],
            (0.05, 5.0),
        ),
        (BOTH, [spend(LOCAL, tokens=400_000)], [spend(EXTERNAL, cost=12.0)], (-1.0, -2.0)),
        (LlmConfig(local_model=LOCAL, local_daily_tokens=0), [], [], (0.0, None)),
        (LOCAL_ONLY, [], [spend(EXTERNAL, cost=3.0)], (1.0, None)),
        (EXTERNAL_ONLY, [spend(LOCAL, tokens=10)], [], (None, 10.0)),
    ],
)
def test_headroom(
    config: LlmConfig, today: list[LlmSpend], month: list[LlmSpend], want: tuple[float | None, float | None]
) -> None:
    local, external = headroom(config, today, month)
    assert (local, external) == (
        pytest.approx(want[0]) if want[0] is not None else None,
        pytest.approx(want[1]) if want[1] is not None else None,
    )


def test_day_and_month_start_are_utc() -> None:
    now = datetime(2025, 3, 31, 23, 30, tzinfo=UTC)
    assert day_start(now) == datetime(2025, 3, 31, tzinfo=UTC)
    assert month_start(now) == datetime(2025, 3, 1, tzinfo=UTC)
    # 01:30 on April 1st in UTC+2 is still March 31st in UTC
    paris = datetime(2025, 4, 1, 1, 30, tzinfo=timezone(timedelta(hours=2)))
    assert month_start(paris) == datetime(2025, 3, 1, tzinfo=UTC)
    assert day_start(paris) == datetime(2025, 3, 31, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("30d", timedelta(days=30)),
        ("7d", timedelta(days=7)),
        ("24h", timedelta(hours=24)),
        ("30m", timedelta(minutes=30)),
        ("1d12h", timedelta(days=1, hours=12)),
        (" 90s ", timedelta(seconds=90)),
    ],
)
def test_parse_window(text: str, want: timedelta) -> None:
    assert parse_window(text) == want


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "is not a duration"),
        ("soon", "is not a duration"),
        ("d", "is not a duration"),
        ("0d", "is not a duration"),
        ("-1d", "is not a duration"),
        ("30 days", "is not a duration"),
        ("99999999999d", "is not a duration"),
        ("4000d", "too long"),
    ],
)
def test_parse_window_refuses(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_window(text)


# Configuration and report ----------------------------------------------------------------------


def test_config_from_settings(tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(
        home=tmp_path,
        llm_local_model=LOCAL,
        llm_local_api_base="http://127.0.0.1:11434",
        llm_external_model=EXTERNAL,
        llm_external_api_key="sk-ant-SECRET",
        llm_local_daily_tokens=1000,
        llm_external_monthly_budget_usd=2.5,
        llm_timeout=5,
        llm_complexity_threshold=0.4,
    )
    config = LlmConfig.from_settings(settings)
    assert config.configured and config.local_model == LOCAL and config.external_model == EXTERNAL
    assert config.local_daily_tokens == 1000 and config.external_monthly_budget_usd == 2.5
    assert config.timeout == 5 and config.complexity_threshold == 0.4
    assert (
        config.external_api_key is not None and config.external_api_key.get_secret_value() == "sk-ant-SECRET"
    )
    assert not LlmConfig.from_settings(Settings(home=tmp_path)).configured


def test_settings_read_llm_environment(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("CHIFFON_LLM_EXTERNAL_MONTHLY_BUDGET_USD", "3.5")
    monkeypatch.setenv("CHIFFON_LLM_LOCAL_MODEL", LOCAL)
    settings = Settings(home=tmp_path)
    assert settings.llm_external_monthly_budget_usd == 3.5 and settings.llm_local_model == LOCAL


def test_usage_report_shape() -> None:
    config = LlmConfig(
        local_model=LOCAL, external_model=EXTERNAL, external_api_key=SecretStr("sk-ant-SECRET")
    )
    rows = [spend(EXTERNAL, tokens=300, cost=0.25), spend(LOCAL, tokens=50_000)]
    since = datetime(2025, 3, 1, tzinfo=UTC)
    report = build_usage_report(config, rows, rows, rows, since=since)
    assert report["kind"] == "LlmUsage" and report["since"] == "2025-03-01T00:00:00Z"
    assert [item["role"] for item in report["items"]] == ["external", "local"]
    assert report["totals"] == {
        "calls": 2,
        "failures": 0,
        "promptTokens": 50_300,
        "completionTokens": 0,
        "tokens": 50_300,
        "costUsd": 0.25,
    }
    assert report["local"] == {
        "model": LOCAL,
        "dailyTokens": 200_000,
        "usedTokens": 50_000,
        "usedPercent": 25.0,
        "leftPercent": 75.0,
    }
    assert report["external"] == {
        "model": EXTERNAL,
        "monthlyBudgetUsd": 10.0,
        "spentUsd": 0.25,
        "leftUsd": 9.75,
        "spentPercent": 2.5,
    }
    assert "SECRET" not in repr(report)
