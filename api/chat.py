"""The chat service: a request in words → a proposal a person confirms → a commit (DESIGN §6, §7).

``propose`` compiles the request (LLM or offline rules, see
``chiffon.agents.compiler``), plans every resulting intent with the same
planner the controller uses — so the preview's steps, risk, duration and
digest are what the controller will compute — and stores the proposal:
the exact YAML that a confirm commits, and the preview in plain words.
Nothing touches git until ``confirm``, which commits that YAML through the
intents writer as the person who confirmed it. A proposal is decided once:
confirming or discarding it twice is a conflict, and a proposal to modify
an intent that changed since is refused rather than overwriting the change.

The API routes and ``chiffonctl chat`` both go through here.
"""

from __future__ import annotations

import asyncio
import difflib
import secrets
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from chiffon.agents.catalog.discovery import Entry
from chiffon.agents.catalog.index import Catalog, catalog_from_settings
from chiffon.agents.catalog.resolver import CatalogResolver
from chiffon.agents.compiler.compiler import Compilation, Compiler, IntentChange
from chiffon.ansible_cli import AnsibleCliError
from chiffon.controllers.intents_writer import IntentsWriter, SubmittedFile
from chiffon.controllers.planner import PlanError, Planner
from chiffon.controllers.progress import duration_history
from chiffon.gitrepo import Identity
from chiffon.resources import AuditEvent, DeploymentIntent, Outcome, Plan
from chiffon.resources.yamlio import dump_yaml
from chiffon.settings import Settings
from chiffon.store import ChatProposal, Store

__all__ = ["ChatError", "ChatService", "ConflictError", "chat_service"]

MAX_DOCUMENTS_BYTES = 256 * 1024


class ChatError(ValueError):
    """The request cannot be compiled; ``problems`` says why, one sentence each."""

    def __init__(self, detail: str, problems: Sequence[str] = ()) -> None:
        self.detail = detail
        self.problems = list(problems)
        super().__init__(detail)


class ConflictError(RuntimeError):
    """The proposal was already decided, or what it modifies changed since."""


