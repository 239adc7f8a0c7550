"""``chiffonctl``: the command-line client, with kubectl's habits.

Everything that can be checked locally is checked before the server is
contacted (``validate`` needs no server at all), so a bad file fails fast with
its path and line. Exit codes: 0 success, 1 invalid input or "not found"
(``diff``: 1 means differences; ``logs -f``: 1 means the run did not succeed), 2 usage,
connection or server errors.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from chiffon.api.agentview import parse_label_selector, parse_mebibytes
from chiffon.api.client import DEFAULT_SERVER, ApiError, ChiffonClient, UnreachableError
from chiffon.api.ctl_catalog import catalog_app
from chiffon.api.ctl_usage import usage
from chiffon.controllers.scheduler import OFFLINE_AFTER
from chiffon.resources import AgentKind, DeploymentIntent, RunStatus
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
app.add_typer(catalog_app, name="catalog")
app.command("usage")(usage)

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


def intent_name(item: dict[str, Any]) -> str:
    return f"deploymentintent/{item['metadata']['name']}"


def print_objects(
    items: list[dict[str, Any]],
    output: Output,
    single: bool,
    name_of: Callable[[dict[str, Any]], str] = intent_name,
) -> None:
    data: Any = items[0] if single else {"apiVersion": "v1", "kind": "List", "items": items}
    if output is Output.JSON:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    elif output is Output.YAML:
        sys.stdout.write(dump_yaml(data))
    elif output is Output.NAME:
        for item in items:
            sys.stdout.write(name_of(item) + "\n")


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
            condition_status(item, "Drifted"),  # present only when True
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
            headers += ["DRIFTED", "REVISION", "SOURCE", "BLOCKED BY"]
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
        if choice := step.get("catalog"):
            lines.append(f"     {catalog_line(choice)}")
    return lines


def catalog_line(choice: dict[str, Any]) -> str:
    """How a goal-only step was resolved: the query, the score, how sure, and the runner-up."""
    sure = "confident" if choice.get("confident") else "LOW CONFIDENCE: needs approval"
    line = f'from the catalog: "{choice.get("query")}" scored {choice.get("score", 0):.2f} ({sure})'
    if runner_up := choice.get("runnerUp"):
        score = choice.get("runnerUpScore")
        line += f"; runner-up {runner_up}" + (f" {score:.2f}" if score is not None else "")
    return line


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


@app.command()
def abort(
    name: str,
    reason: Annotated[str, typer.Option("--reason", help="why (kept in the audit trail)")] = "",
) -> None:
    """Stop the intent's run in flight and hold its plan until someone approves it again."""
    with client() as api:
        report = api.abort(name, reason)
    canceled = ", ".join(report["canceledRuns"]) or "no run was in flight"
    digest = report["digest"][:12]
    out.print(f"deploymentintent/{name} plan {digest} held; canceled: {canceled}", markup=False)
    out.print(f"run it again with: chiffonctl approve {name} --plan {digest}", markup=False)


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


# agents ----------------------------------------------------------------------------------------


def mebibytes(mib: float) -> str:
    """1536 → ``1.5Gi``, 512 → ``512Mi``: the units ``--min-free-vram`` takes."""
    return f"{mib / 1024:.1f}Gi" if mib >= 1024 else f"{mib:.0f}Mi"


def best_free_vram(capacity: dict[str, Any]) -> str:
    """The most free memory on one GPU, the figure the scheduler and ``--min-free-vram`` use."""
    gpus = capacity.get("gpus") or []
    return mebibytes(max(gpu["memoryFreeMib"] for gpu in gpus)) if gpus else "-"


def busy_text(capacity: dict[str, Any]) -> str:
    if not capacity.get("busy"):
        return "no"
    return f"yes ({capacity['busyReason']})" if capacity.get("busyReason") else "yes"


def labels_text(labels: dict[str, str] | None) -> str:
    # Sorted: PostgreSQL's JSONB does not keep the order the agent sent them in.
    return ",".join(f"{key}={value}" for key, value in sorted((labels or {}).items())) or "-"


def agent_row(item: dict[str, Any], wide: bool) -> list[str]:
    capacity = item.get("capacity") or {}
    row = [
        item["id"],
        item["kind"],
        str(item.get("online", False)),
        age(item.get("lastSeen")),
        f"{capacity['cpuLoadPercent']:.0f}%" if capacity else "-",
        best_free_vram(capacity),
    ]
    if wide:
        memory = (
            f"{mebibytes(capacity['memoryAvailableMib'])}/{mebibytes(capacity['memoryTotalMib'])}"
            if capacity
            else "-"
        )
        gpus = ", ".join(
            f"{gpu['index']}:{mebibytes(gpu['memoryFreeMib'])}/{mebibytes(gpu['memoryTotalMib'])}"
            for gpu in capacity.get("gpus") or []
        )
        row += [
            str(capacity.get("cpuCores", "-")),
            memory,
            gpus or "-",
            busy_text(capacity) if capacity else "-",
            labels_text(item.get("labels")),
        ]
    return row


