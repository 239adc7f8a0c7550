"""``chiffonctl chat "…"``: the chat page's conversation, in a terminal.

1. The request goes to ``POST /api/v1/chat``; the proposal is printed — what
   each intent will do in plain words, its estimated duration, resources and
   risk, then the YAML that would be committed.
2. It is committed only after you confirm (``--yes`` skips the question; off
   a terminal, without ``--yes``, nothing is committed and the proposal id is
   printed).
3. Unless ``--no-follow``: it waits for the controller's plan, asks you to
   approve its digest (``--approve`` approves without asking), streams every
   run's output as it happens, and ends on the summary with the audit link.

Exit codes: 0 done (or committed and left waiting for someone else's
approval), 1 the request could not be compiled, was not committed, or its
runs failed; 2 connection or server errors.
"""

from __future__ import annotations

import sys
import time
from typing import Annotated, Any

import typer

from chiffon.api.client import ChiffonClient
from chiffon.api.ctl import Exit, app, client, condition, err, fail, follow_output, out, run_summary, state

PLAN_TIMEOUT_SECONDS = 120.0
POLL_SECONDS = 0.5


def chat(
    message: Annotated[str, typer.Argument(help='what you want, e.g. "deploy uptime kuma on unraid"')],
    modify: Annotated[
        str | None, typer.Option("--modify", "-m", help="change this existing intent instead of adding one")
    ] = None,
    priority: Annotated[
        str | None, typer.Option("--priority", help="Normal or High (High may use the external model)")
    ] = None,
    conversation: Annotated[
        str | None, typer.Option("--conversation", help="continue a conversation")
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="commit without asking")] = False,
    approve: Annotated[
        bool, typer.Option("--approve", help="approve the resulting plan without asking")
    ] = False,
    follow: Annotated[
        bool,
        typer.Option("--follow/--no-follow", help="after committing: approve, watch the runs, summarize"),
    ] = True,
) -> None:
    """Say what you want; see the proposed intents and their plan; confirm, approve and watch them run."""
    if priority is not None and priority not in ("Normal", "High"):
        raise fail(f"--priority {priority!r}: use Normal or High", Exit.INVALID)
    with client() as api:
        proposal = api.chat(message, conversation=conversation, intent=modify, priority=priority)
        print_proposal(proposal)
        if not confirmed(yes, "Commit this to the intents repo?"):
            note = f"not committed (proposal {proposal['id']}); ask again with --yes to commit"
            out.print(note, markup=False)
            raise typer.Exit(Exit.INVALID)
        committed = api.decide_proposal(proposal["id"], "confirm")
        out.print(f"committed {str(committed.get('revision') or '')[:12]}", markup=False)
        if not follow:
            return
        names = [item["name"] for item in committed.get("intents", [])]
        failed = [name for name in names if not see_through(api, name, approve)]
    if failed:
        raise typer.Exit(Exit.INVALID)


def confirmed(yes: bool, question: str) -> bool:
    if yes:
        return True
    if not sys.stdin.isatty():
        err.print("not a terminal: pass --yes to commit without asking", markup=False)
        return False
    return typer.confirm(question, default=False)


# =========================================================================== printing


def print_proposal(proposal: dict[str, Any]) -> None:
    engine = proposal.get("compiler", {})
    model = f" ({engine['model']})" if engine.get("model") else ""
    out.print(f"Proposal {proposal['id']}: compiled {engine.get('engine', '?')}{model}", markup=False)
    for preview, intent in zip(proposal.get("preview", []), proposal.get("intents", []), strict=False):
        print_preview(preview, intent)
    for warning in proposal.get("warnings", []):
        err.print(f"note: {warning}", markup=False)
    out.print("\n" + proposal.get("documents", ""), markup=False)


def print_preview(preview: dict[str, Any], intent: dict[str, Any]) -> None:
    verb = "change" if intent.get("action") == "modify" else "new"
    out.print(f"\n{verb} deploymentintent/{preview['intent']}: {preview['summary']}", markup=False)
    for number, step in enumerate(preview.get("steps", []), start=1):
        out.print(
            f"  {number}. {step['name']}: {step['does']} ({step['runs']} on {step['hosts']})", markup=False
        )
    risk = preview.get("risk") or "unknown"
    out.print(
        f"  duration {preview.get('estimateText')}; needs {preview.get('resourcesText')}; risk {risk}",
        markup=False,
    )
    for problem in preview.get("problems", []):
        err.print(f"  problem: {problem}", markup=False)
    if intent.get("diff"):
        out.print(intent["diff"], markup=False)


# =========================================================================== following