@dataclass
class ChatService:
    settings: Settings
    store: Store
    writer: IntentsWriter
    catalog: Catalog
    planner: Planner
    compiler: Compiler

    # -- propose ------------------------------------------------------------------------------

    async def propose(
        self,
        message: str,
        actor: Identity,
        *,
        conversation: str | None = None,
        modify: str | None = None,
        priority: str | None = None,
    ) -> ChatProposal:
        from chiffon.agents.compiler.draft import DraftError

        existing = {intent.metadata.name: intent for intent in await self.store.list_intents()}
        try:
            compiled = await self.compiler.compile(
                message, existing=existing, modify=modify, priority=priority
            )
        except DraftError as error:
            problems = error.problems if len(error.problems) > 1 else []
            raise ChatError(_first_sentence(error.problems), problems) from None
        previews = await asyncio.gather(*(self._preview(change) for change in compiled.changes))
        proposal = ChatProposal(
            id=f"p-{secrets.token_hex(6)}",
            conversation=conversation or f"c-{secrets.token_hex(6)}",
            created_at=datetime.now(UTC),
            actor=str(actor),
            request=message,
            documents="".join(f"---\n{_yaml(change.intent)}" for change in compiled.changes),
            detail=_detail(compiled, list(previews)),
            status="proposed",
        )
        if len(proposal.documents.encode()) > MAX_DOCUMENTS_BYTES:
            raise ChatError("the proposal is too large to commit; ask for fewer intents at once")
        await self.store.save_proposal(proposal)
        await self._audit(actor, "chat.propose", proposal, Outcome.SUCCESS)
        return proposal

    async def _preview(self, change: IntentChange) -> dict[str, Any]:
        intent = change.intent
        plan: Plan | None = None
        problems: list[str] = []
        try:
            plan = await self.planner.plan(
                intent,
                revision=None,
                infra_revision=None,
                history=await self._history(change),
                now=datetime.now(UTC),
            )
        except (PlanError, AnsibleCliError) as error:
            problems.append(str(error))
        return preview_of(intent, plan, problems, self.catalog.entries())

    async def _history(self, change: IntentChange) -> Mapping[str, Sequence[float]]:
        """Past durations of this intent's steps (a new intent has none)."""
        base = change.base
        plan = base.status.plan if base is not None and base.status is not None else None
        if plan is None:
            return {}
        targets = {step.name: step.playbook or step.role or "" for step in plan.steps}
        runs = await self.store.list_runs(intent=base.metadata.name if base else None, limit=200)
        return duration_history(runs, targets)

    # -- decide -------------------------------------------------------------------------------

    async def confirm(self, proposal_id: str, actor: Identity) -> ChatProposal:
        proposal = await self._proposal(proposal_id)
        await self._check_bases(proposal)
        names = [item["name"] for item in proposal.detail.get("intents", [])]
        report = await self.writer.apply(
            [SubmittedFile(f"chat proposal {proposal.id}", proposal.documents.encode())],
            actor,
            message=f"Chat: {proposal.request[:500]}\n\nProposal {proposal.id} for {', '.join(names)}.",
        )
        if not await self.store.decide_proposal(proposal.id, "committed", revision=report.revision):
            raise ConflictError(f"proposal {proposal.id} was decided by someone else meanwhile")
        decided = await self._proposal(proposal.id, any_status=True)
        await self._audit(actor, "chat.confirm", decided, Outcome.SUCCESS)
        return decided

    async def discard(self, proposal_id: str, actor: Identity) -> ChatProposal:
        proposal = await self._proposal(proposal_id)
        if not await self.store.decide_proposal(proposal.id, "discarded"):
            raise ConflictError(f"proposal {proposal.id} was decided by someone else meanwhile")
        decided = await self._proposal(proposal.id, any_status=True)
        await self._audit(actor, "chat.discard", decided, Outcome.SUCCESS)
        return decided

    async def conversation(self, conversation: str) -> list[ChatProposal]:
        return await self.store.conversation(conversation)

    async def get(self, proposal_id: str) -> ChatProposal:
        return await self._proposal(proposal_id, any_status=True)

    async def _proposal(self, proposal_id: str, *, any_status: bool = False) -> ChatProposal:
        proposal = await self.store.get_proposal(proposal_id)
        if proposal is None:
            raise LookupError(f"proposal {proposal_id} not found")
        if not any_status and proposal.status != "proposed":
            raise ConflictError(f"proposal {proposal_id} is already {proposal.status}")
        return proposal

    async def _check_bases(self, proposal: ChatProposal) -> None:
        """Refuse to overwrite an intent that changed after the proposal was made."""
        for item in proposal.detail.get("intents", []):
            current = await self.store.get_intent(item["name"])
            generation = current.metadata.generation if current is not None else None
            if generation != item.get("generation"):
                now = f"generation {generation}" if generation else "gone"
                raise ConflictError(
                    f"deploymentintent/{item['name']} changed since this proposal (it is now {now}); "
                    "ask again to get a proposal from what is there now"
                )

    async def _audit(self, actor: Identity, action: str, proposal: ChatProposal, outcome: Outcome) -> None:
        names = [item["name"] for item in proposal.detail.get("intents", [])]
        services = {item.get("service") for item in proposal.detail.get("intents", [])}
        await self.store.record_audit(
            AuditEvent(
                time=datetime.now(UTC),
                actor=str(actor),
                action=action,
                resource=", ".join(f"DeploymentIntent/{n}" for n in names)[:300] or None,
                service=next(iter(services)) if len(services) == 1 else None,
                outcome=outcome,
                revision=proposal.revision,
                details={
                    "proposal": proposal.id,
                    "conversation": proposal.conversation,
                    "request": proposal.request[:2000],
                    "compiler": proposal.detail.get("compiler", {}),
                },
            )
        )


# =========================================================================== wire form


def proposal_to_wire(proposal: ChatProposal) -> dict[str, Any]:
    return {
        "id": proposal.id,
        "conversation": proposal.conversation,
        "status": proposal.status,
        "request": proposal.request,
        "actor": proposal.actor,
        "documents": proposal.documents,
        **proposal.detail,
        "revision": proposal.revision,
        "createdAt": proposal.created_at.isoformat(),
        "decidedAt": proposal.decided_at.isoformat() if proposal.decided_at else None,
    }


def _detail(compiled: Compilation, previews: list[dict[str, Any]]) -> dict[str, Any]:
    actions = {change.action for change in compiled.changes}
    return {
        "action": "modify" if actions == {"modify"} else "create",
        "compiler": {"engine": compiled.engine, "model": compiled.model, "reason": compiled.reason},
        "intents": [
            {
                "name": change.intent.metadata.name,
                "service": change.intent.service,
                "action": change.action,
                "generation": change.base.metadata.generation if change.base is not None else None,
                "diff": _diff(change),
            }
            for change in compiled.changes
        ],
        "preview": previews,
        "warnings": list(compiled.warnings),
    }


def _yaml(intent: DeploymentIntent) -> str:
    metadata: dict[str, Any] = {"name": intent.metadata.name}
    if intent.metadata.labels:
        metadata["labels"] = dict(intent.metadata.labels)
    if intent.metadata.annotations:
        metadata["annotations"] = dict(intent.metadata.annotations)
    spec = intent.spec.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    return dump_yaml(
        {"apiVersion": intent.api_version, "kind": intent.kind, "metadata": metadata, "spec": spec}
    )