def checked(option: str, parse: Callable[[str], object], text: str | None) -> None:
    """Check a flag with the server's own parser, so a typo fails before any request."""
    if text is None:
        return
    try:
        parse(text)
    except ValueError as exc:
        raise fail(f"{option}: {exc}", Exit.INVALID) from None


@get_app.command("agents")
def get_agents(
    agent_id: Annotated[str | None, typer.Argument(metavar="ID", help="one agent by id")] = None,
    output: Annotated[
        Output, typer.Option("--output", "-o", help="table, wide, yaml, json or name")
    ] = Output.TABLE,
    online: Annotated[
        bool | None,
        typer.Option("--online/--offline", help="only agents heartbeating now / only silent ones"),
    ] = None,
    kind: Annotated[AgentKind | None, typer.Option("--kind", help="infra or desktop")] = None,
    busy: Annotated[
        bool | None, typer.Option("--busy/--not-busy", help="only agents marked busy / not busy")
    ] = None,
    min_free_vram: Annotated[
        str | None,
        typer.Option("--min-free-vram", help="at least this much free on one GPU: 8Gi, 512Mi, 2048 (MiB)"),
    ] = None,
    selector: Annotated[
        str | None, typer.Option("--selector", "-l", help="label selector key=value,…")
    ] = None,
) -> None:
    """List agents: online state, last heartbeat, CPU load and free GPU memory."""
    checked("--min-free-vram", parse_mebibytes, min_free_vram)
    checked("--selector", parse_label_selector, selector)
    with client() as api:
        if agent_id:
            found = api.get_agent(agent_id)
            if found is None:
                raise fail(f"agent/{agent_id} not found", Exit.INVALID)
            items = [found]
        else:
            items = api.list_agents(
                online=online,
                kind=kind.value if kind else None,
                busy=busy,
                minFreeVram=min_free_vram,
                labelSelector=selector,
            )
    if output in (Output.TABLE, Output.WIDE):
        if not items:
            err.print("No agents found.")
            return
        headers = ["NAME", "KIND", "ONLINE", "LAST-SEEN", "LOAD", "FREE-VRAM"]
        if output is Output.WIDE:
            headers += ["CORES", "MEMORY", "GPUS", "BUSY", "LABELS"]
        print_table(headers, [agent_row(item, output is Output.WIDE) for item in items])
        return
    print_objects(items, output, single=agent_id is not None, name_of=lambda item: f"agent/{item['id']}")


get_app.command("agent", hidden=True)(get_agents)


def online_line(item: dict[str, Any]) -> str:
    seen = item.get("lastSeen")
    if item.get("online"):
        return f"True (last heartbeat {age(seen)} ago)"
    if not seen:
        return "False (never heard from)"
    deadline = int(OFFLINE_AFTER.total_seconds())
    return f"False (last heartbeat {age(seen)} ago at {seen}; offline after {deadline}s of silence)"


def capacity_lines(capacity: dict[str, Any] | None) -> list[str]:
    if not capacity:
        return ["Capacity:    <not reported yet>"]
    lines = [
        f"CPU:         {capacity['cpuCores']} cores, {capacity['cpuLoadPercent']:.0f}% load",
        f"Memory:      {mebibytes(capacity['memoryAvailableMib'])} free of "
        f"{mebibytes(capacity['memoryTotalMib'])}",
        f"Busy:        {busy_text(capacity)}",
    ]
    gpus = capacity.get("gpus") or []
    if not gpus:
        return [*lines, "GPUs:        <none>"]
    lines += ["GPUs:", f"  {'INDEX':<6} {'FREE':<9} {'TOTAL':<9} {'UTIL':<5} NAME"]
    for gpu in gpus:
        utilization = gpu.get("utilizationPercent")
        lines.append(
            f"  {gpu['index']:<6} {mebibytes(gpu['memoryFreeMib']):<9} {mebibytes(gpu['memoryTotalMib']):<9} "
            f"{'-' if utilization is None else f'{utilization:.0f}%':<5} {gpu.get('name') or '-'}"
        )
    return lines


@describe_app.command("agent")
def describe_agent(agent_id: str) -> None:
    """An agent's labels, liveness and the capacity its last heartbeat reported."""
    with client() as api:
        item = api.get_agent(agent_id)
    if item is None:
        raise fail(f"agent/{agent_id} not found", Exit.INVALID)
    lines = [
        f"Name:        {item['id']}",
        f"Kind:        {item['kind']}",
        f"Version:     {item.get('version') or '-'}",
        f"Labels:      {labels_text(item.get('labels'))}",
        f"Online:      {online_line(item)}",
        *capacity_lines(item.get("capacity")),
    ]
    for line in lines:
        out.print(line, markup=False)


