"""100 concurrent API clients against a real ``chiffon api`` on PostgreSQL for 60 s: latency and errors.

    .venv/bin/python -m bench.api_load [--clients 100] [--seconds 60] [--quick] [--intents 200]
                                       [--think MS] [--no-token] [--json PATH]

``--quick`` (20 clients, 10 s) is the CI smoke run.

* **Database.** A PostgreSQL database of its own, ``chiffon_bench_<hex>``, on
  the bench's server (``$CHIFFON_BENCH_POSTGRES_URL``, else
  ``$CHIFFON_TEST_POSTGRES_URL``, else ``postgres@127.0.0.1:5432``), migrated
  by :meth:`Store.migrate`, dropped afterwards (``WITH (FORCE)``).
* **State.** ``--intents`` (200) intents, 50 services on four sites, one to
  three steps over the bundled example's playbooks, are committed to a local
  intents repo and read into the store by a ``GitSource.sync()``, as the
  controller reads them. Then what a controller and agents would have left
  behind is written through the ``Store``: a status with conditions and a plan
  for each (55 % applied, 15 % awaiting approval, 10 % failed, 5 % running,
  5 % waiting for capacity, 5 % drifted, 5 % with no plan), older plans, their
  runs (retries included) with 20-50 ansible events each, approvals, audit
  events over 30 days (plans, approvals, run results, drift, denied calls,
  agents going offline), six agents and a few open suggestions. The seed is
  fixed (``random.Random(7)``), so every run serves the same state.
* **Server.** The ``chiffon api`` console script, as it is deployed in the
  distributed mode (one process; no controller), on a free port with that
  database, the intents repo, ``examples/homelab-infra`` as the infra repo and
  a temporary ``CHIFFON_HOME``. Each client sends an admin bearer token of its
  own, made with ``chiffon.api.auth.create_token`` (``--no-token``: the open
  local server), so every request resolves its token as on a deployed server
  and per-caller limits (the chat's) apply per client. The bench waits for
  ``/api/v1/healthz``, then until the process is idle (the chat compiler
  warms its catalog in a thread at start); then one client makes each kind of
  request 11 times in a row (4 with ``--quick``): the first warms caches, the
  median of the others is reported as *alone*, what it costs uncontended.
* **Clients.** ``--clients`` ``httpx.AsyncClient`` instances in this process,
  one keep-alive connection each (opened before the window, uncounted), each
  in a closed loop with no pause between requests (``--think MS`` adds one):
  the worst case of that many busy clients, not a model of people. Each
  request is drawn from a fixed mix (:data:`MIX`, weights in %), modelled on
  what the chat page and ``chiffonctl`` ask: the intent list (the page polls
  it every 3 s), one intent, its runs, a run, a run's events (logs), its
  summary, the audit by service / failures / since a day / resource, the
  agents, an unknown intent (404 expected), and writes: approving a plan that
  awaits approval, naming its digest, and a chat request (offline compiler
  and plan preview, no LLM: none is configured; ansible's syntax check of a
  playbook runs once, then is cached by content).
* **Measured.** Each request's latency (``perf_counter`` around the call,
  body read); per endpoint and overall: count, p50, p95, p99, max;
  throughput (completed requests / window); errors: any status the call
  does not expect (a 5xx, a 4xx on a valid call) and any exception or timeout
  (30 s). Requests started in the window are counted; those in flight at its
  end are awaited. Beside them: the API process's CPU (% of one core) and
  peak RSS, this process's CPU (if it nears 100 % the client, not the server,
  is the limit), the machine's CPU, the PostgreSQL connections of the bench
  database by state (sampled every second from ``pg_stat_activity``), and any
  warnings or errors the server logged.

Results go to ``bench/results/api-load-latest.json`` (or ``--json``). Exit
status: 0 no errors, 1 errors, 2 could not be measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import itertools
import os
import random
import shutil
import socket
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.agent_support import (
    BIN,
    MB,
    ProcessMeter,
    clean_environment,
    log_tail,
    start_process,
    stop_process,
)
from bench.common import RESULTS_DIR, ROOT, Timing, _guarded, percentile, where_written, write_results
from bench.heartbeat_load import create_database, drop_database
from chiffon.controllers.source import GitSource, SourceConfig
from chiffon.gitrepo import GitRepo
from chiffon.resources import (
    Agent,
    AgentKind,
    Approval,
    AuditEvent,
    Capacity,
    Condition,
    ConditionStatus,
    Decision,
    DeploymentIntent,
    DriftChange,
    DriftStatus,
    GpuInfo,
    IntentStatus,
    Outcome,
    Plan,
    PlannedStep,
    Reason,
    Risk,
    Run,
    RunStatus,
    drift_run_id,
    run_id,
)
from chiffon.resources.intent import RunSummary
from chiffon.resources.messages import AnsibleEvent
from chiffon.resources.run import HostStats, ResourceUsage
from chiffon.store import Store

RESULTS = RESULTS_DIR / "api-load-latest.json"
CLIENTS, SECONDS = 100, 60.0
QUICK_CLIENTS, QUICK_SECONDS = 20, 10.0
INTENTS = 200
REQUEST_TIMEOUT = 30.0
START_TIMEOUT = 120.0
IDLE_CPU_PERCENT = 10.0
SEED = 7
PERSON = "Alice Admin <alice@example.com>"

SERVICES = (
    "uptime-kuma", "pihole", "portainer", "traefik", "ollama", "grafana", "prometheus", "loki",
    "jellyfin", "immich", "nextcloud", "vaultwarden", "gitea", "home-assistant", "mosquitto",
    "zigbee2mqtt", "frigate", "paperless", "syncthing", "restic", "minio", "postgres", "redis",
    "wireguard", "adguard", "unbound", "nginx", "caddy", "authelia", "keycloak", "homepage",
    "heimdall", "sonarr", "radarr", "prowlarr", "qbittorrent", "navidrome", "audiobookshelf",
    "calibre-web", "freshrss", "miniflux", "wallabag", "bookstack", "outline", "n8n", "node-red",
    "netdata", "speedtest", "watchtower", "system-update",
)  # fmt: skip
SITES = ("nas", "pi", "desktop", "vps")
GPU_SERVICES = {"ollama", "immich", "frigate", "jellyfin"}
DEPLOY_PLAYBOOKS = (
    "ansible/playbooks/kuma-deployment.yml",
    "ansible/playbooks/pihole-deployment.yml",
    "ansible/playbooks/portainer-deployment.yml",
    "ansible/playbooks/traefik-deployment.yml",
    "ansible/playbooks/ollama-deployment.yml",
    "ansible/playbooks/reverse-proxy.yml",
    "ansible/playbooks/system-update.yml",
)
EXTRA_STEPS = (
    ("configure", "ansible/playbooks/kuma-config-update.yml"),
    ("backup", "ansible/playbooks/legacy-backup.yml"),
)
# What the controller leaves an intent in, and how many are so (weights).
STATES = {
    "applied": 55,
    "awaiting": 15,
    "failed": 10,
    "running": 5,
    "capacity": 5,
    "drifted": 5,
    "no-plan": 5,
}
AGENTS = (
    ("infra-nas", AgentKind.INFRA, False, True),
    ("infra-vps", AgentKind.INFRA, False, True),
    ("desktop-gaming", AgentKind.DESKTOP, True, True),
    ("desktop-workstation", AgentKind.DESKTOP, True, True),
    ("desktop-htpc", AgentKind.DESKTOP, False, True),
    ("desktop-laptop", AgentKind.DESKTOP, False, False),
)
CHAT_REQUESTS = (
    "deploy uptime kuma on localhost",
    "install pihole on localhost",
    "set up portainer on localhost",
    "run traefik as the reverse proxy on localhost",
)

# The request mix: label -> weight (%). Labels name the route and what varies.
MIX = {
    "GET /intents": 8,
    "GET /intents/{name}": 20,
    "GET /intents/{name}/summary": 8,
    "GET /runs?intent=": 11,
    "GET /runs": 4,
    "GET /runs/{id}": 6,
    "GET /runs/{id}/events": 13,
    "GET /audit?service=": 6,
    "GET /audit?outcome=failure": 4,
    "GET /audit?since=": 4,
    "GET /audit?resource=": 5,
    "GET /agents": 6,
    "GET /intents/{unknown} (404)": 1,
    "POST /intents/{name}/approve": 3,
    "POST /chat": 1,
}


# Seeding ---------------------------------------------------------------------------------------


@dataclass
class Seeded:
    """What the clients ask about, and how much was written."""

    intents: list[str] = field(default_factory=list)
    digests: dict[str, str] = field(default_factory=dict)  # intent -> current plan digest
    awaiting: dict[str, str] = field(default_factory=dict)  # intent -> digest awaiting approval
    services: list[str] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    agents: list[str] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)


def intent_document(name: str, service: str, site: str, rng: random.Random) -> bytes:
    playbook = DEPLOY_PLAYBOOKS[SERVICES.index(service) % len(DEPLOY_PLAYBOOKS)]
    steps = [
        f"    - name: deploy\n      playbook: {playbook}\n      vars: {{port: {rng.randrange(2000, 9000)}}}\n"
    ]
    extra = rng.choices((0, 1, 2), weights=(60, 30, 10))[0]
    for step, path in EXTRA_STEPS[:extra]:
        steps.append(f"    - name: {step}\n      playbook: {path}\n")
    approval = "Manual" if rng.random() < 0.4 else "Auto"
    lines = [
        "apiVersion: chiffon.dev/v1alpha1",
        "kind: DeploymentIntent",
        "metadata:",
        f"  name: {name}",
        "  labels:",
        f"    service: {service}",
        f"    site: {site}",
        f"    tier: {rng.choice(('core', 'media', 'tools'))}",
        "  annotations:",
        f'    chiffon.dev/request: "Run {service} on the {site} and keep it healthy"',
        "spec:",
        f"  service: {service}",
        "  steps:",
        "".join(steps).rstrip("\n"),
        "  inventory: ansible/inventory/hosts.yml",
        "  limit: localhost",
        f"  approval: {approval}",
    ]
    if service in GPU_SERVICES:
        lines += ["  resources:", "    gpuMemoryMiB: 8192", "    cpuCores: 4"]
    if rng.random() < 0.3:
        lines += ["  driftDetection:", "    interval: 6h", "    mode: Report"]
    return ("\n".join(lines) + "\n").encode()


def intent_documents(count: int, rng: random.Random) -> dict[str, bytes]:
    files = {}
    for index in range(count):
        service, site = SERVICES[index % len(SERVICES)], SITES[(index // len(SERVICES)) % len(SITES)]
        name = f"{service}-{site}" if index < len(SERVICES) * len(SITES) else f"{service}-{site}-{index}"
        files[f"{name}.yaml"] = intent_document(name, service, site, rng)
    return files


def digest_of(*parts: object) -> str:
    return hashlib.sha256("\x00".join(map(str, parts)).encode()).hexdigest()


def make_plan(intent: DeploymentIntent, version: int, revision: str | None, at: datetime) -> Plan:
    spec = intent.spec
    steps = [
        PlannedStep(
            name=step.name,
            playbook=step.playbook,
            content_hash=digest_of(step.playbook, version),
            vars=dict(step.vars),
        )
        for step in spec.steps
    ]
    return Plan(
        digest=digest_of(intent.metadata.name, version),
        revision=revision,
        infra_revision=digest_of("infra", version)[:40],
        steps=steps,
        inventory=spec.inventory,
        limit=spec.limit,
        risk=Risk.MEDIUM if len(steps) > 1 else Risk.LOW,
        estimated_duration_seconds=40.0 * len(steps),
        created_at=at,
    )


def condition(kind: str, status: ConditionStatus, reason: str, message: str, at: datetime) -> Condition:
    return Condition(
        type=kind,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=at,
        observed_generation=1,
    )


T, F, U = ConditionStatus.TRUE, ConditionStatus.FALSE, ConditionStatus.UNKNOWN


def conditions_for(state: str, approval: str, at: datetime) -> list[Condition]:
    approved = (T, Reason.AUTO_APPROVED if approval == "Auto" else Reason.APPROVED, "The plan is approved.")
    table: dict[str, list[tuple[str, tuple[ConditionStatus, str, str]]]] = {
        "applied": [
            ("Planned", (T, Reason.PLAN_READY, "The plan is ready.")),
            ("Approved", approved),
            ("Scheduled", (T, Reason.AGENT_SELECTED, "Runs on infra-nas.")),
            ("Ready", (T, Reason.APPLIED, "Every step ran successfully.")),
        ],
        "awaiting": [
            ("Planned", (T, Reason.PLAN_READY, "The plan is ready.")),
            ("Approved", (F, Reason.AWAITING_APPROVAL, "Waiting for a person to approve the plan.")),
            ("Scheduled", (U, Reason.NOT_REACHED, "Waiting for approval.")),
            ("Ready", (U, Reason.NOT_REACHED, "Waiting for approval.")),
        ],
        "failed": [
            ("Planned", (T, Reason.PLAN_READY, "The plan is ready.")),
            ("Approved", approved),
            ("Scheduled", (T, Reason.AGENT_SELECTED, "Runs on infra-nas.")),
            ("Ready", (F, Reason.APPLY_FAILED, "Step deploy failed after 3 attempts: rc 2.")),
        ],
        "running": [
            ("Planned", (T, Reason.PLAN_READY, "The plan is ready.")),
            ("Approved", approved),
            ("Scheduled", (T, Reason.AGENT_SELECTED, "Runs on infra-vps.")),
            ("Ready", (F, Reason.APPLYING, "Running step deploy.")),
        ],
        "capacity": [
            ("Planned", (T, Reason.PLAN_READY, "The plan is ready.")),
            ("Approved", approved),
            ("Scheduled", (F, Reason.INSUFFICIENT_CAPACITY, "No agent has 8192 MiB of free GPU memory.")),
            ("Ready", (U, Reason.NOT_REACHED, "Waiting for capacity.")),
        ],
        "no-plan": [
            (
                "Planned",
                (F, Reason.PLAYBOOK_NOT_FOUND, "ansible/playbooks/gone.yml is not in homelab-infra."),
            ),
            ("Approved", (U, Reason.NOT_REACHED, "No plan.")),
            ("Scheduled", (U, Reason.NOT_REACHED, "No plan.")),
            ("Ready", (U, Reason.NOT_REACHED, "No plan.")),
        ],
    }
    rows = table["applied" if state == "drifted" else state]
    found = [condition(kind, status, reason, message, at) for kind, (status, reason, message) in rows]
    if state == "drifted":
        found.append(condition("Drifted", T, Reason.CHANGES_FOUND, "2 tasks would change.", at))
    return found


def run_events(
    run: Run, tasks: int, rng: random.Random, *, failed: bool, finished: bool
) -> list[AnsibleEvent]:
    at = run.started_at or datetime.now(UTC)
    events = [AnsibleEvent(seq=0, event="playbook_on_start", created=at)]
    for index in range(tasks):
        at += timedelta(seconds=rng.uniform(0.2, 4))
        task = f"{run.step}: task {index + 1} of {tasks}"
        events.append(AnsibleEvent(seq=len(events), event="playbook_on_task_start", task=task, created=at))
        last = failed and index == tasks - 1
        status = "failed" if last else rng.choice(("ok", "ok", "ok", "changed", "skipped"))
        output = (
            f'fatal: [localhost]: FAILED! => {{"changed": false, "msg": "{run.step} could not start: '
            'port already in use", "rc": 2}'
            if last
            else f'{status}: [localhost] => {{"changed": {str(status == "changed").lower()}, '
            f'"item": "{task}", "path": "/opt/{run.intent}/config-{index}.yml"}}'
        )
        kind = {"failed": "runner_on_failed", "skipped": "runner_on_skipped"}.get(status, "runner_on_ok")
        events.append(
            AnsibleEvent(
                seq=len(events),
                event=kind,
                task=task,
                host="localhost",
                status=status,
                output=output,
                created=at,
            )
        )
    if finished:
        recap = f"PLAY RECAP\nlocalhost : ok={tasks} changed={tasks // 4} failed={int(failed)} skipped=0"
        events.append(AnsibleEvent(seq=len(events), event="playbook_on_stats", output=recap, created=at))
    return events


@dataclass
class History:
    """One intent's runs, events and audit events, built in memory, written in bulk."""

    runs: list[tuple[Run, list[AnsibleEvent]]] = field(default_factory=list)
    audits: list[AuditEvent] = field(default_factory=list)
    approvals: list[Approval] = field(default_factory=list)


