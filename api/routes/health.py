"""Liveness, version, and who is calling."""

from __future__ import annotations

from fastapi import APIRouter

from chiffon import __version__
from chiffon.api.deps import PrincipalDep, StoreDep
from chiffon.api.schemas import ERROR_RESPONSES, SAFE_PARAMETERS

router = APIRouter(tags=["health"], dependencies=[SAFE_PARAMETERS], responses=ERROR_RESPONSES)


@router.get("/healthz")
async def healthz(store: StoreDep) -> dict[str, str]:
    await store.ping()
    return {"status": "ok"}


@router.get("/version")
async def version() -> dict[str, str]:
    return {"version": __version__, "protocol": "chiffon/v1"}


@router.get("/whoami")
async def whoami(principal: PrincipalDep) -> dict[str, object]:
    """The caller's name and role; ``authenticated`` is false on an open local server (no tokens)."""
    return principal.to_wire()
