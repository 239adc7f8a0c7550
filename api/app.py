"""The FastAPI application: REST under ``/api/v1``, OpenAPI at ``/docs``.

Routes are thin; failures from the layers below are mapped to HTTP here, once:
invalid documents → 422 with one entry per problem, unknown names → 404, a
git conflict → 409, a database or git outage → 503. Nothing below leaks a
stack trace to a client.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request, status
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from chiffon import __version__
from chiffon.api.chat import ChatError
from chiffon.api.context import ServerContext
from chiffon.api.deps import ViewerDep
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

MAX_BODY_BYTES = 16 * 1024 * 1024


def create_app(context: ServerContext) -> FastAPI:
    app = FastAPI(
        title="Chiffon",
        version=__version__,
        description="GitOps control loops for Ansible-managed homelabs.",
    )
    app.state.context = context
    # Every call needs at least the viewer role; routes that change things ask for more (deps.py).
    api = APIRouter(prefix="/api/v1", dependencies=[ViewerDep])
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


def _error(
    status_code: int, detail: str, errors: Sequence[Mapping[str, object]] | None = None
) -> JSONResponse:
    return JSONResponse({"detail": detail, "errors": list(errors or [])}, status_code=status_code)


def _install_handlers(app: FastAPI) -> None:
    @app.middleware("http")
    async def limit_body(request: Request, call_next):  # type: ignore[no-untyped-def]
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            return _error(
                413,
                f"request body is {declared} bytes; the limit is {MAX_BODY_BYTES}",
            )
        response: Response = await call_next(request)
        return response

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