def build_history(
    intent: DeploymentIntent, state: str, plans: list[Plan], rng: random.Random, now: datetime
) -> tuple[History, IntentStatus]:
    name, service = intent.metadata.name, intent.service
    approval = intent.spec.approval.value
    resource = f"DeploymentIntent/{name}"
    agent = "desktop-gaming" if service in GPU_SERVICES else rng.choice(("infra-nas", "infra-vps"))
    history = History()
    last_applied: str | None = None
    last_run: RunSummary | None = None

    def audit(
        action: str,
        at: datetime,
        outcome: Outcome = Outcome.SUCCESS,
        actor: str = "controller",
        **details: Any,
    ) -> None:
        history.audits.append(
            AuditEvent(
                time=at,
                actor=actor,
                action=action,
                resource=resource,
                service=service,
                outcome=outcome,
                details=details,
            )
        )

    def add_run(
        plan: Plan, step_index: int, attempt: int, status: RunStatus, at: datetime, *, check: bool = False
    ) -> Run:
        nonlocal last_run
        step = plan.steps[step_index].name
        identity = (
            drift_run_id(name, 1, plan.digest, step, 1, heal=False)
            if check
            else run_id(name, 1, plan.digest, step, attempt)
        )
        finished = status.finished
        took = timedelta(seconds=rng.uniform(8, 240))
        run = Run(
            id=identity,
            intent=name,
            generation=1,
            plan_digest=plan.digest,
            step=step,
            step_index=step_index,
            attempt=attempt,
            epoch=3,
            check_mode=check,
            agent_id=agent,
            status=status,
            rc=(2 if status is RunStatus.FAILED else 0) if finished else None,
            stats={
                "localhost": HostStats(
                    ok=rng.randrange(5, 30),
                    changed=rng.randrange(0, 6),
                    failed=int(status is RunStatus.FAILED),
                )
            }
            if finished
            else {},
            usage=ResourceUsage(
                cpu_seconds=round(rng.uniform(1, 60), 2), peak_memory_mib=round(rng.uniform(80, 900), 1)
            )
            if finished
            else None,
            error="rc 2: port already in use" if status is RunStatus.FAILED else None,
            created_at=at,
            started_at=at + timedelta(seconds=1),
            finished_at=at + took if finished else None,
        )
        tasks = rng.randrange(9, 25)
        history.runs.append(
            (run, run_events(run, tasks, rng, failed=status is RunStatus.FAILED, finished=finished))
        )
        if finished:
            audit(
                "run.result",
                at + took,
                Outcome.SUCCESS if status is RunStatus.SUCCESSFUL else Outcome.FAILURE,
                actor=f"agent:{agent}",
                run=identity,
                step=step,
                status=status.value,
                rc=run.rc,
                duration_seconds=round(took.total_seconds(), 1),
            )
        if not check:
            last_run = RunSummary(
                id=identity,
                step=step,
                status=status.value,
                started_at=run.started_at,
                finished_at=run.finished_at,
            )
        return run

    def planned(plan: Plan, at: datetime) -> None:
        steps = [step.name for step in plan.steps]
        audit("plan", at, digest=plan.digest, risk=plan.risk.value, steps=steps, approval=approval)

    def apply(plan: Plan, at: datetime) -> None:
        nonlocal last_applied
        planned(plan, at)
        if approval == "Manual":
            history.approvals.append(
                Approval(
                    intent=name,
                    digest=plan.digest,
                    decision=Decision.APPROVED,
                    actor=PERSON,
                    reason="",
                    created_at=at,
                )
            )
            audit(
                "approve", at + timedelta(minutes=5), actor=PERSON, digest=plan.digest, reason="", heal=False
            )
        at += timedelta(minutes=6)
        for index in range(len(plan.steps)):
            if rng.random() < 0.1:  # a retried step
                add_run(plan, index, 1, RunStatus.FAILED, at)
                at += timedelta(minutes=5)
                add_run(plan, index, 2, RunStatus.SUCCESSFUL, at)
            else:
                add_run(plan, index, 1, RunStatus.SUCCESSFUL, at)
            at += timedelta(minutes=5)
        audit("applied", at, digest=plan.digest)
        last_applied = plan.digest

    older, current = plans[:-1], plans[-1] if plans else None
    for index, plan in enumerate(older):
        apply(plan, now - timedelta(days=28 - 8 * index, hours=rng.uniform(0, 12)))
    at = now - timedelta(hours=rng.uniform(1, 60))
    drift: DriftStatus | None = None
    blocked: str | None = None
    if current is None:
        audit("plan", at, Outcome.FAILURE, error="ansible/playbooks/gone.yml is not in homelab-infra")
        blocked = "no plan: ansible/playbooks/gone.yml is not in homelab-infra"
    elif state in ("applied", "drifted"):
        apply(current, at)
        if state == "drifted":
            check = add_run(current, 0, 1, RunStatus.SUCCESSFUL, now - timedelta(minutes=30), check=True)
            changes = [
                DriftChange(
                    step=current.steps[0].name,
                    task="Write the config",
                    host="localhost",
                    diff="-port: 80\n+port: 8080\n",
                )
            ]
            drift = DriftStatus(
                digest=current.digest,
                round=4,
                checked_at=now - timedelta(minutes=25),
                drifted=True,
                changes=changes,
                runs=[check.id],
            )
            audit("drift", now - timedelta(minutes=25), drifted=True, changes=len(changes))
    elif state == "awaiting":
        planned(current, at)
    elif state == "failed":
        planned(current, at)
        for attempt in (1, 2, 3):
            add_run(current, 0, attempt, RunStatus.FAILED, at + timedelta(minutes=10 * attempt))
        blocked = "step deploy failed after 3 attempts"
    elif state == "running":
        planned(current, at)
        add_run(current, 0, 1, RunStatus.RUNNING, now - timedelta(seconds=rng.uniform(5, 120)))
    elif state == "capacity":
        planned(current, at)
        audit(
            "pause",
            at + timedelta(minutes=1),
            Outcome.INFO,
            message="no agent has 8192 MiB of free GPU memory",
        )
    status = IntentStatus(
        observed_generation=1,
        observed_revision=current.revision if current else None,
        conditions=conditions_for(state, approval, at),
        plan=current,
        last_applied_digest=last_applied,
        last_run=last_run,
        blocked_by=blocked,
        drift=drift,
    )
    return history, status


