"""FastAPI dependencies as typed aliases (``StoreDep`` and friends), and who may call what.

Access control (:mod:`chiffon.api.auth`): ``PrincipalDep`` is the caller,
resolved once per request from its bearer token. A route states the least role
it needs with one of these ready-to-use ``Depends`` objects, on the decorator
or on its router::

    @router.post("/{name}/confirm", dependencies=[OperatorDep])

* ``ViewerDep`` — any valid caller; every route under ``/api/v1`` has it (app.py);
* ``OperatorDep`` — changes what runs: apply/delete intents, sync, suggestions, chat;
* ``ApproverDep`` — approve and reject plans;
* ``AdminDep`` — everything.

``require(role)`` returns the same checks as dependency functions. A denied
request — 401 without a valid token, 403 without the role — is recorded in the
audit (action ``denied``, outcome failure, method, path, the role required and
the role held; never the token) and told what to do.

``ActorDep`` is who acts, for commits and audit events: the token's name
(``ci <token:ci>``) whenever a token authenticated the request; only the open
local server (no tokens at all) believes the ``X-Chiffon-Actor`` header.

Request safety (:mod:`chiffon.api.guards`): ``SiteGuardDep`` runs before
everything else under ``/api/v1`` and refuses state-changing calls from other
sites' pages (403) and bodies that are not JSON (415); ``ChatRateDep`` limits
the chat endpoints per caller (429 with ``Retry-After``). Those refusals can be
caused at will, so their audit is throttled: at most one ``denied`` event per
caller and reason a minute, carrying how many were refused (``count``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.dependencies.models import Dependant

from chiffon.api.auth import AuthenticationError, Principal, Role, resolve_principal
from chiffon.api.context import ServerContext
from chiffon.api.guards import Guards, Refusal, retry_after, site_refusal
from chiffon.controllers.intents_writer import IntentsWriter
from chiffon.controllers.source import GitSource
from chiffon.gitrepo import Identity
from chiffon.resources import AuditEvent, Outcome
from chiffon.store import Store, StoreError

log = logging.getLogger(__name__)

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


# Access control ------------------------------------------------------------------------------


async def get_principal(request: Request, context: ContextDep) -> Principal:
    """The caller; 401 (audited) when the request has no valid token and one is needed."""
    try:
        principal = await resolve_principal(
            context.settings, context.store, request.headers.get("Authorization")
        )
    except AuthenticationError as exc:
        await audit_denied(context.store, request, ANONYMOUS, required_by_route(request), None, exc.reason)
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail=exc.message,
            headers={"WWW-Authenticate": 'Bearer realm="chiffon"'},
        ) from None
    request.state.principal = principal  # for handlers that run after the route's dependencies
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def _requirement(role: Role) -> Callable[[Request, ContextDep, PrincipalDep], Awaitable[Principal]]:
    async def check(request: Request, context: ContextDep, principal: PrincipalDep) -> Principal:
        if principal.allows(role):
            return principal
        await audit_denied(context.store, request, str(principal.identity), role, principal.role, "role")
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            detail=f"this needs the {role} role; {principal.describe()} has {principal.role}",
        )

    check.__name__ = f"require_{role.value}"
    check.required_role = role  # type: ignore[attr-defined]  # read by required_by_route
    return check


# One function per role: FastAPI runs a dependency once per request by identity.
_REQUIREMENTS = {role: _requirement(role) for role in Role}


def require(role: Role) -> Callable[[Request, ContextDep, PrincipalDep], Awaitable[Principal]]:
    """A dependency passing callers with ``role`` or a higher one (403 otherwise); returns the caller."""
    return _REQUIREMENTS[role]


ViewerDep = Depends(require(Role.VIEWER))
OperatorDep = Depends(require(Role.OPERATOR))
ApproverDep = Depends(require(Role.APPROVER))
AdminDep = Depends(require(Role.ADMIN))
AuthDep = ViewerDep  # the name app.py used before roles existed


def required_by_route(request: Request) -> Role:
    """The most a route requires, for the audit of a request without a valid token."""
    route = request.scope.get("route")
    dependant: Dependant | None = getattr(route, "dependant", None)
    found = [Role.VIEWER]
    pending = [dependant] if dependant is not None else []
    while pending:
        current = pending.pop()
        required = getattr(current.call, "required_role", None)
        if isinstance(required, Role):
            found.append(required)
        pending.extend(current.dependencies)
    return max(found)


async def audit_denied(
    store: Store,
    request: Request,
    actor: str,
    required: Role,
    have: Role | None,
    reason: str,
    *,
    resource: str | None = None,
    service: str | None = None,
    details: Mapping[str, object] | None = None,
) -> None:
    """Record a denied request; the token is never part of it (the Authorization header is not read).

    ``details`` adds to the usual method, path, required, role and reason.
    """
    method, path = request.method, request.url.path[:300]
    log.info("denied %s %s to %s: %s", method, path, actor, reason)
    event = AuditEvent(
        time=datetime.now(UTC),
        actor=actor[:200],
        action="denied",
        resource=resource,
        service=service,
        outcome=Outcome.FAILURE,
        details={
            "method": method,
            "path": path,
            "required": required.value,
            "role": have.value if have is not None else None,
            "reason": reason,
            **(details or {}),
        },
    )
    try:
        await store.record_audit(event)
    except StoreError as exc:  # the request is denied all the same
        log.warning("could not record a denied request in the audit: %s", exc)


# Request safety ------------------------------------------------------------------------------


def get_guards(request: Request) -> Guards:
    guards: Guards = request.app.state.guards
    return guards


def client_key(request: Request, principal: Principal | None) -> str:
    """Who a limit counts against: the token when one authenticated the call, else the client's address."""
    if principal is not None and principal.authenticated:
        return f"token:{principal.name}"
    return f"address:{request.client.host if request.client else 'unknown'}"


