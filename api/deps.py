"""FastAPI dependencies as typed aliases (``StoreDep`` and friends)."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status

from chiffon.api.context import ServerContext
from chiffon.controllers.intents_writer import IntentsWriter
from chiffon.controllers.source import GitSource
from chiffon.gitrepo import Identity
from chiffon.store import Store

ACTOR_HEADER = "X-Chiffon-Actor"
ANONYMOUS = "anonymous <anonymous@chiffon.local>"


def get_context(request: Request) -> ServerContext:
    context: ServerContext = request.app.state.context
    return context


ContextDep = Annotated[ServerContext, Depends(get_context)]


def get_store(context: ContextDep) -> Store:
    return context.store


def get_source(context: ContextDep) -> GitSource:
    return context.source


def get_writer(context: ContextDep) -> IntentsWriter:
    return context.writer


StoreDep = Annotated[Store, Depends(get_store)]
SourceDep = Annotated[GitSource, Depends(get_source)]
WriterDep = Annotated[IntentsWriter, Depends(get_writer)]


def require_token(request: Request, context: ContextDep) -> None:
    """Bearer-token check, active whenever a token is configured."""
    token = context.settings.api_token
    if token is None:
        return
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        presented.encode(), token.get_secret_value().encode()
    ):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="missing or wrong bearer token: set CHIFFON_TOKEN to the server's api_token",
            headers={"WWW-Authenticate": "Bearer"},
        )


def get_actor(request: Request) -> Identity:
    """Who is acting: the identity the client states (the token will bind it once roles exist)."""
    stated = request.headers.get(ACTOR_HEADER, "").strip()
    if not stated or len(stated) > 200 or any(ch in stated for ch in "\r\n\0"):
        stated = ANONYMOUS
    return Identity.parse(stated)


ActorDep = Annotated[Identity, Depends(get_actor)]
AuthDep = Depends(require_token)
