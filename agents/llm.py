"""The one door to language models (DESIGN §6): litellm behind a typed adapter, with a cost policy.

Decisions are pure functions, tested with tables; I/O stays at the edges:

* :func:`score_complexity` says how hard a request looks (0-1), from words alone.
* :func:`choose_route` says which models to try, in order, and why, from the local
  token quota left today, the external budget left this month, the complexity and
  the intent's priority. Local first; the external model first only when the local
  quota is under 20 %, the request is complex, or the priority is ``High``; never
  a model that is not configured, never the external one once its budget is spent.
* :class:`LlmRouter` reads quota and budget from the ledger (the store's
  ``llm_usage`` table), asks litellm's Router for one model at a time and falls
  back to the next itself, so that every attempt, answered or failed, is its own
  ledger row with model, tokens, cost, latency, outcome and the reason it was made.
* :func:`usage_report` is what ``GET /api/v1/usage`` and ``chiffonctl usage`` show.

This is the only module that imports litellm (tests/unit/test_layers.py), and it
does so lazily: the import takes seconds and most processes never call a model.
Secrets (the external API key) go to litellm and nowhere else: not into reasons,
error messages, ledger rows or logs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import SecretStr

from chiffon.resources import AuditEvent
from chiffon.resources import Outcome as AuditOutcome

if TYPE_CHECKING:
    from chiffon.settings import Settings
    from chiffon.store.records import LlmSpend

# litellm fetches its model price list from the network at import unless told not to.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

log = logging.getLogger(__name__)

Role = Literal["local", "external"]
Outcome = Literal["success", "error", "timeout"]

LOW_LOCAL_QUOTA = 0.2  # under this share of the daily local tokens left, the external model goes first
HIGH_PRIORITY = "High"
HEADROOM_CACHE_SECONDS = 5.0  # quota and budget are re-read at most this often
MAX_ERROR_CHARS = 300
_LITELLM_LOGGERS = ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy")
# Ollama (0.5+) takes the schema itself as ``format``; litellm's model facts do not say so.
_SCHEMA_PROVIDERS = frozenset({"ollama", "ollama_chat"})


class LlmUnavailable(Exception):  # noqa: N818 - the name the compiler and the issue use
    """No model answered; the message says which were tried and why they failed (or that none is set up)."""


@dataclass(frozen=True)
class LlmConfig:
    """Which models exist and what they may spend (``llm_*`` settings)."""

    local_model: str | None = None
    local_api_base: str | None = None
    external_model: str | None = None
    external_api_key: SecretStr | None = field(default=None, repr=False)
    local_daily_tokens: int = 200_000
    external_monthly_budget_usd: float = 10.0
    timeout: float = 30.0
    complexity_threshold: float = 0.6

    @classmethod
    def from_settings(cls, settings: Settings) -> LlmConfig:
        return cls(
            local_model=settings.llm_local_model or None,
            local_api_base=settings.llm_local_api_base or None,
            external_model=settings.llm_external_model or None,
            external_api_key=settings.llm_external_api_key,
            local_daily_tokens=settings.llm_local_daily_tokens,
            external_monthly_budget_usd=settings.llm_external_monthly_budget_usd,
            timeout=settings.llm_timeout,
            complexity_threshold=settings.llm_complexity_threshold,
        )

    @property
    def configured(self) -> bool:
        return bool(self.local_model or self.external_model)

    def model(self, role: Role) -> str | None:
        return self.local_model if role == "local" else self.external_model


# Pure decisions ---------------------------------------------------------------------------------

# Words that join steps ("stop X, then upgrade Y and restart Z") and words that make a step
# conditional. Commas and semicolons count as joins too. The weights cap each signal so
# that no single one decides: a long but plain request stays simple.
_STEP_WORDS = frozenset(
    {"and", "then", "after", "afterwards", "before", "once", "first", "next", "finally", "also", "followed"}
)
_CONDITION_WORDS = frozenset({"if", "unless", "when", "whenever", "except", "otherwise", "provided"})
_WORD = re.compile(r"[a-z0-9][a-z0-9._:/-]*")
_SIZE_WEIGHT, _SIZE_WORDS = 0.3, 80  # 80 distinct words or more: the whole 0.3
_STEP_WEIGHT, _MAX_STEPS = 0.1, 4
_CONDITION_WEIGHT, _MAX_CONDITIONS = 0.15, 2


def score_complexity(request: str) -> float:
    """How hard ``request`` looks, in [0, 1], rounded to two places.

    ``size`` (distinct words, up to 0.3) + ``steps`` (joining words, commas and
    semicolons, 0.1 each up to 0.4) + ``conditions`` ("if", "unless", "only when"…,
    0.15 each up to 0.3). Explainable on purpose: a person can predict the route.
    """
    text = request.lower()
    words = _WORD.findall(text)
    size = min(len(set(words)), _SIZE_WORDS) / _SIZE_WORDS * _SIZE_WEIGHT
    joins = sum(word in _STEP_WORDS for word in words) + text.count(",") + text.count(";")
    steps = min(joins, _MAX_STEPS) * _STEP_WEIGHT
    conditions = min(sum(word in _CONDITION_WORDS for word in words), _MAX_CONDITIONS) * _CONDITION_WEIGHT
    return round(min(size + steps + conditions, 1.0), 2)


@dataclass(frozen=True)
class Route:
    """The models to try, in order (the next one on error or timeout), and why, as a sentence."""

    models: tuple[Role, ...]
    reason: str


def choose_route(
    *,
    config: LlmConfig,
    local_remaining: float | None,
    external_budget_left: float | None,
    complexity: float,
    priority: str,
) -> Route:
    """Local first unless the external model is worth it and allowed (DESIGN §6).

    ``local_remaining`` is the share of today's local tokens left (None: not known);
    ``external_budget_left`` the dollars left this month (None: not known). A spent
    local quota does not forbid the local model (it is our own hardware): it only
    sends the external model first.
    """
    facts = _facts(config, local_remaining, external_budget_left, complexity, priority)
    wanted = _external_wanted(config, local_remaining, complexity, priority)
    blocked = _external_blocked(config, external_budget_left)
    if not config.configured:
        return Route((), "no LLM configured: set llm_local_model and/or llm_external_model")
    if config.local_model is None:
        if blocked:
            return Route((), f"no model allowed: no local model configured and {blocked}; {facts}")
        return Route(("external",), f"external only, no local model configured; {facts}")
    if blocked:
        although = f" (external wanted: {', '.join(wanted)})" if wanted else ""
        return Route(("local",), f"local only, {blocked}{although}; {facts}")
    if wanted:
        return Route(("external", "local"), f"external first: {', '.join(wanted)}; {facts}")
    return Route(("local", "external"), f"local first; {facts}")


def _external_wanted(
    config: LlmConfig, local_remaining: float | None, complexity: float, priority: str
) -> list[str]:
    wanted = []
    if local_remaining is not None and local_remaining < LOW_LOCAL_QUOTA:
        wanted.append(f"local quota under {round(LOW_LOCAL_QUOTA * 100)} %")
    if complexity >= config.complexity_threshold:
        wanted.append(f"complexity {complexity:.2f} ≥ {config.complexity_threshold:.2f}")
    if str(priority) == HIGH_PRIORITY:
        wanted.append("priority High")
    return wanted


def _external_blocked(config: LlmConfig, external_budget_left: float | None) -> str | None:
    if config.external_model is None:
        return "no external model configured"
    if external_budget_left is not None and external_budget_left <= 0:
        budget = config.external_monthly_budget_usd
        return f"external budget spent (${budget - external_budget_left:.2f} of ${budget:.2f} this month)"
    return None


def _facts(
    config: LlmConfig,
    local_remaining: float | None,
    external_budget_left: float | None,
    complexity: float,
    priority: str,
) -> str:
    parts = []
    if config.local_model is not None and local_remaining is not None:
        parts.append(f"local quota {_percent(local_remaining)} % left")
    parts.append(f"complexity {complexity:.2f}")
    parts.append(f"priority {priority}")
    if config.external_model is not None and external_budget_left is not None and external_budget_left > 0:
        parts.append(f"external budget ${external_budget_left:.2f} left")
    return ", ".join(parts)


def _percent(share: float) -> int:
    return round(min(max(share, 0.0), 1.0) * 100)


def provider_of(model: str) -> str:
    """litellm's provider prefix (``ollama`` in ``ollama/llama3.1:8b``); ``unknown`` without one."""
    prefix, slash, _ = model.partition("/")
    return prefix if slash and prefix else "unknown"


