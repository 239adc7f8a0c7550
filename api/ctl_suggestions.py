"""``chiffonctl suggestions``: list, show, scan, accept and dismiss improvement suggestions.

Everything goes through the API (``/api/v1/suggestions``), so the server's
settings decide where accepted patches are committed. Exit codes as
everywhere: 0 success, 1 an unknown id or a patch that does not help (404/422),
2 a request that does not fit the suggestion's state (409) or server errors.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

from chiffon.api.ctl import Output, age, client, err, out, print_table
from chiffon.api.ctl import app as root_app

app = typer.Typer(
    help="Improvement suggestions for homelab-infra (ansible-lint and run-based).", no_args_is_help=True
)

# Scans and accepts run ansible-lint on the server: give them more than the client's default minute.
LONG_REQUEST_SECONDS = 900.0


def _where(item: dict[str, Any]) -> str:
    return f"{item['file']}:{item['line']}" if item.get("line") else str(item["file"])


def _first_sentence(text: str, limit: int = 70) -> str:
    text = text.split(" See https://", 1)[0]
    return text if len(text) <= limit else text[: limit - 1] + "…"


@app.command("list")
def list_suggestions(
    status: Annotated[
        str | None,
        typer.Option("--status", help="open | accepted | dismissed | implemented", show_default=False),
    ] = None,
    output: Annotated[
        Output, typer.Option("--output", "-o", help="table | wide | json | yaml")
    ] = Output.TABLE,
) -> None:
    """List suggestions, newest first."""
    params = {"status": status} if status else None
    with client() as api:
        items: list[dict[str, Any]] = api.request("GET", "/suggestions", params=params)["items"]
    if output in (Output.JSON, Output.YAML, Output.NAME):
        from chiffon.api.ctl import print_objects

        print_objects(items, output, single=False, name_of=lambda item: f"suggestion/{item['id']}")
        return
    headers = ["ID", "STATUS", "CATEGORY", "WHERE", "PATCH", "AGE"]
    if output is Output.WIDE:
        headers.append("REASONING")
    rows = []
    for item in items:
        row = [
            str(item["id"]),
            item["status"],
            item["category"],
            _where(item),
            "yes" if item.get("patch") else "-",
            age(item.get("createdAt")),
        ]
        if output is Output.WIDE:
            row.append(_first_sentence(item["reasoning"]))
        rows.append(row)
    if not rows:
        err.print("No suggestions" + (f" with status {status}" if status else "") + ".", markup=False)
        return
    print_table(headers, rows)


@app.command("show")
def show(
    suggestion_id: Annotated[int, typer.Argument(metavar="ID")],
    output: Annotated[Output, typer.Option("--output", "-o", help="table | json")] = Output.TABLE,
) -> None:
    """One suggestion: why, where, the proposed patch and its history."""
    with client() as api:
        item: dict[str, Any] = api.request("GET", f"/suggestions/{suggestion_id}")
    if output is Output.JSON:
        sys.stdout.write(json.dumps(item, indent=2) + "\n")
        return
    lines = [
        f"Suggestion: {item['id']}",
        f"Status:     {item['status']}",
        f"Category:   {item['category']}",
        f"Where:      {_where(item)}",
        f"Reasoning:  {item['reasoning']}",
    ]
    for line in lines:
        out.print(line, markup=False)
    if item.get("patch"):
        out.print("Patch:", markup=False)
        sys.stdout.write(item["patch"])
    else:
        out.print("Patch:      none (fix it by hand)", markup=False)
    if item.get("history"):
        out.print("History:", markup=False)
        for event in item["history"]:
            details = event.get("details") or {}
            extra = details.get("commit") or details.get("error") or details.get("reason") or ""
            line = f"  {event['time']}  {event['action']}  {event['outcome']}  {event['actor']}  {extra}"
            out.print(line.rstrip(), markup=False)


@app.command("scan")
def scan() -> None:
    """Lint homelab-infra and check the stored runs now; store what is new."""
    with client() as api:
        result: dict[str, Any] = api.request("POST", "/suggestions/scan", timeout=LONG_REQUEST_SECONDS)
    sources = ", ".join(f"{source} {count}" for source, count in sorted(result["bySource"].items())) or "none"
    revision = (result.get("revision") or "")[:12] or "working copy"
    out.print(
        f"Scanned homelab-infra at {revision}: {result['found']} findings ({sources}), "
        f"{result['new']} new, {result['implemented']} now implemented.",
        markup=False,
    )


@app.command("accept")
def accept(
    suggestion_id: Annotated[int, typer.Argument(metavar="ID")],
    branch: Annotated[
        str | None,
        typer.Option(
            "--branch", help="commit on this new branch (default: chiffon/suggestion-ID)", show_default=False
        ),
    ] = None,
) -> None:
    """Commit the suggestion's patch to homelab-infra, if ansible-lint shows that it helps."""
    with client() as api:
        result: dict[str, Any] = api.request(
            "POST",
            f"/suggestions/{suggestion_id}/accept",
            json={"branch": branch},
            timeout=LONG_REQUEST_SECONDS,
        )
    if result.get("commit"):
        out.print(
            f"suggestion/{suggestion_id} accepted: commit {result['commit'][:12]} on {result['branch']} "
            f"(ansible-lint findings in {', '.join(result['files'])}: "
            f"{result['lintBefore']} → {result['lintAfter']})",
            markup=False,
        )
    else:
        out.print(
            f"suggestion/{suggestion_id} accepted; it has no patch, so nothing was committed", markup=False
        )


@app.command("dismiss")
def dismiss(
    suggestion_id: Annotated[int, typer.Argument(metavar="ID")],
    reason: Annotated[str, typer.Option("--reason", help="why (kept in the audit log)")] = "",
) -> None:
    """Dismiss a suggestion; a rescan never reopens it."""
    with client() as api:
        api.request("POST", f"/suggestions/{suggestion_id}/dismiss", json={"reason": reason})
    out.print(f"suggestion/{suggestion_id} dismissed", markup=False)


# Registered on chiffonctl's root, which imports this module at its end.
root_app.add_typer(app, name="suggestions")
