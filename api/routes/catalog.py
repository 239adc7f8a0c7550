"""The playbook catalog: ``GET /api/v1/catalog`` lists what homelab-infra can run, ``?q=`` searches it.

The catalog is the process's one for the configured checkout
(:func:`chiffon.agents.catalog.index.catalog_from_settings`), shared with the
controller in ``chiffon up``. Discovery and search block (files, the model),
so they run in a worker thread.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, status

from chiffon.agents.catalog.discovery import EntryKind
from chiffon.agents.catalog.index import MAX_LIMIT, MAX_QUERY_CHARS, Catalog, catalog_from_settings
from chiffon.api.deps import ContextDep
from chiffon.api.schemas import ERROR_RESPONSES, SAFE_PARAMETERS

router = APIRouter(
    prefix="/catalog", tags=["catalog"], dependencies=[SAFE_PARAMETERS], responses=ERROR_RESPONSES
)


def _catalog(context: ContextDep) -> Catalog:
    catalog = catalog_from_settings(context.settings)
    if not catalog.root.is_dir():
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail=f"the homelab-infra checkout {catalog.root} does not exist; set CHIFFON_INFRA_REPO",
        )
    return catalog


@router.get("")
async def catalog(
    context: ContextDep,
    q: Annotated[
        str | None,
        Query(max_length=MAX_QUERY_CHARS, description="what you are looking for, in words; none: list all"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="most matches returned by a search")] = 5,
    kind: Annotated[
        EntryKind | None, Query(description="list only playbooks, roles or compose stacks (without q)")
    ] = None,
) -> dict[str, Any]:
    """Without ``q``: every entry. With ``q``: the best matches, scores and a confidence."""
    found = _catalog(context)
    if q is None:
        discovery = await asyncio.to_thread(found.discovery)
        items = []
        for entry in discovery.entries:
            if kind is None or entry.kind is kind:
                wire = entry.to_wire()
                wire.pop("text")
                wire.pop("summary")
                items.append(wire)
        return {
            "apiVersion": "v1",
            "kind": "List",
            "items": items,
            "inventories": [inventory.to_wire() for inventory in discovery.inventories],
            "warnings": discovery.warnings,
        }
    if not q.strip():
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail="q: the query is empty; say what you are looking for, e.g. q=uptime monitoring",
        )
    result = await asyncio.to_thread(found.search, q, limit)
    return {"apiVersion": "v1", "kind": "CatalogSearch", **result.to_wire()}