def role_of(spend: LlmSpend, config: LlmConfig) -> Role | None:
    """Whose quota a ledger row counts against: the model itself, else its provider when unambiguous."""
    if config.local_model is not None and spend.model == config.local_model:
        return "local"
    if config.external_model is not None and spend.model == config.external_model:
        return "external"
    local = provider_of(config.local_model) if config.local_model else None
    external = provider_of(config.external_model) if config.external_model else None
    if local is not None and spend.provider == local and local != external:
        return "local"
    if external is not None and spend.provider == external and local != external:
        return "external"
    return None


def local_tokens_used(config: LlmConfig, today: Sequence[LlmSpend]) -> int:
    return sum(row.tokens for row in today if role_of(row, config) == "local")


def external_spent(config: LlmConfig, month: Sequence[LlmSpend]) -> float:
    """Every dollar recorded this month except the local model's: the budget is about money."""
    return sum(row.cost_usd for row in month if role_of(row, config) != "local")


def headroom(
    config: LlmConfig, today: Sequence[LlmSpend], month: Sequence[LlmSpend]
) -> tuple[float | None, float | None]:
    """(share of today's local tokens left, dollars of this month's external budget left); None if unused."""
    local = None
    if config.local_model is not None:
        quota = config.local_daily_tokens
        local = 1 - local_tokens_used(config, today) / quota if quota > 0 else 0.0
    external = None
    if config.external_model is not None:
        external = config.external_monthly_budget_usd - external_spent(config, month)
    return local, external