async def gather_limited(jobs: list[Any], limit: int = 8) -> None:
    """Await coroutines, ``limit`` at a time (enough to keep PostgreSQL busy, not the pool's limit)."""
    gate = asyncio.Semaphore(limit)

    async def one(job: Any) -> None:
        async with gate:
            await job

    await asyncio.gather(*(one(job) for job in jobs))


async def seed(store: Store, tmp: Path, count: int) -> Seeded:
    rng = random.Random(SEED)
    now = datetime.now(UTC)
    seeded = Seeded()
    repo = await GitRepo.init(
        tmp / "intents", initial_files=intent_documents(count, rng), message="homelab intents"
    )
    await GitSource(SourceConfig(str(repo.path), tmp / "checkout"), store).sync()
    intents = await store.list_intents()
    if len(intents) != count:
        raise RuntimeError(f"the source sync stored {len(intents)} of {count} intents")
    states = list(STATES)
    histories: list[History] = []
    statuses: list[tuple[str, IntentStatus]] = []
    for intent in intents:
        name = intent.metadata.name
        state = rng.choices(states, weights=list(STATES.values()))[0]
        revision = intent.status.source_revision if intent.status else None
        plans = (
            []
            if state == "no-plan"
            else [make_plan(intent, version, revision, now) for version in range(1, rng.randrange(2, 5) + 1)]
        )
        history, status = build_history(intent, state, plans, rng, now)
        histories.append(history)
        statuses.append((name, status))
        seeded.intents.append(name)
        seeded.counts[f"intents {state}"] += 1
        if status.plan is not None:
            seeded.digests[name] = status.plan.digest
            if state == "awaiting":
                seeded.awaiting[name] = status.plan.digest
        seeded.runs += [run.id for run, _ in history.runs]
    seeded.services = sorted({intent.service for intent in intents})

    await gather_limited([store.write_intent_status(name, status) for name, status in statuses])
    runs = [item for history in histories for item in history.runs]
    await gather_limited([store.upsert_run(run) for run, _ in runs])
    await gather_limited([store.append_run_events(run.id, events) for run, events in runs])
    approvals = [approval for history in histories for approval in history.approvals]
    await gather_limited([store.record_approval(approval) for approval in approvals])
    audits = sorted(
        (event for history in histories for event in history.audits), key=lambda event: event.time
    )
    audits += system_audits(rng, now, len(audits) // 20)
    await gather_limited([store.record_audit(event) for event in audits])
    agents = [agent_record(agent_id, kind, gpu, online, rng, now) for agent_id, kind, gpu, online in AGENTS]
    await store.upsert_agents(agents)
    seeded.agents = [agent.id for agent in agents]
    for index, path in enumerate(DEPLOY_PLAYBOOKS[:5]):
        await store.add_suggestion(
            category="lint",
            file=path,
            line=12 + index,
            reasoning="Use the fully qualified collection name (ansible.builtin.*) for this module.",
            fingerprint=digest_of("bench-suggestion", path),
            patch=None,
        )
    seeded.counts.update(
        runs=len(runs),
        run_events=sum(len(events) for _, events in runs),
        approvals=len(approvals),
        audit_events=await store.count_rows("audit_events"),
        agents=len(agents),
        suggestions=5,
    )
    return seeded


def system_audits(rng: random.Random, now: datetime, count: int) -> list[AuditEvent]:
    """What is not about one intent: denied calls, agents coming and going, leader elections."""
    found = []
    for _ in range(count):
        at = now - timedelta(hours=rng.uniform(0, 30 * 24))
        kind = rng.choice(("denied", "agent.offline", "agent.online", "leader.elected"))
        if kind == "denied":
            details = {"method": "POST", "path": "/api/v1/intents/apply", "required": "operator"}
            actor = "anonymous <anonymous@chiffon.local>"
            event = AuditEvent(time=at, actor=actor, action=kind, outcome=Outcome.FAILURE, details=details)
        elif kind.startswith("agent."):
            agent = rng.choice(AGENTS)[0]
            outcome = Outcome.FAILURE if kind == "agent.offline" else Outcome.INFO
            event = AuditEvent(
                time=at, actor="controller", action=kind, resource=f"Agent/{agent}", outcome=outcome
            )
        else:
            event = AuditEvent(
                time=at, actor="controller", action=kind, details={"epoch": rng.randrange(1, 9)}
            )
        found.append(event)
    return found


def agent_record(
    agent_id: str, kind: AgentKind, gpu: bool, online: bool, rng: random.Random, now: datetime
) -> Agent:
    gpus = [
        GpuInfo(index=0, name="RTX 4090", memory_total_mib=24564, memory_free_mib=rng.randrange(0, 24564))
    ]
    return Agent(
        id=agent_id,
        kind=kind,
        labels={"role": kind.value, "gpu": "true" if gpu else "false"},
        online=online,
        last_seen=now if online else now - timedelta(hours=2),
        capacity=Capacity(
            cpu_load_percent=round(rng.uniform(0, 60), 1),
            cpu_cores=16,
            memory_total_mib=65536,
            memory_available_mib=rng.randrange(8192, 49152),
            gpus=gpus if gpu else [],
        ),
        version="bench",
    )


# The server --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def wait_until_serving(process: Any, log: Path, base_url: str, headers: dict[str, str]) -> float:
    """Until ``/api/v1/healthz`` answers 200; the seconds it took."""
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=5) as http:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"chiffon api exited with status {process.returncode}:\n{log_tail(log)}")
            if time.monotonic() - started > START_TIMEOUT:
                raise RuntimeError(f"chiffon api did not answer within {START_TIMEOUT:g}s:\n{log_tail(log)}")
            with contextlib.suppress(httpx.HTTPError):
                response = await http.get("/api/v1/healthz")
                if response.status_code == 200:
                    return time.monotonic() - started
                raise RuntimeError(f"/api/v1/healthz answered {response.status_code}: {response.text[:300]}")
            await asyncio.sleep(0.2)