# logs ------------------------------------------------------------------------------------------

RECONNECT_ATTEMPTS = 10
RECONNECT_DELAY_SECONDS = 1.0
INTENT_PREFIXES = ("intent", "intents", "deploymentintent")


def find_run(api: ChiffonClient, reference: str) -> dict[str, Any]:
    """A run by id (or ``run/ID``), or ``intent/NAME``: that intent's newest run."""
    kind, slash, name = reference.partition("/")
    if slash and kind.lower() in INTENT_PREFIXES:
        if api.get_intent(name) is None:
            raise fail(f"deploymentintent/{name} not found", Exit.INVALID)
        runs = api.list_runs(name, limit=1)
        if not runs:
            raise fail(f"deploymentintent/{name} has no runs yet", Exit.INVALID)
        return runs[0]
    if slash and kind.lower() not in ("run", "runs"):
        raise fail(f"{reference!r}: give a run id, run/ID or intent/NAME")
    run_id = name if slash else reference
    found = api.get_run(run_id)
    if found is None:
        raise fail(f"run {run_id} not found", Exit.INVALID)
    return found


def write_output(event: dict[str, Any]) -> None:
    """What ansible printed for the event (task banners, ``changed: [host]`` lines, failures).

    Events it printed nothing for (a loop's summary after its items) print nothing here either.
    """
    output = str(event.get("output") or "")
    if output.strip():
        # Flushed per event: `logs -f | grep …` should see each line as it happens.
        sys.stdout.write(output + "\n")
        sys.stdout.flush()


def run_summary(run: dict[str, Any]) -> str:
    rc = f" (rc {run['rc']})" if run.get("rc") is not None else ""
    error = f": {run['error']}" if run.get("error") else ""
    return f"run {run['id']} {run['status']}{rc}{error}"


def follow_output(api: ChiffonClient, run: dict[str, Any]) -> dict[str, Any]:
    """Print the run's output as it is stored; return the run once it has finished.

    A stream that breaks off (the server restarting) is resumed after the last
    event printed, so nothing is printed twice or skipped.
    """
    import time

    after, failures, shown_status = -1, 0, run["status"]
    while True:
        try:
            for message in api.follow_run(run["id"], after):
                if message.event == "output":
                    write_output(message.data)
                    after = message.id if message.id is not None else after
                    failures = 0
                elif message.event == "run" and message.data["status"] != shown_status:
                    shown_status = message.data["status"]
                    agent = f" on {message.data['agentId']}" if message.data.get("agentId") else ""
                    err.print(f"run {run['id']} {shown_status}{agent}", markup=False)
                elif message.event == "end":
                    return message.data
                elif message.event == "error":
                    raise fail(str(message.data.get("message", "the stream failed")))
            lost = f"the server closed the stream of run {run['id']} before it finished"
        except UnreachableError as exc:
            lost = str(exc)
        failures += 1
        if failures > RECONNECT_ATTEMPTS:
            raise fail(f"{lost}; gave up after {RECONNECT_ATTEMPTS} reconnects")
        if failures == 1:
            err.print(f"note: {lost}; reconnecting", markup=False)
        time.sleep(RECONNECT_DELAY_SECONDS)


@app.command()
def logs(
    run: Annotated[str, typer.Argument(help="a run id (see `get runs`), or intent/NAME for its latest run")],
    follow: Annotated[
        bool,
        typer.Option("--follow", "-f", help="stream output until the run finishes; exit 0 if it succeeded"),
    ] = False,
) -> None:
    """Print a run's output (ansible's task, host and status lines, as stored); -f follows it live."""
    with client() as api:
        found = find_run(api, run)
        if not follow:
            print_stored_output(api, found)
            return
        finished = follow_output(api, found)
    err.print(run_summary(finished), markup=False)
    if finished["status"] != RunStatus.SUCCESSFUL:
        raise typer.Exit(Exit.INVALID)


def print_stored_output(api: ChiffonClient, run: dict[str, Any]) -> None:
    for event in api.list_run_events(run["id"]):
        write_output(event)
    if RunStatus(run["status"]).finished:
        err.print(run_summary(run), markup=False)
    else:
        err.print(f"run {run['id']} is {run['status']}; follow it with: chiffonctl logs {run['id']} -f")


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


# Command groups in their own modules register themselves on `app` when imported.
from chiffon.api import (  # noqa: E402, F401
    ctl_audit,
    ctl_chat,
    ctl_history,
    ctl_postmortem,
    ctl_suggestions,
    ctl_templates,
)
