"""Webhook notifications from the audit trail (SQLite and PostgreSQL), to a receiver on 127.0.0.1."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from chiffon.controllers.notify import Notifier, Webhook, notice_of
from chiffon.resources import AuditEvent, Outcome
from chiffon.store import Store
from tests.integration.live import serve

GOTIFY_TOKEN = "gotify-app-token-SECRET-41"


@dataclass
class Receiver:
    url: str = ""
    got: list[dict[str, Any]] = field(default_factory=list)


def receiver_app(receiver: Receiver) -> Starlette:
    async def hook(request: Request) -> JSONResponse:
        receiver.got.append(
            {
                "path": request.url.path,
                "headers": dict(request.headers),
                "body": (await request.body()).decode(),
            }
        )
        status = 500 if request.url.path.endswith("/broken") else 200
        return JSONResponse({}, status_code=status)

    return Starlette(routes=[Route("/{path:path}", hook, methods=["POST"])])


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver()
    async with serve(receiver_app(found), grace=1) as url:
        found.url = url
        yield found


def event(action: str, outcome: Outcome = Outcome.SUCCESS, **details: Any) -> AuditEvent:
    return AuditEvent(
        time=datetime.now(UTC),
        actor="controller",
        action=action,
        resource="DeploymentIntent/uptime-kuma",
        service="uptime-kuma",
        outcome=outcome,
        details=details,
    )


@pytest.mark.parametrize(
    ("audit", "kind"),
    [
        (event("plan", digest="a" * 64, approval="Manual"), "approval"),
        (event("plan", digest="a" * 64, approval="Auto", needsPerson=True), "approval"),
        (event("plan", digest="a" * 64, approval="Auto", needsPerson=False), None),
        (event("run.result", Outcome.FAILURE, run="r1", step="deploy", error="rc 2"), "failure"),
        (event("run.result", Outcome.SUCCESS, run="r1", step="deploy"), None),
        (event("drift", Outcome.FAILURE, message="the Caddyfile changed"), "drift"),
        (event("approve"), None),
    ],
)
def test_which_events_notify(audit: AuditEvent, kind: str | None) -> None:
    notice = notice_of(audit)
    assert (notice.kind if notice else None) == kind


async def test_notices_reach_every_format_once_and_a_broken_hook_does_not_stop_them(
    store: Store, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    await store.record_audit(event("run.result", Outcome.FAILURE, run="old", step="x"))  # before start
    hooks = [
        Webhook(f"{receiver.url}/json"),
        Webhook(f"{receiver.url}/ntfy/topic", format="ntfy", events=("failure",)),
        Webhook(f"{receiver.url}/gotify/message", format="gotify", token=GOTIFY_TOKEN),
        Webhook(f"{receiver.url}/broken"),
    ]
    notifier = Notifier(store, hooks)
    await notifier.start_after_newest()
    await store.record_audit(event("plan", digest="b" * 64, approval="Manual"))
    await store.record_audit(event("run.result", Outcome.FAILURE, run="r1", step="deploy", error="rc 2"))
    await store.record_audit(event("approve"))

    with caplog.at_level(logging.WARNING):
        sent = await notifier.sync()
        again = await notifier.sync()

    assert (sent, again) == (5, 0)  # json 2, ntfy 1 (failures only), gotify 2; the broken hook none
    by_path: dict[str, list[dict[str, Any]]] = {}
    for hit in receiver.got:
        by_path.setdefault(hit["path"], []).append(hit)
    plain = [json.loads(hit["body"]) for hit in by_path["/json"]]
    assert [(p["event"], p["intent"]) for p in plain] == [
        ("approval", "uptime-kuma"),
        ("failure", "uptime-kuma"),
    ]
    assert "chiffonctl approve uptime-kuma --plan bbbbbbbbbbbb" in plain[0]["message"]
    [ntfy] = by_path["/ntfy/topic"]
    assert ntfy["headers"]["title"] == "uptime-kuma: step deploy failed" and "rc 2" in ntfy["body"]
    gotify = [json.loads(hit["body"]) for hit in by_path["/gotify/message"]]
    assert [g["title"] for g in gotify] == [
        "uptime-kuma: a plan needs your approval",
        "uptime-kuma: step deploy failed",
    ]
    assert by_path["/gotify/message"][0]["headers"]["x-gotify-key"] == GOTIFY_TOKEN
    assert len(by_path["/broken"]) == 2 and "refused the approval notice" in caplog.text
    assert GOTIFY_TOKEN not in caplog.text and "old" not in json.dumps(plain)