async def _best_effort_principal(request: Request, context: ServerContext) -> Principal | None:
    """The caller if its token is valid, for naming it in an audit; no audit of its own, no error."""
    try:
        return await resolve_principal(context.settings, context.store, request.headers.get("Authorization"))
    except (AuthenticationError, StoreError):
        return None


async def _audit_throttled(
    request: Request,
    context: ServerContext,
    principal: Principal | None,
    refusal: Refusal,
    **details: object,
) -> None:
    """Audit a refusal anyone can repeat at will: at most one per caller and reason a minute, with a count."""
    count = get_guards(request).refusals.admit((client_key(request, principal), refusal.reason))
    if count is None:
        log.debug("denied %s %s again: %s", request.method, request.url.path[:300], refusal.reason)
        return
    actor = str(principal.identity) if principal is not None and principal.authenticated else ANONYMOUS
    have = principal.role if principal is not None else None
    await audit_denied(
        context.store,
        request,
        actor,
        required_by_route(request),
        have,
        refusal.reason,
        details={"client": client_key(request, principal), "count": count, **details},
    )


async def check_site(request: Request, context: ContextDep) -> None:
    """403 for a state-changing call from another site's page, 415 for a body that is not JSON (audited)."""
    refusal = site_refusal(
        request.method,
        request.headers,
        scheme=request.url.scheme,
        allowed_origins=context.settings.allowed_origins,
    )
    if refusal is None:
        return
    principal = await _best_effort_principal(request, context)
    extra = {"origin": request.headers.get("origin", "")[:200]} if refusal.reason == "cross-site" else {}
    await _audit_throttled(request, context, principal, refusal, **extra)
    raise HTTPException(refusal.status, detail=refusal.message)


SiteGuardDep = Depends(check_site)


async def limit_chat(request: Request, context: ContextDep, principal: PrincipalDep) -> None:
    """429 with ``Retry-After`` once a caller has spent its chat allowance (audited, throttled)."""
    limiter = get_guards(request).chat
    wait = limiter.take(client_key(request, principal))
    if wait <= 0:
        return
    seconds = retry_after(wait)
    who = principal.describe() if principal.authenticated else f"address {client_key(request, None)[8:]}"
    refusal = Refusal(
        status.HTTP_429_TOO_MANY_REQUESTS,
        "rate-limit",
        f"too many chat requests from {who}: at most {limiter.per_minute:g} a minute "
        f"(bursts of {limiter.burst}); try again in {seconds} s",
    )
    await _audit_throttled(request, context, principal, refusal, retry_after=int(seconds))
    raise HTTPException(refusal.status, detail=refusal.message, headers={"Retry-After": seconds})


ChatRateDep = Depends(limit_chat)


def get_actor(request: Request, principal: PrincipalDep) -> Identity:
    """Who is acting: the token's name when a token authenticated the request, else the stated identity."""
    if principal.authenticated:
        return principal.identity
    stated = request.headers.get(ACTOR_HEADER, "").strip()
    if not stated or len(stated) > 200 or any(ch in stated for ch in "\r\n\0"):
        stated = ANONYMOUS
    return Identity.parse(stated)


ActorDep = Annotated[Identity, Depends(get_actor)]
