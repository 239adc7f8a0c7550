"""What a request must get past before a route sees it (docs/auth.md, "Request safety").

* :class:`BodyLimit` — an ASGI middleware: a body larger than
  :data:`MAX_BODY_BYTES` is refused with 413, whether it declares its
  ``Content-Length`` (refused before reading) or streams chunks without one
  (counted as it arrives, refused once past the limit; nothing more is read).
* :func:`site_refusal` — a state-changing call (POST, PUT, PATCH, DELETE) must
  come from the server's own pages or a client that is no browser page at
  all: ``Origin``, when sent, must be the server's own (its ``Host``) or one of
  ``allowed_origins``; without ``Origin``, ``Sec-Fetch-Site`` must not say
  ``cross-site`` or ``same-site``. And it must send JSON: a ``Content-Type``
  other than ``application/json`` (what HTML forms send) is 415, a body
  without one too. A cross-site form therefore cannot drive the open local
  server, which has no token to check.
* :class:`RateLimiter` — a token bucket per caller for the chat endpoints.

Pure decisions live here; the dependencies that apply them and audit the
refusals are in :mod:`chiffon.api.deps`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from fastapi import HTTPException, status
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chiffon.controllers.audit_throttle import AuditThrottle

MAX_BODY_BYTES = 16 * 1024 * 1024
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


# Body size -----------------------------------------------------------------------------------


class BodyTooLarge(HTTPException):
    """A streamed body went past the limit (an HTTPException, so FastAPI's body reading lets it through)."""

    def __init__(self, limit: int, declared: int | None = None) -> None:
        what = f"request body is {declared} bytes" if declared is not None else "request body is larger"
        super().__init__(413, f"{what}; the limit is {limit}")  # Content Too Large


class BodyLimit:
    """Refuse bodies over ``limit`` bytes with 413, declared or streamed (pure ASGI, no buffering)."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _refuse(scope, receive, send, BodyTooLarge(self.limit, int(declared)))
            return
        received = 0
        started = False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except BodyTooLarge as exc:  # read outside FastAPI's handlers (a middleware, a stream)
            if started:
                raise
            await _refuse(scope, receive, send, exc)


async def _refuse(scope: Scope, receive: Receive, send: Send, exc: HTTPException) -> None:
    response = JSONResponse({"detail": exc.detail, "errors": []}, status_code=exc.status_code)
    response.headers["Connection"] = "close"  # the rest of the body is not wanted
    await response(scope, receive, send)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return str(value.decode("latin-1")).strip()
    return None


# Cross-site requests and content types -------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    """Why a request is refused: HTTP status, the audit's reason code, and what to tell the caller."""

    status: int
    reason: str
    message: str


def _netloc(scheme: str, host: str) -> str:
    """``host[:port]`` without the scheme's default port, lower case: how origins are compared."""
    host = host.strip().lower()
    name, colon, port = host.rpartition(":")
    if colon and port.isdigit() and "]" not in port and _DEFAULT_PORTS.get(scheme) == int(port):
        return name
    return host


def own_origin(scheme: str, host_header: str | None) -> str | None:
    """The server's own ``host[:port]`` as the request's ``Host`` header names it."""
    return _netloc(scheme, host_header) if host_header else None


def origin_netloc(origin: str) -> str | None:
    """``host[:port]`` of an ``Origin`` header; None for ``null`` or anything that is not an origin."""
    parts = urlsplit(origin.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
        return None
    return _netloc(parts.scheme, parts.netloc)


def site_refusal(
    method: str,
    headers: Mapping[str, str],
    *,
    scheme: str,
    allowed_origins: Sequence[str] = (),
) -> Refusal | None:
    """Whether a call may change something, judged by its headers (pure); None: it may."""
    if method.upper() not in UNSAFE_METHODS:
        return None
    origin = headers.get("origin")
    if origin is not None:
        sent = origin_netloc(origin)
        own = own_origin(scheme, headers.get("host"))
        allowed = {origin_netloc(o) for o in allowed_origins}
        if sent is None or (sent != own and sent not in allowed):
            return Refusal(
                status.HTTP_403_FORBIDDEN,
                "cross-site",
                f"a page from {origin[:100]!r} may not change anything here: only this server's own pages "
                "may (add the origin to allowed_origins if it is yours)",
            )
    elif (headers.get("sec-fetch-site") or "").lower() in ("cross-site", "same-site"):
        return Refusal(
            status.HTTP_403_FORBIDDEN,
            "cross-site",
            "a page from another site may not change anything here: only this server's own pages may",
        )
    content_type = headers.get("content-type")
    if content_type is not None:
        if not is_json(content_type):
            return Refusal(
                status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
                "content-type",
                f"send JSON with Content-Type: application/json, not {content_type[:100]!r}",
            )
    elif _has_body(headers):
        return Refusal(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            "content-type",
            "send JSON with Content-Type: application/json; this body has no Content-Type",
        )
    return None


def is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    main, _, sub = media.partition("/")
    return main == "application" and (sub == "json" or sub.endswith("+json"))


def _has_body(headers: Mapping[str, str]) -> bool:
    length = headers.get("content-length")
    if length is not None:
        return not (length.strip().isdigit() and int(length) == 0)
    return "transfer-encoding" in headers


# Rate limits ---------------------------------------------------------------------------------


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """A token bucket per key: ``burst`` at once, refilled at ``per_minute``; ``per_minute`` 0: no limit."""

    def __init__(
        self,
        per_minute: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 10_000,
    ) -> None:
        self.per_minute = per_minute
        self.burst = max(1, burst)
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: dict[Hashable, _Bucket] = {}

    @property
    def enabled(self) -> bool:
        return self.per_minute > 0

    def take(self, key: Hashable) -> float:
        """Spend one token of ``key``'s bucket: 0.0 when there was one, else seconds until there is."""
        if not self.enabled:
            return 0.0
        now = self._clock()
        rate = self.per_minute / 60.0
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_keys:
                self._prune(now, rate)
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.at) * rate)
        bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / rate

    def _prune(self, now: float, rate: float) -> None:
        """Forget full buckets (they mean nothing); the oldest tenth if none is full."""
        full = [k for k, b in self._buckets.items() if b.tokens + (now - b.at) * rate >= self.burst]
        for key in full or list(self._buckets)[: max(1, len(self._buckets) // 10)]:
            del self._buckets[key]


def retry_after(seconds: float) -> str:
    """A ``Retry-After`` value: whole seconds, at least one."""
    return str(max(1, math.ceil(seconds)))


@dataclass
class Guards:
    """The per-app state of the guards: the chat's rate limiter and the throttle of refusal audits."""

    chat: RateLimiter
    refusals: AuditThrottle = field(default_factory=AuditThrottle)
    allowed_origins: tuple[str, ...] = ()