def day_start(now: datetime) -> datetime:
    return now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def month_start(now: datetime) -> datetime:
    return day_start(now).replace(day=1)


# The ledger -------------------------------------------------------------------------------------


class LlmLedger(Protocol):
    """Where calls are recorded and spend is read back (``chiffon.store.Store`` is one)."""

    async def record_llm_usage(
        self,
        *,
        model: str,
        provider: str,
        prompt_tokens: int,
        completion_tokens: int,
        cost_usd: float,
        latency_ms: int,
        reason: str,
        outcome: str,
        intent: str | None = None,
    ) -> int: ...

    async def llm_spend(self, *, since: datetime) -> list[LlmSpend]: ...

    async def record_audit(self, event: AuditEvent) -> int: ...


def _call_audit(attempt: _Attempt, reason: str, intent: str | None) -> AuditEvent:
    """An LLM call is a decision input: it goes in the audit trail too (DESIGN §8), costs included."""
    return AuditEvent(
        time=datetime.now(UTC),
        actor="chiffon",
        action="llm.call",
        resource=f"DeploymentIntent/{intent}" if intent else None,
        outcome=AuditOutcome.SUCCESS if attempt.outcome == "success" else AuditOutcome.FAILURE,
        details={
            "model": attempt.model,
            "role": attempt.role,
            "outcome": attempt.outcome,
            "promptTokens": attempt.prompt_tokens,
            "completionTokens": attempt.completion_tokens,
            "costUsd": attempt.cost_usd,
            "latencyMs": attempt.latency_ms,
            "reason": reason,
        },
    )


# The adapter ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Completion:
    """A model's answer and what it cost; ``fallback_from`` names the role that failed first."""

    text: str
    model: str
    provider: str
    reason: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    latency_ms: int
    fallback_from: str | None = None


@dataclass(frozen=True)
class _Attempt:
    role: Role
    model: str
    outcome: Outcome
    latency_ms: int
    text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    error: str = ""


def _utcnow() -> datetime:
    return datetime.now(UTC)


