"""Notifications: a webhook call when a plan needs a person, a run fails, or drift is found.

The notifier follows the audit trail (``Store.audit_after``, a cursor over
event ids) rather than hooking into the reconciler: whatever decided, it
already wrote an audit event, and reading them keeps notifying off the
reconcile path — a slow or dead webhook never holds up a dispatch.

Which events notify (:func:`notice_of`, pure):

* ``approval`` — a new plan of an intent whose approval is Manual (or whose
  goal matched the catalog with low confidence);
* ``failure`` — a run that ended failed, timed out or was canceled;
* ``drift`` — a drift check that found changes (issue 7's drift detection
  writes ``drift`` events).

Formats: ``json`` (the notice as JSON: event, intent, service, title,
message, time, details), ``ntfy`` (the message as the body, title, tags and
priority as ntfy headers) and ``gotify`` (``{title, message, priority}``
with the app token as ``X-Gotify-Key``). Delivery is best effort, at most
once: a webhook that fails is logged (without its token) and the notice is
dropped, like most notification relays do. On start the notifier begins
after the newest event, so a restart does not replay old notices.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from chiffon.controllers.manager import sleep_until
from chiffon.resources import AuditEvent, Outcome
from chiffon.store import Store, StoreError

__all__ = ["Notice", "Notifier", "Webhook", "notice_of", "request_for"]

log = logging.getLogger(__name__)

NoticeKind = Literal["approval", "failure", "drift"]
NOTICE_KINDS: tuple[NoticeKind, ...] = ("approval", "failure", "drift")
POLL_SECONDS = 2.0
TIMEOUT_SECONDS = 10.0
BATCH = 200
_PRIORITY = {"approval": 3, "failure": 4, "drift": 3}
_TAGS = {"approval": "raised_hand", "failure": "warning", "drift": "mag"}


@dataclass(frozen=True)
class Webhook:
    url: str
    format: Literal["json", "ntfy", "gotify"] = "json"
    events: tuple[NoticeKind, ...] = NOTICE_KINDS
    token: str | None = field(default=None, repr=False)

    @classmethod
    def from_setting(cls, data: dict[str, Any]) -> Webhook:
        return cls(
            url=str(data["url"]),
            format=data.get("format", "json"),
            events=tuple(data.get("events") or NOTICE_KINDS),
            token=data.get("token"),
        )


@dataclass(frozen=True)
class Notice:
    kind: NoticeKind
    intent: str | None
    service: str | None
    title: str
    message: str
    time: str
    details: dict[str, Any]


def _intent_of(event: AuditEvent) -> str | None:
    resource = event.resource or ""
    return resource.split("/", 1)[1] if resource.startswith("DeploymentIntent/") else None


def notice_of(event: AuditEvent) -> Notice | None:
    """The notice an audit event is worth, if any."""
    name = _intent_of(event)
    details = event.details
    if event.action == "plan" and (details.get("approval") == "Manual" or details.get("needsPerson")):
        digest = str(details.get("digest", ""))[:12]
        title = f"{name}: a plan needs your approval"
        message = f"Plan {digest} of deploymentintent/{name} waits: chiffonctl approve {name} --plan {digest}"
        return _notice("approval", event, name, title, message)
    if event.action == "run.result" and event.outcome is Outcome.FAILURE:
        step = details.get("step", "?")
        why = details.get("error") or details.get("status") or "failed"
        title = f"{name}: step {step} failed"
        message = f"Run {details.get('run', '?')} of deploymentintent/{name} ended: {why}"
        return _notice("failure", event, name, title, message)
    if event.action == "drift" and event.outcome is not Outcome.SUCCESS:
        title = f"{name}: drift found"
        message = str(details.get("message") or f"deploymentintent/{name} no longer matches what was applied")
        return _notice("drift", event, name, title, message)
    return None


def _notice(kind: NoticeKind, event: AuditEvent, name: str | None, title: str, message: str) -> Notice:
    return Notice(kind, name, event.service, title, message, event.time.isoformat(), dict(event.details))


def request_for(webhook: Webhook, notice: Notice) -> urllib.request.Request:
    """The HTTP request that delivers ``notice`` in the webhook's format."""
    headers = {"User-Agent": "chiffon-notifier"}
    if webhook.format == "ntfy":
        headers |= {"Title": notice.title, "Tags": _TAGS[notice.kind]}
        headers["Priority"] = str(_PRIORITY[notice.kind])
        if webhook.token:
            headers["Authorization"] = f"Bearer {webhook.token}"
        body = notice.message.encode()
    elif webhook.format == "gotify":
        headers |= {"Content-Type": "application/json", "X-Gotify-Key": webhook.token or ""}
        body = json.dumps(
            {"title": notice.title, "message": notice.message, "priority": _PRIORITY[notice.kind] + 2}
        ).encode()
    else:
        headers["Content-Type"] = "application/json"
        if webhook.token:
            headers["Authorization"] = f"Bearer {webhook.token}"
        body = json.dumps({"event": notice.kind, **_plain(notice)}).encode()
    return urllib.request.Request(webhook.url, data=body, headers=headers, method="POST")


def _plain(notice: Notice) -> dict[str, Any]:
    return {
        "intent": notice.intent,
        "service": notice.service,
        "title": notice.title,
        "message": notice.message,
        "time": notice.time,
        "details": notice.details,
    }


def _deliver(request: urllib.request.Request) -> None:
    with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
        response.read()


class Notifier:
    def __init__(self, store: Store, webhooks: Sequence[Webhook]) -> None:
        self.store = store
        self.webhooks = list(webhooks)
        self.after: int | None = None
        self.sent = 0

    async def start_after_newest(self) -> None:
        newest = await self.store.list_audit(limit=1)
        self.after = (newest[0].id or 0) if newest else 0

    async def sync(self) -> int:
        """Send the notices of events recorded since the last sync; returns how many were sent."""
        if self.after is None:
            await self.start_after_newest()
        assert self.after is not None
        events = await self.store.audit_after(self.after, BATCH)
        sent = 0
        for event in events:
            notice = notice_of(event)
            if notice is not None:
                sent += await self._send(notice)
            self.after = max(self.after, event.id or 0)
        self.sent += sent
        return sent

    async def _send(self, notice: Notice) -> int:
        sent = 0
        for webhook in self.webhooks:
            if notice.kind not in webhook.events:
                continue
            try:
                await asyncio.to_thread(_deliver, request_for(webhook, notice))
                sent += 1
            except (urllib.error.URLError, OSError, ValueError) as error:
                # The host only: a topic or token in the URL's path or query is a secret.
                where = urllib.parse.urlsplit(webhook.url).netloc or "?"
                what = f"{webhook.format} webhook on {where}"
                log.warning("%s refused the %s notice: %s", what, notice.kind, error)
        return sent

    async def run(self, stop: asyncio.Event, interval: float = POLL_SECONDS) -> None:
        while not stop.is_set():
            try:
                await self.sync()
            except StoreError as error:
                log.warning("notifier: database unavailable (%s); trying again", error)
            await sleep_until(interval, stop)
