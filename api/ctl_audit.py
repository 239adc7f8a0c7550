"""``chiffonctl audit``: what happened, who did it and why, from the audit trail (DESIGN §8).

One command, the filters of ``GET /api/v1/audit`` as flags, each served by an
index of ``audit_events`` (``--service`` by service and time, ``--failed`` by
outcome and time, ``--actor``, ``--intent``)::

    chiffonctl audit --service uptime-kuma
    chiffonctl audit --failed --since 7d
    chiffonctl audit --intent uptime-kuma --action approve -o json

Input is checked before the server is asked: a bad ``--since`` exits 1.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from chiffon.api.ctl import Exit, Output, age, app, client, fail, print_objects, print_table

AUDIT_LIMIT = 1000
DETAIL_KEYS = ("reason", "step", "run", "digest", "request", "message", "error", "status")


def audit(
    failed: Annotated[bool, typer.Option("--failed", help="only failures")] = False,
    since: Annotated[
        str | None, typer.Option("--since", help="only this recent, e.g. 30m, 24h, 7d", show_default=False)
    ] = None,
    service: Annotated[
        str | None, typer.Option("--service", help="e.g. uptime-kuma", show_default=False)
    ] = None,
    actor: Annotated[str | None, typer.Option("--actor", help='e.g. "Alice <alice@example.com>"')] = None,
    intent: Annotated[
        str | None, typer.Option("--intent", help="an intent's name", show_default=False)
    ] = None,
    action: Annotated[str | None, typer.Option("--action", help="e.g. approve, dispatch, run.result")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=AUDIT_LIMIT, help="most events shown")] = 100,
    output: Annotated[
        Output, typer.Option("--output", "-o", help="table | wide | json | yaml")
    ] = Output.TABLE,
) -> None:
    """The audit trail, newest first: plans, approvals, dispatches, results, chat decisions, denials."""
    filters = {
        "since": _since(since),
        "service": service,
        "actor": actor,
        "resource": f"DeploymentIntent/{intent}" if intent else None,
        "action": action,
        "outcome": "failure" if failed else None,
        "limit": limit,
    }
    with client() as api:
        events = api.audit(**filters)
    if output in (Output.JSON, Output.YAML, Output.NAME):
        print_objects(events, output, single=False, name_of=lambda event: f"audit/{event['id']}")
        return
    headers = ["AGE", "ACTOR", "ACTION", "RESOURCE", "OUTCOME"]
    if output is Output.WIDE:
        headers += ["SERVICE", "DETAILS"]
    print_table(headers, [_row(event, output is Output.WIDE) for event in events])


def _since(text: str | None) -> str | None:
    if text is None:
        return None
    from chiffon.resources import parse_window

    try:
        window = parse_window(text)
    except ValueError as exc:
        raise fail(f"--since {text!r}: {exc}", Exit.INVALID) from None
    return (datetime.now(UTC) - window).isoformat()


def _row(event: dict[str, Any], wide: bool) -> list[str]:
    row = [
        age(event.get("time")),
        str(event.get("actor") or "-"),
        str(event.get("action")),
        str(event.get("resource") or "-"),
        str(event.get("outcome")),
    ]
    if wide:
        details = event.get("details") or {}
        said = "; ".join(f"{key}={str(details[key])[:60]}" for key in DETAIL_KEYS if details.get(key))
        row += [str(event.get("service") or "-"), said or "-"]
    return row


app.command("audit")(audit)
