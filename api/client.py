"""A small typed HTTP client for the Chiffon API, used by ``chiffonctl``."""

from __future__ import annotations

import getpass
import json
import os
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

DEFAULT_SERVER = "http://127.0.0.1:8787"
TIMEOUT_SECONDS = 60.0
# A followed run sends a keep-alive every 15 s; four missed in a row means the stream is dead.
STREAM_READ_TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True)
class Problem:
    source: str | None
    line: int | None
    field: str | None
    message: str

    def __str__(self) -> str:
        where = (self.source or "") + (f":{self.line}" if self.line else "")
        prefix = f"{where}: " if where else ""
        return f"{prefix}{self.field}: {self.message}" if self.field else f"{prefix}{self.message}"


class ApiError(RuntimeError):
    """The server answered with an error; ``problems`` holds per-document details."""

    def __init__(self, status: int, detail: str, problems: list[Problem] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.problems = problems or []


class UnreachableError(RuntimeError):
    pass


class StreamLostError(UnreachableError):
    """A followed stream broke off (the server restarted, the network dropped)."""


@dataclass(frozen=True)
class ServerSentEvent:
    event: str
    data: dict[str, Any]
    id: int | None = None


def local_identity() -> str:
    """Who is running chiffonctl: $CHIFFON_USER, else git's user, else the login name."""
    stated = os.environ.get("CHIFFON_USER", "").strip()
    if stated:
        return stated
    try:
        name = _git_config("user.name")
        email = _git_config("user.email")
        if name and email:
            return f"{name} <{email}>"
    except (OSError, subprocess.SubprocessError):
        pass
    return f"{getpass.getuser()} <{getpass.getuser()}@{socket.gethostname()}>"


def _git_config(key: str) -> str:
    result = subprocess.run(
        ["git", "config", "--get", key], capture_output=True, text=True, timeout=5, check=False
    )
    return result.stdout.strip()


class ChiffonClient:
    def __init__(self, server: str, token: str | None = None) -> None:
        self.server = server.rstrip("/")
        headers = {"X-Chiffon-Actor": local_identity(), "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(base_url=f"{self.server}/api/v1", headers=headers, timeout=TIMEOUT_SECONDS)

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        if response.is_error:
            raise _api_error(response)
        return response.json()

    def _unreachable(self, exc: httpx.TransportError) -> UnreachableError:
        reason = str(exc) or type(exc).__name__
        return UnreachableError(
            f"cannot reach the Chiffon server at {self.server} ({reason}). "
            "Start it with `chiffon up`, or point --server / CHIFFON_SERVER at it"
        )

    # Resources ---------------------------------------------------------------------------

    def list_intents(self, selector: str | None = None) -> list[dict[str, Any]]:
        params = {"labelSelector": selector} if selector else None
        items: list[dict[str, Any]] = self.request("GET", "/intents", params=params)["items"]
        return items

    def get_intent(self, name: str) -> dict[str, Any] | None:
        return self._get_or_none(f"/intents/{name}")

    def apply(self, files: list[tuple[str, str]], *, message: str | None, dry_run: bool) -> dict[str, Any]:
        body = {
            "files": [{"name": n, "content": c} for n, c in files],
            "message": message,
            "dry_run": dry_run,
        }
        result: dict[str, Any] = self.request("POST", "/intents/apply", json=body)
        return result

    def delete_intent(self, name: str, *, message: str | None) -> dict[str, Any]:
        result: dict[str, Any] = self.request("DELETE", f"/intents/{name}", json={"message": message})
        return result

    def decide(self, name: str, verb: str, *, plan: str | None, reason: str) -> dict[str, Any]:
        body = {"plan": plan, "reason": reason}
        result: dict[str, Any] = self.request("POST", f"/intents/{name}/{verb}", json=body)
        return result

    def list_runs(self, intent: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        if intent:
            params["intent"] = intent
        items: list[dict[str, Any]] = self.request("GET", "/runs", params=params)["items"]
        return items

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        return self._get_or_none(f"/runs/{run_id}")

    def list_run_events(self, run_id: str, after: int = -1) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.request("GET", f"/runs/{run_id}/events", params={"after": after})[
            "items"
        ]
        return items

    def follow_run(self, run_id: str, after: int = -1) -> Iterator[ServerSentEvent]:
        """The run's live stream (``GET /runs/{id}/stream``), resumed after event ``after``.

        Raises :class:`StreamLostError` if the connection breaks off mid-stream.
        """
        timeout = httpx.Timeout(TIMEOUT_SECONDS, read=STREAM_READ_TIMEOUT_SECONDS)
        headers = {"Accept": "text/event-stream", "Last-Event-ID": str(after)}
        try:
            with self._http.stream(
                "GET", f"/runs/{run_id}/stream", headers=headers, timeout=timeout
            ) as response:
                if response.is_error:
                    response.read()
                    raise _api_error(response)
                try:
                    yield from parse_sse(response.iter_lines())
                except httpx.TransportError as exc:
                    raise StreamLostError(
                        f"lost the stream of run {run_id} ({exc or type(exc).__name__})"
                    ) from None
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None

    def list_agents(self, **filters: Any) -> list[dict[str, Any]]:
        params = {key: value for key, value in filters.items() if value is not None}
        items: list[dict[str, Any]] = self.request("GET", "/agents", params=params)["items"]
        return items

    def get_agent(self, agent_id: str) -> dict[str, Any] | None:
        return self._get_or_none(f"/agents/{agent_id}")

    def _get_or_none(self, path: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self.request("GET", path)
            return found
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def list_sources(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.request("GET", "/sources")["items"]
        return items

    def audit(self, **filters: Any) -> list[dict[str, Any]]:
        params = {key: value for key, value in filters.items() if value is not None}
        items: list[dict[str, Any]] = self.request("GET", "/audit", params=params)["items"]
        return items

    def usage(self, since: str) -> dict[str, Any]:
        """LLM spend since ``since`` (``30d``, ``24h``…), local quota and external budget left."""
        report: dict[str, Any] = self.request("GET", "/usage", params={"since": since})
        return report

    def chat(
        self, message: str, *, conversation: str | None, intent: str | None, priority: str | None
    ) -> dict[str, Any]:
        body = {"message": message, "conversation": conversation, "intent": intent, "priority": priority}
        result: dict[str, Any] = self.request("POST", "/chat", json=body)
        return result

    def decide_proposal(self, proposal_id: str, verb: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", f"/chat/{proposal_id}/{verb}")
        return result

    def intent_summary(self, name: str) -> dict[str, Any] | None:
        return self._get_or_none(f"/intents/{name}/summary")

    def abort(self, name: str, reason: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", f"/intents/{name}/abort", json={"reason": reason})
        return result


def parse_sse(lines: Iterator[str]) -> Iterator[ServerSentEvent]:
    """Server-Sent Events from a stream's lines: ``event``/``data``/``id`` fields, a blank line ends one.

    Comments (``: keep-alive``) are skipped; ``data`` is one JSON object, as Chiffon sends it.
    """
    fields: dict[str, str] = {}
    for line in lines:
        if not line:
            if "data" in fields:
                event_id = fields.get("id", "")
                yield ServerSentEvent(
                    fields.get("event", "message"),
                    json.loads(fields["data"]),
                    int(event_id) if event_id.lstrip("-").isdigit() else None,
                )
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")


def _api_error(response: httpx.Response) -> ApiError:
    try:
        body = response.json()
    except ValueError:
        return ApiError(response.status_code, f"HTTP {response.status_code}: {response.text[:200]}")
    detail = body.get("detail") if isinstance(body, dict) else None
    problems = []
    if isinstance(detail, list):  # FastAPI's own request validation errors
        for item in detail:
            where = ".".join(str(part) for part in item.get("loc", []))
            problems.append(Problem(None, None, where, item.get("msg", "invalid")))
        detail = "the request was invalid"
    for item in body.get("errors", []) if isinstance(body, dict) else []:
        problems.append(
            Problem(item.get("source"), item.get("line"), item.get("field"), item.get("message", ""))
        )
    return ApiError(response.status_code, str(detail or f"HTTP {response.status_code}"), problems)