def see_through(api: ChiffonClient, name: str, approve: bool) -> bool:
    """Plan → approval → runs → summary for one intent; True unless it failed or stalled."""
    item = wait_for_plan(api, name)
    if item is None:
        return False
    if condition(item, "Approved").get("status") != "True":
        digest = item["status"]["plan"]["digest"]
        if not (approve or ask_approval(name, digest)):
            out.print(f"waiting for approval: chiffonctl approve {name} --plan {digest[:12]}", markup=False)
            return True
        api.decide(name, "approve", plan=digest, reason="approved in chiffonctl chat")
        out.print(f"deploymentintent/{name} plan {digest[:12]} approved", markup=False)
    ready = follow_runs(api, name, item["metadata"]["generation"])
    print_summary(api, name)
    return ready


def ask_approval(name: str, digest: str) -> bool:
    if not sys.stdin.isatty():
        return False
    return typer.confirm(f"Approve plan {digest[:12]} of deploymentintent/{name}?", default=False)


def wait_for_plan(api: ChiffonClient, name: str) -> dict[str, Any] | None:
    """The intent once the controller planned its current generation; None (and why) if it cannot be."""
    deadline = time.monotonic() + PLAN_TIMEOUT_SECONDS
    while True:
        item = api.get_intent(name) or {}
        generation = item.get("metadata", {}).get("generation")
        planned = condition(item, "Planned")
        if planned.get("observedGeneration") == generation and planned.get("status") == "True":
            plan = item["status"]["plan"]
            out.print(
                f"planned deploymentintent/{name}: {len(plan['steps'])} step(s), plan {plan['digest'][:12]}, "
                f"risk {plan.get('risk', '?')}",
                markup=False,
            )
            return item
        if planned.get("observedGeneration") == generation and planned.get("status") == "False":
            err.print(f"deploymentintent/{name} cannot be planned: {planned.get('message')}", markup=False)
            return None
        if time.monotonic() >= deadline:
            blocked = (item.get("status") or {}).get("blockedBy") or "no plan yet"
            err.print(f"deploymentintent/{name}: gave up waiting for a plan: {blocked}", markup=False)
            return None
        time.sleep(POLL_SECONDS)


def follow_runs(api: ChiffonClient, name: str, generation: int) -> bool:
    """Stream each run of this generation as it starts, until Ready or a failure a person must fix."""
    followed: set[str] = set()
    last_blocked = None
    while True:
        item = api.get_intent(name) or {}
        ready = condition(item, "Ready")
        if ready.get("observedGeneration") == generation and ready.get("status") == "True":
            out.print(f"deploymentintent/{name} is Ready", markup=False)
            return True
        stalled = condition(item, "Stalled")
        if stalled.get("status") == "True":
            err.print(f"deploymentintent/{name} stalled: {stalled.get('message')}", markup=False)
            return False
        run = next_run(api, name, generation, followed)
        if run is not None:
            followed.add(run["id"])
            err.print(f"--- step {run['step']} (run {run['id']})", markup=False)
            finished = follow_output(api, run)
            err.print(run_summary(finished), markup=False)
            continue
        blocked = (item.get("status") or {}).get("blockedBy")
        if blocked and blocked != last_blocked:
            err.print(f"waiting: {blocked}", markup=False)
            last_blocked = blocked
        time.sleep(POLL_SECONDS)


def next_run(api: ChiffonClient, name: str, generation: int, followed: set[str]) -> dict[str, Any] | None:
    runs = [
        run
        for run in api.list_runs(name, limit=20)
        if run.get("generation") == generation and run["id"] not in followed and not run.get("checkMode")
    ]
    return min(runs, key=lambda run: (run.get("createdAt") or "", run["id"])) if runs else None


def print_summary(api: ChiffonClient, name: str) -> None:
    summary = api.intent_summary(name)
    if summary is None:
        return
    out.print(f"\nSummary of deploymentintent/{name}:", markup=False)
    for step in summary.get("steps", []):
        seconds = step.get("durationSeconds")
        took = f" in {seconds:.1f}s" if isinstance(seconds, (int, float)) else ""
        out.print(f"  {step['name']}: {step['status']}{took}", markup=False)
    total = summary.get("totalSeconds")
    if isinstance(total, (int, float)):
        out.print(f"  total {total:.1f}s", markup=False)
    for suggestion in summary.get("suggestions", [])[:5]:
        out.print(f"  suggestion: {suggestion.get('reasoning') or suggestion}", markup=False)
    audit = summary.get("audit") or {}
    if audit.get("href"):
        out.print(f"  audit trail: {state.server.rstrip('/')}{audit['href']}", markup=False)
    out.print(f"  or: chiffonctl audit --intent {name} -o wide", markup=False)


app_command = app.command("chat")(chat)