async def wait_until_idle(pid: int) -> float:
    """Until the server's CPU falls under IDLE_CPU_PERCENT for a second (the chat warm-up thread is done)."""
    started = time.monotonic()
    meter = ProcessMeter(pid)
    while time.monotonic() - started < START_TIMEOUT:
        meter.start()
        await asyncio.sleep(1.0)
        meter.stop()
        if meter.cpu_percent < IDLE_CPU_PERCENT:
            break
    return time.monotonic() - started


# Clients ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    label: str
    method: str
    path: str
    params: dict[str, str] | None = None
    body: dict[str, Any] | None = None
    expect: frozenset[int] = frozenset({200})


def make_call(label: str, seeded: Seeded, since: str, rng: random.Random) -> Call:
    name = rng.choice(seeded.intents)
    base = "/api/v1"
    match label:
        case "GET /intents":
            return Call(label, "GET", f"{base}/intents")
        case "GET /intents/{name}":
            return Call(label, "GET", f"{base}/intents/{name}")
        case "GET /intents/{name}/summary":
            digest = seeded.digests.get(name)
            return Call(label, "GET", f"{base}/intents/{name}/summary", {"plan": digest} if digest else None)
        case "GET /runs?intent=":
            return Call(label, "GET", f"{base}/runs", {"intent": name, "limit": "100"})
        case "GET /runs":
            return Call(label, "GET", f"{base}/runs")
        case "GET /runs/{id}":
            return Call(label, "GET", f"{base}/runs/{rng.choice(seeded.runs)}")
        case "GET /runs/{id}/events":
            return Call(label, "GET", f"{base}/runs/{rng.choice(seeded.runs)}/events")
        case "GET /audit?service=":
            return Call(label, "GET", f"{base}/audit", {"service": rng.choice(seeded.services)})
        case "GET /audit?outcome=failure":
            return Call(label, "GET", f"{base}/audit", {"outcome": "failure"})
        case "GET /audit?since=":
            return Call(label, "GET", f"{base}/audit", {"since": since})
        case "GET /audit?resource=":
            return Call(
                label, "GET", f"{base}/audit", {"resource": f"DeploymentIntent/{name}", "limit": "200"}
            )
        case "GET /agents":
            return Call(label, "GET", f"{base}/agents")
        case "GET /intents/{unknown} (404)":
            return Call(
                label, "GET", f"{base}/intents/no-such-{rng.randrange(10**6)}", expect=frozenset({404})
            )
        case "POST /intents/{name}/approve":
            name, digest = rng.choice(sorted(seeded.awaiting.items()))
            return Call(
                label, "POST", f"{base}/intents/{name}/approve", body={"plan": digest, "reason": "bench"}
            )
        case "POST /chat":
            return Call(label, "POST", f"{base}/chat", body={"message": rng.choice(CHAT_REQUESTS)})
    raise ValueError(label)


