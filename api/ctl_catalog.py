"""``chiffonctl catalog list|search``: what homelab-infra can run, found from a few words.

Both ask the server (``GET /api/v1/catalog``), whose catalog is the one the
planner resolves goals with, so what ``search`` prints first is what a step
with that ``goal`` would run. Input is checked here first: an empty query or
a limit out of range exits 1 without contacting the server.
"""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from typing import Annotated, Any

import typer

from chiffon.resources.yamlio import dump_yaml

catalog_app = typer.Typer(
    help="Find playbooks, roles and compose stacks in homelab-infra.", no_args_is_help=True
)

MAX_QUERY_CHARS = 500  # the server's limit (chiffon.agents.catalog.index.MAX_QUERY_CHARS)
MAX_LIMIT = 100


class CatalogOutput(StrEnum):
    TABLE = "table"
    JSON = "json"
    YAML = "yaml"


OutputOption = Annotated[CatalogOutput, typer.Option("--output", "-o", help="table, json or yaml")]


def _print_data(data: Any, output: CatalogOutput) -> None:
    if output is CatalogOutput.JSON:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    else:
        sys.stdout.write(dump_yaml(data))


def _runs(item: dict[str, Any]) -> str:
    """What a step running this entry runs: the playbook (with its tag and toggle), a role, or nothing."""
    if item.get("playbook"):
        extra = [f"--tags {','.join(item['runTags'])}"] if item.get("runTags") else []
        extra += [f"-e {key}=true" for key in item.get("runVars", {})]
        return " ".join([item["playbook"], *extra])
    if item.get("role"):
        return f"role {item['role']}"
    return "-"


@catalog_app.command("list")
def list_entries(
    output: OutputOption = CatalogOutput.TABLE,
    kind: Annotated[
        str | None, typer.Option("--kind", help="only playbook, role or compose-stack entries")
    ] = None,
) -> None:
    """Every playbook, role and compose stack the server found in homelab-infra."""
    from chiffon.api.ctl import Exit, client, err, fail, print_table

    if kind is not None and kind not in ("playbook", "role", "compose-stack"):
        raise fail(f"--kind: {kind!r} is not playbook, role or compose-stack", Exit.INVALID)
    with client() as api:
        body = api.request("GET", "/catalog", params={"kind": kind} if kind else None)
    if output is not CatalogOutput.TABLE:
        _print_data(body, output)
        return
    items = body.get("items", [])
    if not items:
        err.print("No playbooks, roles or compose stacks found in homelab-infra.")
    else:
        rows = [
            [
                item["kind"],
                item["name"],
                item["service"],
                ",".join(item.get("tags", [])[:6]) or "-",
                _runs(item),
            ]
            for item in items
        ]
        print_table(["KIND", "NAME", "SERVICE", "TAGS", "RUNS"], rows)
    for warning in body.get("warnings", []):
        err.print(f"warning: {warning}", markup=False)


@catalog_app.command("search")
def search(
    query: Annotated[str, typer.Argument(help='what you are looking for, e.g. "uptime monitoring"')],
    output: OutputOption = CatalogOutput.TABLE,
    limit: Annotated[int, typer.Option("--limit", "-n", help=f"matches to show (1-{MAX_LIMIT})")] = 5,
) -> None:
    """The entries that best match QUERY, with scores; says so when none is a confident match."""
    from chiffon.api.ctl import Exit, client, fail, out, print_table

    if not query.strip():
        raise fail('the query is empty; say what you are looking for, e.g. "uptime monitoring"', Exit.INVALID)
    if len(query) > MAX_QUERY_CHARS:
        raise fail(f"the query is {len(query)} characters; the limit is {MAX_QUERY_CHARS}", Exit.INVALID)
    if not 1 <= limit <= MAX_LIMIT:
        raise fail(f"--limit must be between 1 and {MAX_LIMIT}, not {limit}", Exit.INVALID)
    with client() as api:
        body = api.request("GET", "/catalog", params={"q": query, "limit": limit})
    if output is not CatalogOutput.TABLE:
        _print_data(body, output)
        return
    items = body.get("items", [])
    if body.get("confident") and items:
        rows = [
            [
                str(rank),
                f"{min(item['score'], 1.0):.2f}",
                item["confidence"],
                item["kind"],
                item["name"],
                _runs(item) if item["kind"] != "compose-stack" else item["path"],
            ]
            for rank, item in enumerate(items, start=1)
        ]
        print_table(["#", "SCORE", "CONFIDENCE", "KIND", "NAME", "RUNS"], rows)
        return
    out.print(f'No confident match for "{query}" in homelab-infra.', markup=False)
    if items:
        out.print("Closest entries:", markup=False)
        rows = [
            [f"{item['score']:.2f}", item["kind"], item["name"], item["description"][:70] or "-"]
            for item in items
        ]
        print_table(["SCORE", "KIND", "NAME", "DESCRIPTION"], rows)
    if body.get("template"):
        out.print(f"To write a new playbook from a template:\n  {body['template']}", markup=False)
