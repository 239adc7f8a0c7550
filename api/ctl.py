"""``chiffonctl``: the command-line client, with kubectl's habits.

Everything that can be checked locally is checked before the server is
contacted (``validate`` needs no server at all), so a bad file fails fast with
its path and line. Exit codes: 0 success, 1 invalid input or "not found"
(``diff``: 1 means differences), 2 usage, connection or server errors.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import sys
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from chiffon.api.client import DEFAULT_SERVER, ApiError, ChiffonClient, UnreachableError
from chiffon.resources import DeploymentIntent
from chiffon.resources.yamlio import (
    ParsedIntent,
    ResourceError,
    dump_yaml,
    parse_intents,
    strip_server_fields,
)

YAML_SUFFIXES = (".yaml", ".yml")

app = typer.Typer(
    name="chiffonctl",
    help="Talk to a Chiffon server: apply intents, inspect them, and see why they are (not) running.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
get_app = typer.Typer(help="List resources.", no_args_is_help=True)
describe_app = typer.Typer(help="Show one resource in detail.", no_args_is_help=True)
delete_app = typer.Typer(
    help="Delete a resource (commits its removal to the intents repo).", no_args_is_help=True
)
app.add_typer(get_app, name="get")
app.add_typer(describe_app, name="describe")
app.add_typer(delete_app, name="delete")

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class Output(StrEnum):
    TABLE = "table"
    WIDE = "wide"
    YAML = "yaml"
    JSON = "json"
    NAME = "name"


class Exit:
    OK = 0
    INVALID = 1
    ERROR = 2


class State:
    server: str = DEFAULT_SERVER
    token: str | None = None


state = State()


@app.callback()
def main_options(
    server: Annotated[
        str, typer.Option("--server", envvar="CHIFFON_SERVER", help="Chiffon API address")
    ] = DEFAULT_SERVER,
    token: Annotated[
        str | None, typer.Option("--token", envvar="CHIFFON_TOKEN", help="bearer token", show_default=False)
    ] = None,
) -> None:
    state.server = server
    state.token = token


# Plumbing ----------------------------------------------------------------------------------


def fail(message: str, code: int = Exit.ERROR) -> typer.Exit:
    err.print(f"chiffonctl: error: {message}", markup=False)
    return typer.Exit(code)


@contextlib.contextmanager
def client() -> Iterator[ChiffonClient]:
    """A client whose failures become one-line messages and the right exit code."""
    api = ChiffonClient(state.server, state.token)
    try:
        yield api
    except UnreachableError as exc:
        raise fail(str(exc)) from None
    except ApiError as exc:
        for problem in exc.problems:
            err.print(str(problem), markup=False)
        code = Exit.INVALID if exc.status in (404, 422) else Exit.ERROR
        raise fail(exc.detail, code) from None
    finally:
        api.close()


def expand_paths(paths: Sequence[Path]) -> list[Path]:
    """Files as given; folders walked for *.yaml/*.yml, hidden entries skipped, in name order."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.suffix in YAML_SUFFIXES
                and p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not found:
                raise fail(f"{path}: no .yaml or .yml files in this folder", Exit.INVALID)
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise fail(f"{path}: no such file or folder", Exit.INVALID)
    return files


def read_local(
    paths: Sequence[Path], *, allow_server_fields: bool
) -> tuple[list[ParsedIntent], dict[Path, bytes]]:
    """Parse local files; print every problem and exit 1 if there are any."""
    parsed: list[ParsedIntent] = []
    errors: list[ResourceError] = []
    contents: dict[Path, bytes] = {}
    for path in expand_paths(paths):
        contents[path] = path.read_bytes()
        result = parse_intents(contents[path], str(path), allow_server_fields=allow_server_fields)
        parsed.extend(result.intents)
        errors.extend(result.errors)
    if errors:
        for error in errors:
            err.print(str(error), markup=False)
        raise fail(
            f"{len(errors)} problem{'s' if len(errors) != 1 else ''} found; nothing was sent", Exit.INVALID
        )
    return parsed, contents


def age(timestamp: str | None, now: datetime | None = None) -> str:
    if not timestamp:
        return "-"
    then = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    seconds = max(0, int(((now or datetime.now(UTC)) - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A rich table on a terminal, plain aligned columns (like kubectl) when piped."""
    if out.is_terminal:
        table = Table(box=None, header_style="bold", pad_edge=False)
        for header in headers:
            table.add_column(header, overflow="fold")
        for row in rows:
            table.add_row(*row)
        out.print(table)
        return
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    for row in [list(headers), *rows]:
        line = "   ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip()
        sys.stdout.write(line + "\n")


def print_objects(items: list[dict[str, Any]], output: Output, single: bool) -> None:
    data: Any = items[0] if single else {"apiVersion": "v1", "kind": "List", "items": items}
    if output is Output.JSON:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    elif output is Output.YAML:
        sys.stdout.write(dump_yaml(data))
    elif output is Output.NAME:
        for item in items:
            sys.stdout.write(f"deploymentintent/{item['metadata']['name']}\n")


def condition(item: dict[str, Any], kind: str) -> dict[str, Any]:
    for entry in item.get("status", {}).get("conditions", []):
        if entry.get("type") == kind:
            return dict(entry)
    return {}


def condition_status(item: dict[str, Any], kind: str) -> str:
    return str(condition(item, kind).get("status", "-"))


def short(revision: str | None) -> str:
    return revision[:7] if revision else "-"


# apply / validate / diff / delete ------------------------------------------------------------

FileOption = Annotated[
    list[Path],
    typer.Option("--filename", "-f", help="file or folder of intents (repeatable)", show_default=False),
]


def submission(parsed: list[ParsedIntent], contents: dict[Path, bytes]) -> list[tuple[str, str]]:
    """Whole files when they are clean; documents with server-set fields are sent stripped."""
    files: list[tuple[str, str]] = []
    by_source: dict[str, list[ParsedIntent]] = {}
    for item in parsed:
        by_source.setdefault(item.source, []).append(item)
    for path, content in contents.items():
        items = by_source.get(str(path), [])
        stripped = [strip_server_fields(item.document.text) for item in items]
        if not any(dropped for _, dropped in stripped):
            files.append((str(path), content.decode()))
            continue
        for item, (text, dropped) in zip(items, stripped, strict=True):
            name = item.intent.metadata.name
            err.print(f"note: {path}: dropped server-set {', '.join(dropped)} from deploymentintent/{name}")
            files.append((f"{path}#{item.document.index + 1}" if len(items) > 1 else str(path), text))
    return files


@app.command()
def apply(
    filename: FileOption,
    message: Annotated[
        str | None, typer.Option("--message", "-m", help="text for the commit message")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="validate on the server, commit nothing")
    ] = False,
    output: Annotated[Output, typer.Option("--output", "-o", help="table or json")] = Output.TABLE,
) -> None:
    """Validate intents, then commit them to the intents repo (as you) and show the result."""
    parsed, contents = read_local(filename, allow_server_fields=True)
    with client() as api:
        result = api.apply(submission(parsed, contents), message=message, dry_run=dry_run)
    if output is Output.JSON:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
        return
    suffix = " (dry run)" if dry_run else ""
    for intent in result["intents"]:
        out.print(f"deploymentintent/{intent['name']} {intent['outcome']}{suffix}", markup=False)
    if result.get("revision") and not dry_run:
        committed = "committed" if result.get("committed") else "nothing to commit"
        out.print(f"revision {short(result['revision'])} ({committed})", markup=False)


@app.command()
def validate(
    files: Annotated[
        list[Path] | None, typer.Argument(help="files to check (pre-commit passes them here)")
    ] = None,
    filename: Annotated[list[Path] | None, typer.Option("--filename", "-f", help="file or folder")] = None,
    infra_repo: Annotated[
        Path | None, typer.Option("--infra-repo", help="also check that playbooks and inventories exist here")
    ] = None,
) -> None:
    """Check intent files without a server; exit 1 on any problem. Usable as a pre-commit hook."""
    paths = [*(files or []), *(filename or [])]
    if not paths:
        raise fail("give files or folders to validate (e.g. chiffonctl validate -f intents/)")
    parsed, _ = read_local(paths, allow_server_fields=False)
    missing = missing_infra_files(parsed, infra_repo) if infra_repo else []
    for problem in missing:
        err.print(str(problem), markup=False)
    if missing:
        raise fail(f"{len(missing)} problem{'s' if len(missing) != 1 else ''} found", Exit.INVALID)
    count = len(parsed)
    out.print(f"{count} intent{'s' if count != 1 else ''} valid", markup=False)


def missing_infra_files(parsed: list[ParsedIntent], infra_repo: Path) -> list[ResourceError]:
    """Playbooks and inventories that do not exist (or leave) the homelab-infra repo."""
    root = infra_repo.resolve()
    problems = []
    for item in parsed:
        spec = item.intent.spec
        wanted = [(f"spec.steps[{i}].playbook", s.playbook) for i, s in enumerate(spec.steps) if s.playbook]
        if spec.inventory:
            wanted.append(("spec.inventory", spec.inventory))
        for field, relative in wanted:
            target = (root / relative).resolve()
            line = item.document.lines.get(tuple(_path_parts(field)), item.document.line)
            if not target.is_relative_to(root):
                problems.append(
                    ResourceError(item.source, f"{relative} resolves outside {root}", line=line, field=field)
                )
            elif not target.exists():
                problems.append(
                    ResourceError(item.source, f"{relative} does not exist in {root}", line=line, field=field)
                )
    return problems


def _path_parts(field: str) -> list[str | int]:
    parts: list[str | int] = []
    for token in field.replace("]", "").split("."):
        name, _, index = token.partition("[")
        parts.append(name)
        if index:
            parts.append(int(index))
    return parts


def comparable(intent: dict[str, Any]) -> dict[str, Any]:
    """What apply changes: labels, annotations and the spec (with defaults filled in)."""
    model = DeploymentIntent.model_validate(
        {
            "apiVersion": intent["apiVersion"],
            "kind": intent["kind"],
            "spec": intent["spec"],
            "metadata": {"name": intent["metadata"]["name"]},
        }
    )
    metadata = intent.get("metadata", {})
    return {
        "metadata": {
            "name": metadata["name"],
            "labels": metadata.get("labels") or {},
            "annotations": metadata.get("annotations") or {},
        },
        "spec": model.spec_wire(),
    }


@app.command()
def diff(filename: FileOption) -> None:
    """Show what apply would change. Exit 0: no changes, 1: changes, 2: error."""
    try:
        parsed, _ = read_local(filename, allow_server_fields=True)
    except typer.Exit as exc:
        raise typer.Exit(Exit.ERROR) from exc
    changed = False
    with client() as api:
        for item in parsed:
            name = item.intent.metadata.name
            live = api.get_intent(name)
            local_text = dump_yaml(comparable(item.intent.to_wire()))
            live_text = dump_yaml(comparable(live)) if live else ""
            if local_text == live_text:
                continue
            changed = True
            lines = difflib.unified_diff(
                live_text.splitlines(keepends=True),
                local_text.splitlines(keepends=True),
                fromfile=f"live/deploymentintent/{name}" if live else "/dev/null",
                tofile=f"local/{item.source}",
            )
            sys.stdout.write("".join(lines))
    raise typer.Exit(1 if changed else 0)


@delete_app.command("intent")
def delete_intent(
    name: str,
    message: Annotated[
        str | None, typer.Option("--message", "-m", help="text for the commit message")
    ] = None,
) -> None:
    """Remove an intent's document from the intents repo; the controller prunes it."""
    with client() as api:
        result = api.delete_intent(name, message=message)
    out.print(f"deploymentintent/{name} deleted (revision {short(result.get('revision'))})", markup=False)


# get / describe ------------------------------------------------------------------------------


def intent_row(item: dict[str, Any], wide: bool) -> list[str]:
    metadata, spec, status = item["metadata"], item["spec"], item.get("status") or {}
    row = [
        metadata["name"],
        spec.get("service") or metadata["name"],
        str(len(spec.get("steps", []))),
        str(metadata.get("generation", "-")),
        condition_status(item, "Planned"),
        condition_status(item, "Approved"),
        condition_status(item, "Ready"),
        age(metadata.get("creationTimestamp")),
    ]
    if wide:
        row += [
            short(status.get("observedRevision")),
            status.get("sourcePath") or "-",
            status.get("blockedBy") or "-",
        ]
    return row


@get_app.command("intents")
def get_intents(
    name: Annotated[str | None, typer.Argument(help="one intent by name")] = None,
    output: Annotated[
        Output, typer.Option("--output", "-o", help="table, wide, yaml, json or name")
    ] = Output.TABLE,
    selector: Annotated[
        str | None, typer.Option("--selector", "-l", help="label selector key=value,…")
    ] = None,
) -> None:
    """List DeploymentIntents with their generation and conditions."""
    with client() as api:
        if name:
            found = api.get_intent(name)
            if found is None:
                raise fail(f"deploymentintent/{name} not found", Exit.INVALID)
            items = [found]
        else:
            items = api.list_intents(selector)
    if output in (Output.TABLE, Output.WIDE):
        if not items:
            err.print("No intents found.")
            return
        headers = ["NAME", "SERVICE", "STEPS", "GENERATION", "PLANNED", "APPROVED", "READY", "AGE"]
        if output is Output.WIDE:
            headers += ["REVISION", "SOURCE", "BLOCKED BY"]
        print_table(headers, [intent_row(item, output is Output.WIDE) for item in items])
        return
    print_objects(items, output, single=name is not None)


get_app.command("intent", hidden=True)(get_intents)


@get_app.command("sources")
def get_sources(
    output: Annotated[Output, typer.Option("--output", "-o", help="table, yaml or json")] = Output.TABLE,
) -> None:
    """Show the git sources: revision read, intents found, files that could not be read."""
    with client() as api:
        items = api.list_sources()
    if output in (Output.JSON, Output.YAML):
        data = {"apiVersion": "v1", "kind": "List", "items": items}
        sys.stdout.write(json.dumps(data, indent=2) + "\n" if output is Output.JSON else dump_yaml(data))
        return
    rows = [
        [
            s["name"],
            s["url"],
            short(s.get("revision")),
            str(s.get("intents", 0)),
            str(len(s.get("fileErrors", []))),
            age(s.get("lastSyncAt")),
        ]
        for s in items
    ]
    print_table(["NAME", "URL", "REVISION", "INTENTS", "ERRORS", "SYNCED"], rows)
    for source in items:
        for problem in source.get("fileErrors", []):
            where = problem["path"] + (f":{problem['line']}" if problem.get("line") else "")
            field = f"{problem['field']}: " if problem.get("field") else ""
            out.print(f"  error: {where}: {field}{problem['message']}", markup=False)
        for path in source.get("uncommitted", []):
            out.print(f"  note: {path} has uncommitted changes (not applied until committed)", markup=False)
        if source.get("lastError"):
            out.print(f"  last error: {source['lastError']}", markup=False)


get_app.command("source", hidden=True)(get_sources)


def plan_lines(plan: dict[str, Any] | None) -> list[str]:
    if not plan:
        return ["Plan:          <none yet>"]
    seconds = plan.get("estimatedDurationSeconds")
    duration = f", about {seconds:.0f}s" if seconds else ", no duration estimate yet"
    lines = [
        f"Plan:          {plan['digest'][:12]} ({plan.get('risk', '?')} risk{duration})",
        f"  digest:      {plan['digest']}",
    ]
    for index, step in enumerate(plan.get("steps", []), start=1):
        target = step.get("playbook") or f"role {step.get('role')}"
        lines.append(f"  {index}. {step['name']:<20} {target}  [{step['contentHash'][:12]}]")
    return lines


def run_lines(runs: list[dict[str, Any]]) -> list[str]:
    if not runs:
        return ["Runs:          <none>"]
    lines = ["Runs:", f"  {'RUN':<34} {'STEP':<20} {'TRY':<4} {'STATUS':<11} {'AGENT':<16} AGE"]
    for run in runs[:10]:
        lines.append(
            f"  {run['id']:<34} {run['step']:<20} {run.get('attempt', 1):<4} {run['status']:<11} "
            f"{run.get('agentId') or '-':<16} {age(run.get('createdAt'))}"
        )
    return lines


def describe_lines(
    item: dict[str, Any], events: list[dict[str, Any]], runs: list[dict[str, Any]]
) -> list[str]:
    metadata, spec, status = item["metadata"], item["spec"], item.get("status") or {}
    labels = ",".join(f"{k}={v}" for k, v in (metadata.get("labels") or {}).items()) or "<none>"
    resources = spec.get("resources", {})
    lines = [
        f"Name:          {metadata['name']}",
        f"Service:       {spec.get('service') or metadata['name']}",
        f"Labels:        {labels}",
        "Annotations:   "
        + (
            "\n               ".join(f"{k}: {v}" for k, v in (metadata.get("annotations") or {}).items())
            or "<none>"
        ),
        f"Generation:    {metadata.get('generation', '-')}",
        f"Created:       {metadata.get('creationTimestamp', '-')}",
        f"Source:        {status.get('sourcePath') or '-'} @ {short(status.get('observedRevision'))}",
        f"Approval:      {spec.get('approval')}    Priority: {spec.get('priority')}    "
        f"Suspended: {'yes' if spec.get('suspend') else 'no'}",
        f"Inventory:     {spec.get('inventory') or '-'}    Limit: {spec.get('limit') or '-'}",
        f"Depends on:    {', '.join(spec.get('dependsOn', [])) or '-'}",
        f"Resources:     GPU {resources.get('gpuMemoryMiB', 0)} MiB, "
        f"CPU {resources.get('cpuCores', 0)} cores, memory {resources.get('memoryMiB', 0)} MiB",
        f"Drift:         {spec.get('driftDetection', {}).get('mode')} every "
        f"{spec.get('driftDetection', {}).get('interval')}",
        "Steps:",
    ]
    for index, step in enumerate(spec.get("steps", []), start=1):
        target = (
            f"playbook {step['playbook']}"
            if step.get("playbook")
            else f"role {step['role']}"
            if step.get("role")
            else f'goal "{step.get("goal")}"'
        )
        extras = f"  vars: {', '.join(step['vars'])}" if step.get("vars") else ""
        lines.append(f"  {index}. {step['name']:<20} {target}{extras}")
    lines.append("Conditions:")
    lines.append(f"  {'TYPE':<12} {'STATUS':<8} {'REASON':<22} {'AGE':<5} MESSAGE")
    for entry in status.get("conditions", []):
        lines.append(
            f"  {entry['type']:<12} {entry['status']:<8} {entry['reason']:<22} "
            f"{age(entry.get('lastTransitionTime')):<5} {entry.get('message', '')}"
        )
    lines.extend(plan_lines(status.get("plan")))
    lines.append(f"Blocked by:    {status.get('blockedBy') or '-'}")
    lines.extend(run_lines(runs))
    lines.append("Events:")
    if not events:
        lines.append("  <none>")
    else:
        lines.append(f"  {'AGE':<5} {'ACTION':<20} {'OUTCOME':<8} ACTOR")
    for event in events:
        lines.append(
            f"  {age(event.get('time')):<5} {event['action']:<20} {event.get('outcome', ''):<8} "
            f"{event.get('actor', '')}"
        )
    return lines


@describe_app.command("intent")
def describe_intent(name: str) -> None:
    """Conditions, plan, what blocks it, recent events."""
    with client() as api:
        item = api.get_intent(name)
        if item is None:
            raise fail(f"deploymentintent/{name} not found", Exit.INVALID)
        events = api.audit(resource=f"DeploymentIntent/{name}", limit=10)
        runs = api.list_runs(name, limit=10)
    for line in describe_lines(item, events, runs):
        out.print(line, markup=False)


# approve / reject / wait / runs ----------------------------------------------------------------


PlanOption = Annotated[
    str | None,
    typer.Option("--plan", help="the plan digest you reviewed (first 6+ characters); refused if stale"),
]


@app.command()
def approve(
    name: str,
    plan: PlanOption = None,
    reason: Annotated[str, typer.Option("--reason", help="why (kept in the audit trail)")] = "",
) -> None:
    """Approve an intent's current plan. Approving never changes the intent's git revision."""
    with client() as api:
        approval = api.decide(name, "approve", plan=plan, reason=reason)
    out.print(f"deploymentintent/{name} plan {approval['digest'][:12]} approved", markup=False)


@app.command()
def reject(
    name: str,
    reason: Annotated[str, typer.Option("--reason", help="why (required; kept in the audit trail)")],
    plan: PlanOption = None,
) -> None:
    """Reject an intent's current plan; it stays unapplied until its spec changes."""
    with client() as api:
        decision = api.decide(name, "reject", plan=plan, reason=reason)
    out.print(f"deploymentintent/{name} plan {decision['digest'][:12]} rejected", markup=False)


def parse_condition(spec: str) -> tuple[str, str]:
    """``condition=Ready`` or ``condition=Ready=False`` → (type, wanted status)."""
    kind, _, rest = spec.partition("=")
    condition_type, _, wanted = rest.partition("=")
    if kind != "condition" or not condition_type:
        raise fail(f"--for {spec!r}: use --for=condition=TYPE[=STATUS], e.g. --for=condition=Ready")
    return condition_type, wanted or "True"


def parse_seconds(text: str) -> float:
    from chiffon.resources import parse_duration

    try:
        return parse_duration(text).total_seconds()
    except ValueError as exc:
        raise fail(f"--timeout: {exc}") from None


@app.command()
def wait(
    resource: Annotated[str, typer.Argument(help="intent/NAME (or just NAME)")],
    for_: Annotated[str, typer.Option("--for", help="condition=TYPE[=STATUS]")] = "condition=Ready",
    timeout: Annotated[str, typer.Option("--timeout", help="give up after this long, e.g. 30s, 5m")] = "5m",
) -> None:
    """Wait until a condition holds; fail fast if the intent is Stalled. Exit 0 met, 1 stalled/timeout."""
    import time

    name = resource.split("/", 1)[1] if "/" in resource else resource
    condition_type, wanted = parse_condition(for_)
    deadline = time.monotonic() + parse_seconds(timeout)
    with client() as api:
        while True:
            item = api.get_intent(name)
            if item is None:
                raise fail(f"deploymentintent/{name} not found", Exit.INVALID)
            found = condition(item, condition_type)
            if found.get("status") == wanted and found.get("observedGeneration") == item["metadata"].get(
                "generation"
            ):
                out.print(f"deploymentintent/{name} condition met: {condition_type}={wanted}", markup=False)
                return
            stalled = condition(item, "Stalled")
            if stalled.get("status") == "True":
                raise fail(f"deploymentintent/{name} is stalled: {stalled.get('message')}", Exit.INVALID)
            if time.monotonic() >= deadline:
                blocked = (item.get("status") or {}).get("blockedBy") or found.get("message") or "no progress"
                raise fail(f"timed out waiting for {condition_type}={wanted}: {blocked}", Exit.INVALID)
            time.sleep(0.5)


@get_app.command("runs")
def get_runs(
    intent: Annotated[str | None, typer.Option("--intent", help="only this intent's runs")] = None,
    output: Annotated[Output, typer.Option("--output", "-o", help="table, yaml or json")] = Output.TABLE,
    limit: Annotated[int, typer.Option("--limit", help="newest N runs")] = 50,
) -> None:
    """List runs, newest first."""
    with client() as api:
        items = api.list_runs(intent, limit)
    if output in (Output.JSON, Output.YAML):
        data = {"apiVersion": "v1", "kind": "List", "items": items}
        sys.stdout.write(json.dumps(data, indent=2) + "\n" if output is Output.JSON else dump_yaml(data))
        return
    if not items:
        err.print("No runs found.")
        return
    rows = [
        [
            run["id"],
            run["intent"],
            run["step"],
            str(run.get("attempt", 1)),
            run["status"],
            run.get("agentId") or "-",
            "-" if run.get("rc") is None else str(run["rc"]),
            age(run.get("createdAt")),
        ]
        for run in items
    ]
    print_table(["RUN", "INTENT", "STEP", "TRY", "STATUS", "AGENT", "RC", "AGE"], rows)


get_app.command("run", hidden=True)(get_runs)


@app.command()
def version() -> None:
    """Print the client and server versions."""
    from chiffon import __version__

    out.print(f"client: {__version__}", markup=False)
    with client() as api:
        server = api.request("GET", "/version")
    out.print(f"server: {server['version']} ({state.server})", markup=False)


def main() -> None:
    app()