@dataclass
class Sample:
    label: str
    at: float  # seconds since the window opened
    seconds: float
    status: int | None
    error: str | None


async def one_call(
    http: httpx.AsyncClient, call: Call, headers: dict[str, str] | None = None
) -> tuple[int | None, str | None]:
    try:
        response = await http.request(
            call.method, call.path, params=call.params, json=call.body, headers=headers
        )
    except Exception as exc:  # every exception or timeout is an error
        return None, f"{type(exc).__name__}: {exc}"[:300]
    if response.status_code not in call.expect:
        return response.status_code, f"HTTP {response.status_code}: {response.text[:240]}"
    return response.status_code, None


@dataclass
class Window:
    """What every client shares: the mix, the state asked about, the clock, the samples."""

    mix: dict[str, int]
    seeded: Seeded
    seconds: float
    think: float
    since: str = field(default_factory=lambda: (datetime.now(UTC) - timedelta(days=1)).isoformat())
    opened: float = 0.0
    samples: list[Sample] = field(default_factory=list)

    def open(self) -> None:
        self.opened = time.perf_counter()

    def draw(self, rng: random.Random) -> Call:
        labels = [label for label, weight in self.mix.items() if weight > 0]
        label = rng.choices(labels, [self.mix[label] for label in labels])[0]
        return make_call(label, self.seeded, self.since, rng)


