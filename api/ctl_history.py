"""``chiffonctl history`` and ``chiffonctl rollback``: an intent's revisions, and going back to one.

::

    chiffonctl history intent/uptime-kuma
    chiffonctl rollback uptime-kuma --to 3f2a9c1 --reason "port 4000 broke the portals"

History lists the commits that touched the intent's file, newest first, with the
generation each became and the plan digest applied from it. Rollback commits
the intent's document as it was at that revision (a new commit, never a history
rewrite), so the intent is planned again and, under ``approval: Manual``, waits
for ``chiffonctl approve`` like any change.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from chiffon.api.ctl import Exit, Output, age, app, client, fail, out, print_objects, print_table, short

RESOURCE_PREFIXES = ("intent/", "intents/", "deploymentintent/", "deploymentintents/", "di/")


def history(
    resource: Annotated[str, typer.Argument(help="intent/NAME (or just NAME)")],
    limit: Annotated[int, typer.Option("--limit", min=1, max=500, help="most revisions shown")] = 50,
    output: Annotated[Output, typer.Option("--output", "-o", help="table | json | yaml")] = Output.TABLE,
) -> None:
    """The revisions of an intent, newest first: who changed it, its generation, what was applied."""
    name = intent_name_of(resource)
    with client() as api:
        result: dict[str, Any] = api.request("GET", f"/intents/{name}/history", params={"limit": limit})
    if output in (Output.JSON, Output.YAML):
        print_objects([result], output, single=True)
        return
    headers = ["REVISION", "AGE", "AUTHOR", "GENERATION", "APPLIED", "DIGEST", "SUBJECT"]
    print_table(headers, [_row(item) for item in result["items"]])


def rollback(
    name: Annotated[str, typer.Argument(help="the intent's name")],
    to: Annotated[str, typer.Option("--to", help="the revision to go back to (see chiffonctl history)")],
    reason: Annotated[
        str | None, typer.Option("--reason", help="why (kept in the commit message)", show_default=False)
    ] = None,
) -> None:
    """Commit the intent's document as it was at REVISION; the new plan is approved like any change."""
    name = intent_name_of(name)
    with client() as api:
        report = api.request("POST", f"/intents/{name}/rollback", json={"to": to, "reason": reason})
        intent = api.get_intent(name)
    [applied] = report["intents"] or [{}]
    generation = applied.get("generation")
    out.print(
        f"deploymentintent/{name} rolled back to {short(to)} in revision {short(report.get('revision'))}"
        + (f" (generation {generation})" if generation else ""),
        markup=False,
    )
    if intent and intent.get("spec", {}).get("approval", "Manual") == "Manual":
        out.print(
            f"approval is Manual: the new plan waits for approval (chiffonctl approve {name})",
            markup=False,
        )


def intent_name_of(text: str) -> str:
    for prefix in RESOURCE_PREFIXES:
        if text.lower().startswith(prefix):
            text = text[len(prefix) :]
            break
    if not text or "/" in text:
        raise fail(f"{text!r}: give intent/NAME", Exit.INVALID)
    return text


def _row(item: dict[str, Any]) -> list[str]:
    generation = item.get("generation")
    return [
        short(item.get("revision")),
        age(item.get("time")),
        str(item.get("author") or "-"),
        str(generation) if generation is not None else "-",
        age(item.get("appliedAt")) if item.get("applied") else "no",
        str(item.get("digest") or "-")[:12],
        str(item.get("subject") or ""),
    ]


app.command("history")(history)
app.command("rollback")(rollback)
