"""``chiffonctl postmortem RUN``: why a run failed, in one page (``GET /runs/{id}/postmortem``).

``RUN`` is a run id (or ``run/ID``), or ``intent/NAME`` for that intent's latest failed
run. The text form shows the header (intent, step, attempt, outcome, error), the failed
tasks, the agent's latest known capacity and the run's own usage, the timeline as
offsets from the dispatch, the suggestions and where the audit trail is::

    chiffonctl postmortem intent/uptime-kuma
    chiffonctl postmortem uptime-kuma-0123456789abcdef -o yaml
"""

from __future__ import annotations

import sys
from enum import StrEnum
from typing import Annotated, Any

import typer

from chiffon.api.client import ChiffonClient
from chiffon.api.ctl import (
    INTENT_PREFIXES,
    Exit,
    Output,
    app,
    best_free_vram,
    client,
    fail,
    find_run,
    mebibytes,
    print_objects,
)

FAILED_RUN_STATUSES = ("failed", "timeout")
RUNS_SEARCHED = 200


class Format(StrEnum):
    TEXT = "text"
    JSON = "json"
    YAML = "yaml"


def postmortem(
    run: Annotated[str, typer.Argument(help="a run id, run/ID, or intent/NAME for its latest failed run")],
    output: Annotated[Format, typer.Option("--output", "-o", help="text | json | yaml")] = Format.TEXT,
) -> None:
    """What a run failed on, the agent's state, the timeline and the suggestions for its playbooks."""
    with client() as api:
        found = latest_failed(api, run) or find_run(api, run)
        document: dict[str, Any] = api.request("GET", f"/runs/{found['id']}/postmortem")
    if output is Format.TEXT:
        sys.stdout.write("\n".join(text_lines(document)) + "\n")
    else:
        print_objects([document], Output(output.value), single=True)


def latest_failed(api: ChiffonClient, reference: str) -> dict[str, Any] | None:
    """For ``intent/NAME``, that intent's newest failed (or timed out) run; None for a run reference."""
    kind, slash, name = reference.partition("/")
    if not slash or kind.lower() not in INTENT_PREFIXES:
        return None
    if api.get_intent(name) is None:
        raise fail(f"deploymentintent/{name} not found", Exit.INVALID)
    runs = api.list_runs(name, limit=RUNS_SEARCHED)
    failed = next((run for run in runs if run["status"] in FAILED_RUN_STATUSES), None)
    if failed is None:
        raise fail(f"deploymentintent/{name} has no failed runs (of its latest {len(runs)})", Exit.INVALID)
    return failed


def text_lines(doc: dict[str, Any]) -> list[str]:
    """The post-mortem as a person reads it (pure)."""
    rc = f" (rc {doc['rc']})" if doc.get("rc") is not None else ""
    lines = [
        f"Run:         {doc['run']['id']}",
        f"Intent:      {doc['intent']}",
        f"Step:        {doc['step']} (attempt {doc['attempt']})",
        f"Outcome:     {doc['outcome']}{rc}",
        f"Error:       {doc.get('error') or '-'}",
        "Failed:",
        *(_failed_line(task) for task in doc["failed"]),
    ]
    if not doc["failed"]:
        lines.append("  <no failed task recorded>")
    lines += ["Resources:", *_resource_lines(doc["resources"]), "Timeline:"]
    lines += [f"  {_offset(entry['offsetSeconds']):>9}  {entry['what']}" for entry in doc["timeline"]]
    if not doc["timeline"]:
        lines.append("  <nothing recorded>")
    lines.append("Suggestions:")
    lines += [
        f"  #{s['id']} {s['category']} {s['file']}{':' + str(s['line']) if s.get('line') else ''}: "
        f"{s['reasoning']}"
        for s in doc["suggestions"]
    ]
    if not doc["suggestions"]:
        lines.append("  <none open for this plan's files>")
    return [*lines, f"Audit:       {doc['audit']['href']}"]


def _failed_line(task: dict[str, Any]) -> str:
    output = " ".join(str(task.get("output") or "").split())
    return f"  {task.get('task') or '-'} @ {task.get('host') or '-'} ({task['status']}): {output or '-'}"


def _resource_lines(resources: dict[str, Any]) -> list[str]:
    agent = resources.get("agent")
    lines: list[str] = []
    if agent is None:
        lines.append("  agent:     <none: the run was never accepted>")
    elif not agent.get("capacity"):
        lines.append(f"  agent:     {agent['id']} <no capacity reported>")
    else:
        capacity = agent["capacity"]
        lines.append(
            f"  agent:     {agent['id']}: {capacity['cpuCores']} cores, "
            f"{capacity['cpuLoadPercent']:.0f}% load, "
            f"memory {mebibytes(capacity['memoryAvailableMib'])} free of "
            f"{mebibytes(capacity['memoryTotalMib'])}, GPU free {best_free_vram(capacity)} "
            f"(latest heartbeat, {agent.get('capacityAsOf') or 'time unknown'})"
        )
    used = resources.get("used") or {}
    cpu, memory = used.get("cpuSeconds"), used.get("peakMemoryMib")
    lines.append(
        f"  run:       CPU {'-' if cpu is None else f'{cpu:.1f}s'}, "
        f"peak memory {'-' if memory is None else mebibytes(memory)}"
    )
    return lines


def _offset(seconds: float) -> str:
    sign = "-" if seconds < 0 else "+"
    whole = abs(seconds)
    if whole < 60:
        return f"{sign}{whole:.1f}s"
    minutes, rest = divmod(int(whole), 60)
    return f"{sign}{minutes}m{rest:02d}s"


app.command("postmortem")(postmortem)