async def client(http: httpx.AsyncClient, window: Window, rng: random.Random) -> None:
    """One client's closed loop: a request, its answer, the next, until the window closes."""
    closes = window.opened + window.seconds
    while time.perf_counter() < closes:
        call = window.draw(rng)
        started = time.perf_counter()
        status, error = await one_call(http, call)
        took = time.perf_counter() - started
        window.samples.append(Sample(call.label, started - window.opened, took, status, error))
        if window.think:
            await asyncio.sleep(window.think)


def http_client(base_url: str, headers: dict[str, str]) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=base_url,
        headers=headers,
        timeout=REQUEST_TIMEOUT,
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
    )


class Sampler:
    """Every second: the server's and this process's CPU, the machine's, the database's connections."""

    def __init__(self, server_pid: int, database: str, admin_url: str) -> None:
        self.server = ProcessMeter(server_pid)
        self.me = ProcessMeter(os.getpid())
        self.database = database
        self.admin_url = admin_url
        self.connections: list[dict[str, int]] = []
        self.machine_cpu: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        import asyncpg

        connection = await asyncpg.connect(self.admin_url)
        try:
            psutil.cpu_percent()
            while True:
                await asyncio.sleep(1.0)
                rows = await connection.fetch(
                    "SELECT coalesce(state, '?') AS state, count(*) AS n FROM pg_stat_activity "
                    "WHERE datname = $1 AND application_name = 'chiffon' GROUP BY 1",
                    self.database,
                )
                self.connections.append({row["state"]: int(row["n"]) for row in rows})
                self.machine_cpu.append(psutil.cpu_percent())
                self.server.sample()
        finally:
            await connection.close()

    def start(self) -> None:
        self.server.start()
        self.me.start()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:  # never started, or stopped already
            return
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        with contextlib.suppress(psutil.Error):  # the server is gone: its figures do not matter then
            self.server.stop()
        self.me.stop()

    def summary(self) -> dict[str, Any]:
        totals = [sum(sample.values()) for sample in self.connections]
        active = [sample.get("active", 0) for sample in self.connections]
        return {
            "api_cpu_percent_of_one_core": round(self.server.cpu_percent, 1),
            "api_rss_max_mb": round(max(self.server.rss_samples, default=0) / MB, 1),
            "bench_clients_cpu_percent_of_one_core": round(self.me.cpu_percent, 1),
            "machine_cpu_percent_mean": round(sum(self.machine_cpu) / len(self.machine_cpu), 1)
            if self.machine_cpu
            else None,
            "postgres_connections": {
                "max": max(totals, default=0),
                "max_active": max(active, default=0),
                "median": percentile(totals, 50) if totals else None,
                "samples": self.connections,
            },
        }


