"""The FastAPI application: REST under ``/api/v1``, OpenAPI at ``/docs``.

Routes are thin; failures from the layers below are mapped to HTTP here, once:
invalid documents → 422 with one entry per problem, unknown names → 404, a
git conflict → 409, a database or git outage → 503. Nothing below leaks a
stack trace to a client.

In front of the routes (:mod:`chiffon.api.guards`): bodies over
:data:`MAX_BODY_BYTES` are refused with 413, declared or streamed; every call
under ``/api/v1`` passes the site guard (no state change from another site's
page, JSON bodies only) before its token is even looked at.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from chiffon import __version__
from chiffon.api.auth import Principal
from chiffon.api.chat import ChatError
from chiffon.api.context import ServerContext
from chiffon.api.deps import (
    ANONYMOUS,
    SiteGuardDep,
    ViewerDep,
    audit_denied,
    get_actor,
    required_by_route,
)
from chiffon.api.guards import MAX_BODY_BYTES, BodyLimit, BodyTooLarge, Guards, RateLimiter
from chiffon.api.routes import (
    abort,
    agents,
    approvals,
    audit,
    catalog,
    chat,
    health,
    history,
    intents,
    postmortem,
    runs,
    sources,
    suggestions,
    summary,
    usage,
)
from chiffon.controllers.intents_writer import ApplyError, NotFoundError
from chiffon.gitrepo import GitError
from chiffon.store import StoreError

log = logging.getLogger(__name__)

__all__ = ["MAX_BODY_BYTES", "create_app"]


def create_app(context: ServerContext) -> FastAPI:
    app = FastAPI(
        title="Chiffon",
        version=__version__,
        description="GitOps control loops for Ansible-managed homelabs.",
    )
    app.state.context = context
    settings = context.settings
    app.state.guards = Guards(
        chat=RateLimiter(settings.chat_rate_per_minute, settings.chat_rate_burst),
        allowed_origins=tuple(settings.allowed_origins),
    )
    # The site guard first (another site's page is refused before its token is looked at); then
    # every call needs at least the viewer role; routes that change things ask for more (deps.py).
    api = APIRouter(prefix="/api/v1", dependencies=[SiteGuardDep, ViewerDep])
    for module in (
        intents,
        history,
        summary,
        approvals,
        abort,
        chat,
        runs,
        postmortem,
        agents,
        sources,
        audit,
    ):
        api.include_router(module.router)
    for module in (catalog, suggestions, usage, health):
        api.include_router(module.router)
    app.include_router(api)
    _install_handlers(app)

    _serve_page(app)
    return app


STATIC_DIR = Path(__file__).parent / "static"
# The chat page loads only its own files: no inline script, nothing from elsewhere.
PAGE_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": PAGE_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class _PageFiles(StaticFiles):
    """The page's script and style, with the page's headers (no caching without revalidation, the CSP)."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(PAGE_HEADERS)
        return response


def _serve_page(app: FastAPI) -> None:
    """The chat page at ``/`` and its script and style under ``/static`` (``/docs`` keeps its own rules)."""
    app.mount("/static", _PageFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(
            STATIC_DIR / "index.html", media_type="text/html; charset=utf-8", headers=PAGE_HEADERS
        )


class AsciiJSONResponse(JSONResponse):
    def render(self, content: object) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode()


def _error(
    status_code: int, detail: str, errors: Sequence[Mapping[str, object]] | None = None
) -> JSONResponse:
    return JSONResponse({"detail": detail, "errors": list(errors or [])}, status_code=status_code)


def _install_handlers(app: FastAPI) -> None:
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)

    @app.exception_handler(BodyTooLarge)
    async def too_large(_: Request, exc: BodyTooLarge) -> JSONResponse:
        response = _error(exc.status_code, str(exc.detail))
        response.headers["Connection"] = "close"
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        if _audits_invalid_requests(request):
            await _audit_invalid(request, exc)
        # FastAPI's own 422 echoes the request's input back; escaped to ASCII so that text
        # which cannot be UTF-8 encoded (a lone surrogate, "\\ud800") still makes an answer.
        return AsciiJSONResponse({"detail": jsonable_encoder(exc.errors())}, status_code=422)

    @app.exception_handler(ApplyError)
    async def invalid_documents(_: Request, exc: ApplyError) -> JSONResponse:
        problems = [
            {"source": e.source, "line": e.line, "field": e.field, "message": e.message} for e in exc.errors
        ]
        count = len(problems)
        return _error(
            422,
            f"{count} problem{'s' if count != 1 else ''} found; nothing was applied",
            problems,
        )

    @app.exception_handler(ChatError)
    async def not_compiled(_: Request, exc: ChatError) -> JSONResponse:
        return _error(422, exc.detail, [{"message": problem} for problem in exc.problems])

    @app.exception_handler(NotFoundError)
    async def not_found(_: Request, exc: NotFoundError) -> JSONResponse:
        return _error(status.HTTP_404_NOT_FOUND, str(exc))

    @app.exception_handler(GitError)
    async def git_failed(_: Request, exc: GitError) -> JSONResponse:
        log.warning("git operation failed: %s", exc)
        return _error(status.HTTP_409_CONFLICT, f"the intents repo refused the change: {exc}")

    @app.exception_handler(StoreError)
    async def store_down(_: Request, exc: StoreError) -> JSONResponse:
        log.warning("database unavailable: %s", exc)
        return _error(status.HTTP_503_SERVICE_UNAVAILABLE, f"database unavailable: {exc}")


def _audits_invalid_requests(request: Request) -> bool:
    """Whether the route records refused requests (approve and reject: a bad digest is worth knowing)."""
    route = request.scope.get("route")
    return getattr(getattr(route, "endpoint", None), "audit_invalid", False) is True


async def _audit_invalid(request: Request, exc: RequestValidationError) -> None:
    """A 422 of an audited route as a ``denied`` event: which fields were wrong, never what was sent."""
    context: ServerContext = request.app.state.context
    principal: Principal | None = getattr(request.state, "principal", None)
    fields = [".".join(str(part) for part in error.get("loc", ())) for error in exc.errors()][:10]
    reason = "malformed-digest" if "body.plan" in fields else "invalid-request"
    name = request.path_params.get("name")
    await audit_denied(
        context.store,
        request,
        str(get_actor(request, principal)) if principal is not None else ANONYMOUS,
        required_by_route(request),
        principal.role if principal is not None else None,
        reason,
        resource=f"DeploymentIntent/{name}" if name else None,
        details={"fields": fields},
    )
