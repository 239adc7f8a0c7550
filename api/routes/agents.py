"""Agents and the capacity their heartbeats report, filtered by what is free right now."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Query, status

from chiffon.api.agentview import (
    AgentFilters,
    as_seen,
    parse_label_selector,
    parse_mebibytes,
    select_agents,
)
from chiffon.api.deps import StoreDep
from chiffon.api.schemas import ERROR_RESPONSES, SAFE_PARAMETERS, AgentCapacityResponse, ListResponse
from chiffon.resources import Agent, AgentKind
from chiffon.store import Store

router = APIRouter(
    prefix="/agents", tags=["agents"], dependencies=[SAFE_PARAMETERS], responses=ERROR_RESPONSES
)

Parsed = TypeVar("Parsed")


def _parse_query(parameter: str, parse: Callable[[str], Parsed], text: str) -> Parsed:
    try:
        return parse(text)
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=f"{parameter}: {exc}") from None


def agent_filters(
    online: Annotated[
        bool | None, Query(description="true: only agents heartbeating now; false: only silent ones")
    ] = None,
    kind: Annotated[AgentKind | None, Query(description="infra or desktop")] = None,
    busy: Annotated[bool | None, Query(description="false: leave out agents marked busy")] = None,
    min_free_vram: Annotated[
        str | None,
        Query(
            alias="minFreeVram",
            max_length=32,
            description="at least this much free memory on one GPU: 8Gi, 512Mi, or MiB as a bare number",
        ),
    ] = None,
    selector: Annotated[
        str | None,
        Query(alias="labelSelector", max_length=1000, description="labels to match: role=desktop,gpu=nvidia"),
    ] = None,
) -> AgentFilters:
    return AgentFilters(
        online=online,
        kind=kind,
        busy=busy,
        min_free_vram_mib=_parse_query("minFreeVram", parse_mebibytes, min_free_vram) if min_free_vram else 0,
        selector=_parse_query("labelSelector", parse_label_selector, selector) if selector else {},
    )


AgentFiltersDep = Annotated[AgentFilters, Depends(agent_filters)]


async def _known_agent(store: Store, agent_id: str) -> Agent:
    agent = await store.get_agent(agent_id)
    if agent is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            detail=f"agent {agent_id} not found: no heartbeat from it was ever received",
        )
    return agent


@router.get("", response_model=ListResponse)
async def list_agents(store: StoreDep, filters: AgentFiltersDep) -> dict[str, Any]:
    """Agents by id; ``online`` says whether each is heartbeating now, whatever it last reported."""
    agents = select_agents(await store.list_agents(), filters, datetime.now(UTC))
    return {"apiVersion": "v1", "kind": "List", "items": [agent.to_wire() for agent in agents]}


@router.get("/{agent_id}")
async def get_agent(agent_id: str, store: StoreDep) -> dict[str, Any]:
    return as_seen(await _known_agent(store, agent_id), datetime.now(UTC)).to_wire()


@router.get("/{agent_id}/capacity", response_model=AgentCapacityResponse, response_model_by_alias=True)
async def get_capacity(agent_id: str, store: StoreDep) -> AgentCapacityResponse:
    """The agent's latest reported capacity, with whether it is online and when it was last heard."""
    agent = as_seen(await _known_agent(store, agent_id), datetime.now(UTC))
    return AgentCapacityResponse(
        id=agent.id, online=agent.online, last_seen=agent.last_seen, capacity=agent.capacity
    )