async def run_window(
    base_url: str, headers: list[dict[str, str]], window: Window, sampler: Sampler
) -> tuple[list[Sample], float]:
    clients = [http_client(base_url, client_headers) for client_headers in headers]
    try:
        # Open every client's connection first: the window measures requests, not TCP handshakes.
        opened = await asyncio.gather(
            *(http.get("/api/v1/version") for http in clients), return_exceptions=True
        )
        failures = [o for o in opened if isinstance(o, BaseException) or o.status_code != 200]
        if failures:
            raise RuntimeError(f"{len(failures)} clients could not connect: {failures[0]!r}")
        sampler.start()
        window.open()
        rngs = [random.Random(SEED * 1000 + index) for index in range(len(clients))]
        await asyncio.gather(*(client(http, window, rng) for http, rng in zip(clients, rngs, strict=True)))
        elapsed = time.perf_counter() - window.opened
    finally:
        await sampler.stop()
        await asyncio.gather(*(http.aclose() for http in clients), return_exceptions=True)
    return window.samples, elapsed


async def alone(
    base_url: str, headers: list[dict[str, str]], seeded: Seeded, mix: dict[str, int], repeat: int
) -> dict[str, dict[str, float]]:
    """Each kind of request ``1 + repeat`` times, one at a time, before the window: the first pays for
    imports and caches; the median of the others is what it costs with nothing else running.

    The requests take the clients' tokens in turn, so none spends much of its chat allowance.
    """
    rng = random.Random(SEED - 1)
    since = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    callers = itertools.cycle(headers)
    found: dict[str, dict[str, float]] = {}
    async with http_client(base_url, {}) as http:
        if mix.get("POST /chat", 0) > 0:  # each request's playbook gets its syntax check (cached after)
            for message in CHAT_REQUESTS:
                chat = Call("POST /chat", "POST", "/api/v1/chat", body={"message": message})
                await one_call(http, chat, next(callers))
        for label, weight in mix.items():
            if weight <= 0:
                continue
            took = []
            for _ in range(1 + repeat):
                call = make_call(label, seeded, since, rng)
                started = time.perf_counter()
                _, error = await one_call(http, call, next(callers))
                if error is not None:
                    raise RuntimeError(f"{label}, one client alone: {error}")
                took.append(1000 * (time.perf_counter() - started))
            found[label] = {"first": round(took[0], 1), "p50": round(percentile(took[1:], 50), 1)}
    return found


# Figures -----------------------------------------------------------------------------------------


def latency_ms(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None, "mean": None}
    ms = [1000 * value for value in values]
    return {
        "p50": round(percentile(ms, 50), 1),
        "p95": round(percentile(ms, 95), 1),
        "p99": round(percentile(ms, 99), 1),
        "max": round(max(ms), 1),
        "mean": round(sum(ms) / len(ms), 1),
    }


def figures(samples: list[Sample], elapsed: float) -> dict[str, Any]:
    by_label: dict[str, list[Sample]] = {}
    for sample in samples:
        by_label.setdefault(sample.label, []).append(sample)
    endpoints = {}
    for label in sorted(by_label, key=lambda name: -len(by_label[name])):
        group = by_label[label]
        endpoints[label] = {
            "requests": len(group),
            "share_percent": round(100 * len(group) / len(samples), 1),
            "errors": sum(1 for s in group if s.error is not None),
            "statuses": dict(Counter(str(s.status) for s in group)),
            "latency_ms": latency_ms([s.seconds for s in group]),
        }
    per_second = Counter(int(s.at + s.seconds) for s in samples)
    seconds = [per_second.get(second, 0) for second in range(int(elapsed))]
    errors = Counter(f"{s.label}: {s.error}" for s in samples if s.error is not None)
    return {
        "overall": {
            "requests": len(samples),
            "errors": sum(errors.values()),
            "throughput_per_s": round(len(samples) / elapsed, 1),
            "completed_per_second": {
                "min": min(seconds, default=0),
                "median": percentile(seconds, 50) if seconds else None,
                "max": max(seconds, default=0),
            },
            "latency_ms": latency_ms([s.seconds for s in samples]),
            "window_s": round(elapsed, 2),
        },
        "endpoints": endpoints,
        "errors_by_kind": dict(errors.most_common(20)),
        "completed_each_second": seconds,
    }


def server_log_problems(log: Path, since_byte: int) -> dict[str, Any]:
    try:
        text = log.read_bytes()[since_byte:].decode(errors="replace")
    except OSError:
        return {}
    lines = text.splitlines()
    flagged = [line for line in lines if " WARNING " in line or " ERROR " in line or "Traceback" in line]
    return {"warnings_or_errors": len(flagged), "first": flagged[:10]}


