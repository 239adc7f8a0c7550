"""LLM spend (DESIGN §6): ``GET /api/v1/usage?since=30d``, what ``chiffonctl usage`` prints.

Calls, tokens, cost and failures per provider and model since the start of the
window, with today's local token quota and this month's external budget. The
numbers come from the ``llm_usage`` ledger that every model call writes; the
report names models only, never keys.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, status

from chiffon.agents.llm import LlmConfig, usage_report
from chiffon.api.deps import ContextDep, StoreDep
from chiffon.api.schemas import ERROR_RESPONSES, SAFE_PARAMETERS
from chiffon.resources import parse_window

router = APIRouter(prefix="/usage", tags=["usage"], dependencies=[SAFE_PARAMETERS], responses=ERROR_RESPONSES)


@router.get("")
async def usage(
    store: StoreDep,
    context: ContextDep,
    since: Annotated[
        str, Query(max_length=20, description="how far back to add up: 30d, 24h, 30m, 1d12h")
    ] = "30d",
) -> dict[str, Any]:
    """Spend per provider and model since ``since``, local quota left today, external budget left."""
    try:
        window = parse_window(since)
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=f"since: {exc}") from None
    config = LlmConfig.from_settings(context.settings)
    return await usage_report(store, config, since=datetime.now(UTC) - window)
