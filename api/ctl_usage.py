"""``chiffonctl usage``: what the language models cost, and how much quota and budget is left.

Asks the server (``GET /api/v1/usage``), whose ledger every model call writes:
calls, failures, tokens and dollars per provider and model since ``--since``,
then today's local token quota and this month's external budget. ``--since``
is checked here first: a bad value exits 1 without contacting the server.
"""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from typing import Annotated, Any

import typer

from chiffon.resources.yamlio import dump_yaml


class UsageOutput(StrEnum):
    TABLE = "table"
    JSON = "json"
    YAML = "yaml"


def usage(
    since: Annotated[
        str, typer.Option("--since", help="how far back to add up: 30d, 24h, 30m, 1d12h")
    ] = "30d",
    output: Annotated[
        UsageOutput, typer.Option("--output", "-o", help="table, json or yaml")
    ] = UsageOutput.TABLE,
) -> None:
    """LLM calls, tokens and cost per model; local quota left today, external budget left this month."""
    from chiffon.api.ctl import Exit, client, fail
    from chiffon.resources import parse_window

    try:
        parse_window(since)
    except ValueError as exc:
        raise fail(f"--since: {exc}", Exit.INVALID) from None
    with client() as api:
        report = api.usage(since)
    if output is UsageOutput.JSON:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    elif output is UsageOutput.YAML:
        sys.stdout.write(dump_yaml(report))
    else:
        print_report(report, since)


def print_report(report: dict[str, Any], since: str) -> None:
    """The spend table, a total row, then one line each for the quota and the budget."""
    from chiffon.api.ctl import err, out, print_table

    if not report.get("configured"):
        err.print(
            "No LLM is configured: set llm_local_model and/or llm_external_model (docs/llm.md).", markup=False
        )
    items = report.get("items", [])
    if items:
        rows = [_row(item["provider"], item["model"], item.get("role") or "-", item) for item in items]
        rows.append(_row("TOTAL", "", "", report["totals"]))
        print_table(["PROVIDER", "MODEL", "ROLE", "CALLS", "FAILED", "TOKENS", "COST"], rows)
    else:
        out.print(f"No LLM calls in the last {since}.", markup=False)
    for line in _quota_lines(report):
        out.print(line, markup=False)


def _row(provider: str, model: str, role: str, numbers: dict[str, Any]) -> list[str]:
    return [
        provider,
        model,
        role,
        str(numbers["calls"]),
        str(numbers["failures"]),
        f"{numbers['tokens']:,}",
        f"${numbers['costUsd']:.4f}",
    ]


def _quota_lines(report: dict[str, Any]) -> list[str]:
    lines = []
    local, external = report.get("local") or {}, report.get("external") or {}
    if local.get("model"):
        lines.append(
            f"Local quota ({local['model']}): {local['usedTokens']:,} of {local['dailyTokens']:,} tokens "
            f"used today ({local['usedPercent']:g} %), {local['leftPercent']:g} % left."
        )
    if external.get("model"):
        lines.append(
            f"External budget ({external['model']}): ${external['spentUsd']:.2f} of "
            f"${external['monthlyBudgetUsd']:.2f} spent this month, ${external['leftUsd']:.2f} left."
        )
    return lines