# Running it ----------------------------------------------------------------------------------


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    from sqlalchemy.engine import make_url

    from bench.common import POSTGRES_URL
    from chiffon.api.auth import Role, create_token

    tag = uuid.uuid4().hex[:8]
    tmp = Path(tempfile.mkdtemp(prefix=f"chiffon-bench-api-{tag}-"))
    db_name = f"chiffon_bench_{tag}"
    created = False
    store: Store | None = None
    server = None
    log = tmp / "api.log"
    try:
        url = await create_database(db_name)
        created = True
        store = Store.from_url(url)
        await store.migrate()
        seeding = time.perf_counter()
        seeded = await seed(store, tmp, args.intents)
        # A token of its own for each client, as separate callers have (limits are per caller).
        headers = [
            {"X-Chiffon-Actor": f"Bench Client {index} <bench@example.invalid>"}
            for index in range(args.clients)
        ]
        for index, client_headers in enumerate([] if args.no_token else headers):
            token = await create_token(store, f"bench-load-{index:03d}", Role.ADMIN, "bench.api_load")
            client_headers["Authorization"] = f"Bearer {token}"
        seed_s = time.perf_counter() - seeding
        if not seeded.awaiting:  # too few intents for one to await approval
            args.mix["POST /intents/{name}/approve"] = 0
        await store.close()
        store = None
        counts = seeded.counts
        print(
            f"seeded {len(seeded.intents)} intents, {counts['runs']} runs, {counts['run_events']} events, "
            f"{counts['audit_events']} audit events, {len(seeded.agents)} agents in {seed_s:.1f}s",
            flush=True,
        )

        port = free_port()
        env = clean_environment(
            CHIFFON_HOME=str(tmp / "home"),
            CHIFFON_DATABASE_URL=url,
            CHIFFON_INTENTS_REPO=str(tmp / "intents"),
            CHIFFON_INFRA_REPO=str(ROOT / "examples" / "homelab-infra"),
            HF_HUB_OFFLINE="1",
            LITELLM_LOCAL_MODEL_COST_MAP="True",
        )
        server = start_process([str(BIN / "chiffon"), "api", "--port", str(port)], env, log)
        base_url = f"http://127.0.0.1:{port}"
        start_s = await wait_until_serving(server, log, base_url, headers[0])
        idle_s = await wait_until_idle(server.pid)
        solo = await alone(base_url, headers, seeded, args.mix, 3 if args.quick else 10)
        print(
            f"chiffon api (pid {server.pid}) answered after {start_s:.1f}s, idle after {idle_s:.1f}s more; "
            f"{args.clients} clients for {args.seconds:g}s…",
            flush=True,
        )
        log_offset = log.stat().st_size
        admin = make_url(POSTGRES_URL).set(drivername="postgresql").render_as_string(hide_password=False)
        sampler = Sampler(server.pid, db_name, admin)
        window = Window(args.mix, seeded, args.seconds, args.think / 1000)
        samples, elapsed = await run_window(base_url, headers, window, sampler)
        if server.poll() is not None:
            raise RuntimeError(f"chiffon api exited during the window:\n{log_tail(log)}")
        results = figures(samples, elapsed)
        results["resources"] = sampler.summary()
        results["server_log"] = server_log_problems(log, log_offset)
        for label, row in results["endpoints"].items():
            row["alone_ms"] = solo.get(label)
        results["seed"] = {**dict(seeded.counts), "seconds": round(seed_s, 1)}
        results["server_start_s"] = round(start_s, 1)
        return results
    finally:
        if server is not None:
            status = await stop_process(server)
            if status not in (0, None):
                print(f"bench: chiffon api exited with status {status}:\n{log_tail(log)}", file=sys.stderr)
        if store is not None:
            await store.close()
        if created:
            try:
                await drop_database(db_name)
            except Exception as exc:
                print(f"bench: could not drop database {db_name}: {exc}", file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)


def report(results: dict[str, Any], args: argparse.Namespace) -> None:
    overall = results["overall"]
    heads = ("requests", "share", "p50 ms", "p95 ms", "p99 ms", "max ms", "errors", "alone ms")
    print(f"\n{'endpoint':<32}" + "".join(f"{head:>9}" for head in heads))
    rows = [*results["endpoints"].items(), ("overall", {**overall, "share_percent": 100.0})]
    for label, row in rows:
        ms = row["latency_ms"]
        solo = (row.get("alone_ms") or {}).get("p50", "")
        cells = [
            row["requests"],
            f"{row['share_percent']:.1f}%",
            *(ms[k] for k in ("p50", "p95", "p99", "max")),
        ]
        print(f"{label:<32}" + "".join(f"{cell:>9}" for cell in [*cells, row["errors"], solo]))
    print("(alone ms: the median of that request made by one client with nothing else running)")
    each = overall["completed_per_second"]
    used = results["resources"]
    connections = used["postgres_connections"]
    print(
        f"\n{args.clients} clients, {overall['window_s']:.1f}s: {overall['requests']} requests, "
        f"{overall['throughput_per_s']:.1f}/s (each second: min {each['min']}, max {each['max']}), "
        f"errors {overall['errors']}"
    )
    print(
        f"chiffon api CPU {used['api_cpu_percent_of_one_core']:.0f}% of a core, "
        f"RSS ≤ {used['api_rss_max_mb']:.0f} MB; "
        f"bench clients CPU {used['bench_clients_cpu_percent_of_one_core']:.0f}% of a core; "
        f"machine CPU {used['machine_cpu_percent_mean']}% busy ({os.cpu_count()} CPUs); "
        f"PostgreSQL connections ≤ {connections['max']} ({connections['max_active']} active at most)"
    )
    logged = results["server_log"]
    if logged.get("warnings_or_errors"):
        print(
            f"the server logged {logged['warnings_or_errors']} warnings/errors; first: {logged['first'][0]}"
        )
    for kind, count in list(results["errors_by_kind"].items())[:10]:
        print(f"  error x{count}: {kind}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_CLIENTS} clients for {QUICK_SECONDS:g}s"
    )
    parser.add_argument("--clients", type=int, default=None, help=f"concurrent clients ({CLIENTS})")
    parser.add_argument("--seconds", type=float, default=None, help=f"the window ({SECONDS:g})")
    parser.add_argument("--intents", type=int, default=INTENTS, help=f"intents seeded ({INTENTS})")
    parser.add_argument("--think", type=float, default=0.0, help="pause after each request, in ms (0)")
    parser.add_argument("--chat-share", type=int, default=None, help="weight of POST /chat, in %% (1)")
    parser.add_argument(
        "--no-token",
        action="store_true",
        help="no bearer tokens: the open local server (all clients are one caller: no chat, unless asked)",
    )
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    args.clients = args.clients or (QUICK_CLIENTS if args.quick else CLIENTS)
    args.seconds = args.seconds or (QUICK_SECONDS if args.quick else SECONDS)
    # Without tokens every client is the same caller, whose chat allowance (30 a minute) 100 busy
    # clients would spend in seconds.
    chat = args.chat_share if args.chat_share is not None else (0 if args.no_token else MIX["POST /chat"])
    args.mix = {**MIX, "POST /chat": chat}
    timing = Timing()
    try:
        results = asyncio.run(_guarded(measure(args)))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("bench: api load interrupted; cleaned up", file=sys.stderr)
        return 130
    except Exception as exc:
        print(f"bench: api load could not be measured: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    arguments = {
        "clients": args.clients,
        "seconds": args.seconds,
        "intents": args.intents,
        "think_ms": args.think,
        "token": not args.no_token,
        "mix_percent": args.mix,
    }
    document = write_results(args.json, timing, quick=args.quick, arguments=arguments, **results)
    report(results, args)
    errors = results["overall"]["errors"]
    print(f"errors: {errors} (target 0) {'met' if errors == 0 else 'MISSED'}")
    print(where_written(document, args.json))
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