class LlmRouter:
    """Asks the configured models for a completion, cheapest sensible first, and records every attempt."""

    def __init__(
        self, config: LlmConfig, ledger: LlmLedger, *, clock: Callable[[], datetime] = _utcnow
    ) -> None:
        self.config = config
        self._ledger = ledger
        self._clock = clock
        self._router: Any = None
        self._headroom: tuple[float, tuple[float | None, float | None]] | None = None

    async def complete(
        self,
        messages: list[dict[str, Any]],
        *,
        priority: str = "Normal",
        complexity: float,
        intent: str | None = None,
        json_schema: dict[str, Any] | None = None,
        mock_response: str | None = None,
    ) -> Completion:
        """The first answer along the route; raises :class:`LlmUnavailable` when none came."""
        local_remaining, budget_left = await self.headroom()
        route = choose_route(
            config=self.config,
            local_remaining=local_remaining,
            external_budget_left=budget_left,
            complexity=complexity,
            priority=priority,
        )
        if not route.models:
            raise LlmUnavailable(route.reason)
        reason, failures = route.reason, []
        for index, role in enumerate(route.models):
            attempt = await self._attempt(role, messages, json_schema, mock_response)
            await self._record(attempt, reason, intent)
            if attempt.outcome == "success":
                return self._completion(attempt, reason, route.models[index - 1] if index else None)
            failures.append(f"{role} model {attempt.model}: {attempt.error}")
            reason = f"fallback after {role} {attempt.outcome}; {route.reason}"
        raise LlmUnavailable(f"no LLM answered ({'; '.join(failures)}); route: {route.reason}")

    async def headroom(self) -> tuple[float | None, float | None]:
        """Local quota share left today and external dollars left this month (cached a few seconds)."""
        now = time.monotonic()
        if self._headroom is not None and now - self._headroom[0] < HEADROOM_CACHE_SECONDS:
            return self._headroom[1]
        wall = self._clock()
        today = await self._ledger.llm_spend(since=day_start(wall))
        month = await self._ledger.llm_spend(since=month_start(wall))
        found = headroom(self.config, today, month)
        self._headroom = (now, found)
        return found

    async def _attempt(
        self,
        role: Role,
        messages: list[dict[str, Any]],
        json_schema: dict[str, Any] | None,
        mock_response: str | None,
    ) -> _Attempt:
        model = self.config.model(role) or ""
        router = await self._litellm_router()  # first: it imports litellm off the event loop
        extra: dict[str, Any] = {}
        if json_schema is not None:
            extra["response_format"] = _response_format(model, json_schema)
        if mock_response is not None:
            extra["mock_response"] = mock_response
        started = time.monotonic()
        try:
            # A hard deadline of our own too: not every provider honours litellm's timeout.
            async with asyncio.timeout(self.config.timeout + 1):
                response = await router.acompletion(
                    model=role, messages=messages, timeout=self.config.timeout, **extra
                )
        except Exception as exc:
            outcome: Outcome = "timeout" if _is_timeout(exc) else "error"
            return _Attempt(role, model, outcome, _elapsed_ms(started), error=self._describe(exc, outcome))
        return _Attempt(
            role,
            model,
            "success",
            _elapsed_ms(started),
            text=_text_of(response),
            prompt_tokens=_usage(response, "prompt_tokens"),
            completion_tokens=_usage(response, "completion_tokens"),
            cost_usd=_cost_of(response),
        )

    async def _record(self, attempt: _Attempt, reason: str, intent: str | None) -> None:
        await self._ledger.record_llm_usage(
            model=attempt.model,
            provider=provider_of(attempt.model),
            prompt_tokens=attempt.prompt_tokens,
            completion_tokens=attempt.completion_tokens,
            cost_usd=attempt.cost_usd,
            latency_ms=attempt.latency_ms,
            reason=reason,
            outcome=attempt.outcome,
            intent=intent,
        )
        await self._ledger.record_audit(_call_audit(attempt, reason, intent))
        self._headroom = None  # the next call sees this one's tokens and cost
        if attempt.outcome != "success":
            log.warning("LLM %s model %s %s: %s", attempt.role, attempt.model, attempt.outcome, attempt.error)

    def _completion(self, attempt: _Attempt, reason: str, fallback_from: str | None) -> Completion:
        return Completion(
            text=attempt.text,
            model=attempt.model,
            provider=provider_of(attempt.model),
            reason=reason,
            prompt_tokens=attempt.prompt_tokens,
            completion_tokens=attempt.completion_tokens,
            cost_usd=attempt.cost_usd,
            latency_ms=attempt.latency_ms,
            fallback_from=fallback_from,
        )

    def _describe(self, exc: BaseException, outcome: Outcome) -> str:
        """One line about the failure, without litellm's boilerplate and without the API key."""
        if outcome == "timeout":
            return f"timed out after {self.config.timeout:g} s"
        first = (str(exc).strip().splitlines() or [""])[0]
        first = re.sub(r"^litellm\.\w+:\s*", "", first) or type(exc).__name__
        key = self.config.external_api_key
        if key is not None and key.get_secret_value():
            first = first.replace(key.get_secret_value(), "***")
        return first[:MAX_ERROR_CHARS]

    async def _litellm_router(self) -> Any:
        """litellm's Router, built once, in a thread: importing litellm takes seconds, and
        registering an Ollama model asks the server about it with a blocking request."""
        if self._router is None:
            self._router = await asyncio.to_thread(_build_router, self.config)
        return self._router


def _build_router(config: LlmConfig) -> Any:
    return _litellm().Router(
        model_list=_model_list(config),
        num_retries=0,  # fallback is ours, so that each attempt is recorded with its reason
        timeout=config.timeout,
        disable_cooldowns=True,  # one deployment per role: a cooldown would only hide it
    )


def _model_list(config: LlmConfig) -> list[dict[str, Any]]:
    models = []
    if config.local_model:
        local: dict[str, Any] = {"model": config.local_model, "drop_params": True}
        if config.local_api_base:
            local["api_base"] = config.local_api_base
        models.append({"model_name": "local", "litellm_params": local})
    if config.external_model:
        external: dict[str, Any] = {"model": config.external_model, "drop_params": True}
        if config.external_api_key is not None:
            external["api_key"] = config.external_api_key.get_secret_value()
        models.append({"model_name": "external", "litellm_params": external})
    return models