def _diff(change: IntentChange) -> str | None:
    if change.base is None:
        return None
    before, after = _yaml(change.base).splitlines(), _yaml(change.intent).splitlines()
    name = change.intent.metadata.name
    return "\n".join(
        difflib.unified_diff(before, after, f"{name} (now)", f"{name} (proposed)", lineterm="", n=2)
    )


def _first_sentence(problems: Sequence[str]) -> str:
    return problems[0] if len(problems) == 1 else f"{len(problems)} problems: {problems[0]}"


# =========================================================================== plain words


def preview_of(
    intent: DeploymentIntent, plan: Plan | None, problems: list[str], entries: Sequence[Entry]
) -> dict[str, Any]:
    """What ``intent`` will do, in words a person who never read Ansible can follow."""
    spec = intent.spec
    hosts = spec.limit or "the hosts its playbooks name"
    described = {(e.playbook, e.role): e for e in entries if e.runnable}
    steps = []
    for step in spec.steps:
        entry = described.get((step.playbook, step.role))
        runs = step.playbook or f"role {step.role}" if (step.playbook or step.role) else f"goal: {step.goal}"
        steps.append({"name": step.name, "does": _does(entry, runs), "runs": runs, "hosts": hosts})
    estimate = plan.estimated_duration_seconds if plan else None
    resources = spec.resources.model_dump(by_alias=True)
    return {
        "intent": intent.metadata.name,
        "summary": _summary(intent, steps),
        "steps": steps,
        "estimatedSeconds": estimate,
        "estimateText": duration_words(estimate),
        "risk": plan.risk.value if plan else None,
        "resources": resources,
        "resourcesText": resources_words(resources),
        "approval": spec.approval.value,
        "dependsOn": list(spec.depends_on),
        "digest": plan.digest if plan else None,
        "problems": problems,
    }


def _does(entry: Entry | None, runs: str) -> str:
    text = (entry.description if entry else "") or ""
    sentence = text.split(". ")[0].strip().rstrip(".")
    return sentence + "." if sentence else f"Runs {runs}."


def _summary(intent: DeploymentIntent, steps: list[dict[str, Any]]) -> str:
    count = len(steps)
    where = f" on {intent.spec.limit}" if intent.spec.limit else ""
    order = ", then ".join(step["runs"].rsplit("/", 1)[-1] for step in steps)
    after = f", after {', '.join(intent.spec.depends_on)} is ready" if intent.spec.depends_on else ""
    gate = (
        "runs once you approve the plan"
        if intent.spec.approval.value == "Manual"
        else "runs without approval"
    )
    steps_word = "step" if count == 1 else "steps"
    return f"{intent.service}: {count} {steps_word}{where} ({order}){after}; it {gate}."


def duration_words(seconds: float | None) -> str:
    if seconds is None:
        return "unknown: these playbooks have not run here before"
    if seconds < 90:
        return f"about {max(1, round(seconds))} seconds"
    if seconds < 5400:
        return f"about {round(seconds / 60)} minutes"
    return f"about {seconds / 3600:.1f} hours"


def resources_words(resources: Mapping[str, Any]) -> str:
    parts = []
    cores = resources.get("cpuCores") or 0
    if cores:
        parts.append(f"{cores:g} CPU core{'s' if cores != 1 else ''}")
    if resources.get("memoryMiB"):
        parts.append(f"{resources['memoryMiB']} MiB memory")
    if resources.get("gpuMemoryMiB"):
        parts.append(f"{resources['gpuMemoryMiB']} MiB of GPU memory")
    return ", ".join(parts) or "no reserved capacity"


# =========================================================================== one per process


# Per store (weakly: a closed store's service goes with it) and per homelab-infra checkout.
_services: weakref.WeakKeyDictionary[Store, dict[Path, ChatService]] = weakref.WeakKeyDictionary()


def chat_service(settings: Settings, store: Store, writer: IntentsWriter) -> ChatService:
    """The process's chat service for this store and homelab-infra checkout (caches are shared)."""
    root = settings.resolved_infra_repo
    services = _services.setdefault(store, {})
    if root not in services:
        catalog = catalog_from_settings(settings, root)
        planner = Planner(root, goals=CatalogResolver(catalog))
        router = _router(settings, store)
        compiler = Compiler(catalog, router=router, default_limit=settings.compiler_default_limit)
        services[root] = ChatService(settings, store, writer, catalog, planner, compiler)
    return services[root]


def _router(settings: Settings, store: Store) -> Any:
    from chiffon.agents.llm import LlmConfig, LlmRouter

    config = LlmConfig.from_settings(settings)
    return LlmRouter(config, store) if config.configured else None