def _litellm() -> Any:
    """litellm, imported on first use and told to stay quiet and offline."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    # Before the import, which already logs at DEBUG: its debug logs can show request
    # parameters (keys included), and our own log line says what failed.
    loggers = [logging.getLogger(name) for name in _LITELLM_LOGGERS]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    import litellm

    litellm.telemetry = False
    litellm.suppress_debug_info = True
    for logger in loggers:
        logger.handlers.clear()  # its own stderr handler: what is left goes through ours, once
    return litellm


def _response_format(model: str, json_schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON schema where the provider enforces one, plain JSON mode elsewhere."""
    if provider_of(model) in _SCHEMA_PROVIDERS:
        strict = True
    else:
        try:
            strict = bool(_litellm().supports_response_schema(model=model))
        except Exception:  # a model litellm has no facts about: JSON mode is the safe ask
            strict = False
    if strict:
        return {"type": "json_schema", "json_schema": {"name": "response", "schema": json_schema}}
    return {"type": "json_object"}


def _is_timeout(exc: BaseException) -> bool:
    if isinstance(exc, TimeoutError):
        return True
    timeout = getattr(_litellm(), "Timeout", None)
    return isinstance(timeout, type) and isinstance(exc, timeout)


def _elapsed_ms(started: float) -> int:
    return round((time.monotonic() - started) * 1000)


def _text_of(response: Any) -> str:
    try:
        return str(response.choices[0].message.content or "")
    except (AttributeError, IndexError):
        return ""


def _usage(response: Any, name: str) -> int:
    usage = getattr(response, "usage", None)
    return int(getattr(usage, name, 0) or 0)


def _cost_of(response: Any) -> float:
    """litellm's price for the call; 0.0 for local models and for models it has no price for."""
    try:
        return float(_litellm().completion_cost(completion_response=response) or 0.0)
    except Exception:
        return 0.0


# The report -------------------------------------------------------------------------------------


async def usage_report(
    ledger: LlmLedger, config: LlmConfig, *, since: datetime, now: datetime | None = None
) -> dict[str, Any]:
    """Spend since ``since`` per provider and model, plus today's local quota and this month's budget."""
    now = now or _utcnow()
    spend = await ledger.llm_spend(since=since)
    today = await ledger.llm_spend(since=day_start(now))
    month = await ledger.llm_spend(since=month_start(now))
    return build_usage_report(config, spend, today, month, since=since)


def build_usage_report(
    config: LlmConfig,
    spend: Sequence[LlmSpend],
    today: Sequence[LlmSpend],
    month: Sequence[LlmSpend],
    *,
    since: datetime,
) -> dict[str, Any]:
    """The wire dict (camelCase). Names models and numbers only: no keys, no prompts."""
    return {
        "apiVersion": "v1",
        "kind": "LlmUsage",
        "since": since.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "configured": config.configured,
        "items": [
            {"provider": row.provider, "model": row.model, "role": role_of(row, config), **_numbers([row])}
            for row in spend
        ],
        "totals": _numbers(spend),
        "local": _local_quota(config, today),
        "external": _external_budget(config, month),
    }


def _numbers(rows: Sequence[LlmSpend]) -> dict[str, Any]:
    return {
        "calls": sum(row.calls for row in rows),
        "failures": sum(row.failures for row in rows),
        "promptTokens": sum(row.prompt_tokens for row in rows),
        "completionTokens": sum(row.completion_tokens for row in rows),
        "tokens": sum(row.tokens for row in rows),
        "costUsd": round(sum(row.cost_usd for row in rows), 6),
    }


def _local_quota(config: LlmConfig, today: Sequence[LlmSpend]) -> dict[str, Any]:
    used = local_tokens_used(config, today)
    quota = config.local_daily_tokens
    share = used / quota if quota > 0 else 1.0
    return {
        "model": config.local_model,
        "dailyTokens": quota,
        "usedTokens": used,
        "usedPercent": round(share * 100, 1),
        "leftPercent": round(max(1 - share, 0.0) * 100, 1),
    }


def _external_budget(config: LlmConfig, month: Sequence[LlmSpend]) -> dict[str, Any]:
    spent = external_spent(config, month)
    budget = config.external_monthly_budget_usd
    return {
        "model": config.external_model,
        "monthlyBudgetUsd": budget,
        "spentUsd": round(spent, 6),
        "leftUsd": round(max(budget - spent, 0.0), 6),
        "spentPercent": round(spent / budget * 100, 1) if budget > 0 else (0.0 if spent == 0 else 100.0),
    }
