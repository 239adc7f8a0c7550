"""Post-mortems of runs: ``GET /runs/{id}/postmortem`` and ``chiffonctl postmortem``, on both backends.

The store holds what the controller would have written for a failed run — the
intent, the run, its events (ansible-runner's naive UTC times), the dispatch and
result audit events, the agent's heartbeat — plus an open suggestion on the
intent's playbook and one on another file; the post-mortem is computed from them.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import yaml

from chiffon.resources import (
    Agent,
    AgentKind,
    AuditEvent,
    Capacity,
    GpuInfo,
    Outcome,
    Run,
    RunStatus,
)
from chiffon.resources.messages import AnsibleEvent
from chiffon.resources.run import ResourceUsage
from chiffon.resources.yamlio import parse_intents
from chiffon.store import SourceRef, Store
from tests.helpers import intent_yaml
from tests.integration.conftest import Served
from tests.integration.live import chiffonctl

PLAYBOOK = "ansible/playbooks/kuma-deployment.yml"
FAILED_ID = "kuma-00000000000000f1"
LATER_ID = "kuma-00000000000000f2"
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
FAILURE = 'fatal: [web-1]: FAILED! => {"msg": "port 3001 in use"} ' + "x" * 900


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def naive(seconds: float) -> datetime:
    """ansible-runner's event time: UTC without a zone."""
    return at(seconds).replace(tzinfo=None)


def a_run(run_id: str, status: RunStatus, start: float, **changes: object) -> Run:
    return Run(
        id=run_id,
        intent="kuma",
        generation=1,
        plan_digest="a" * 64,
        step="deploy",
        step_index=0,
        agent_id="infra-1",
        status=status,
        created_at=at(start),
        started_at=at(start + 2),
        finished_at=at(start + 6),
        **changes,
    )


EVENTS = [
    AnsibleEvent(seq=1, event="playbook_on_task_start", task="write file", created=naive(2.5)),
    AnsibleEvent(
        seq=2,
        event="runner_on_ok",
        task="write file",
        host="web-1",
        status="changed",
        output="changed: [web-1]",
        created=naive(3),
    ),
    AnsibleEvent(seq=3, event="runner_on_ok", task="check port", host="web-1", status="ok", created=naive(4)),
    AnsibleEvent(
        seq=4,
        event="runner_on_failed",
        task="start service",
        host="web-1",
        status="failed",
        output=FAILURE,
        created=naive(5),
    ),
]


def audit(time: datetime, action: str, outcome: Outcome, **details: object) -> AuditEvent:
    return AuditEvent(
        time=time,
        actor="controller",
        action=action,
        resource="DeploymentIntent/kuma",
        service="kuma",
        outcome=outcome,
        details=details,
    )


async def seed(store: Store) -> None:
    parsed = parse_intents(intent_yaml("kuma", PLAYBOOK), "kuma.yaml")
    assert not parsed.errors
    await store.upsert_intent(parsed.intents[0].intent, SourceRef("intents", "kuma.yaml", "b1", "rev-1"))
    failed = a_run(
        FAILED_ID,
        RunStatus.FAILED,
        0,
        rc=2,
        error="start service failed on web-1",
        usage=ResourceUsage(cpu_seconds=12.5, peak_memory_mib=300),
    )
    await store.upsert_run(failed)
    await store.append_run_events(FAILED_ID, EVENTS)
    await store.upsert_run(a_run(LATER_ID, RunStatus.SUCCESSFUL, 60, rc=0))  # newer, succeeded
    for event in [
        audit(at(0), "dispatch", Outcome.SUCCESS, run=FAILED_ID, step="deploy", agent="infra-1"),
        audit(at(6), "run.result", Outcome.FAILURE, run=FAILED_ID, status="failed", rc=2, error="rc 2"),
        audit(at(60), "dispatch", Outcome.SUCCESS, run=LATER_ID, step="deploy", agent="infra-1"),
        audit(at(-30), "approve", Outcome.SUCCESS, digest="a" * 64),  # not about a run
    ]:
        await store.record_audit(event)
    await store.upsert_agent(
        Agent(
            id="infra-1",
            kind=AgentKind.INFRA,
            online=True,
            last_seen=at(100),
            capacity=Capacity(
                cpu_load_percent=87,
                cpu_cores=8,
                memory_total_mib=16384,
                memory_available_mib=1024,
                gpus=[GpuInfo(index=0, name="RTX", memory_total_mib=8192, memory_free_mib=2048)],
            ),
        )
    )
    await store.add_suggestion(
        category="idempotence", file=PLAYBOOK, line=12, reasoning="task changes every run", fingerprint="s1"
    )
    await store.add_suggestion(
        category="lint", file="ansible/playbooks/other.yml", reasoning="unrelated", fingerprint="s2"
    )


@pytest.fixture
async def lab(served: Served) -> Served:
    await seed(served.store)
    return served


async def get(lab: Served, path: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=f"{lab.server}/api/v1", timeout=15) as client:
        return await client.get(path)


async def test_failed_run_postmortem_has_failure_resources_timeline_and_suggestions(lab: Served) -> None:
    response = await get(lab, f"/runs/{FAILED_ID}/postmortem")
    assert response.status_code == 200, response.text
    doc = response.json()

    assert (doc["intent"], doc["step"], doc["attempt"], doc["outcome"], doc["rc"]) == (
        "kuma",
        "deploy",
        1,
        "failed",
        2,
    )
    assert doc["error"] == "start service failed on web-1" and doc["run"]["id"] == FAILED_ID
    [failed] = doc["failed"]
    assert (failed["task"], failed["host"], failed["status"]) == ("start service", "web-1", "failed")
    assert failed["output"].startswith('fatal: [web-1]: FAILED! => {"msg": "port 3001 in use"}')
    assert len(failed["output"]) == 500 and failed["output"].endswith("…")

    agent = doc["resources"]["agent"]
    assert agent["id"] == "infra-1" and agent["capacityAsOf"] == at(100).isoformat()
    assert "latest" in agent["capacityIs"]
    assert agent["capacity"]["cpuLoadPercent"] == 87 and agent["capacity"]["gpus"][0]["memoryFreeMib"] == 2048
    assert doc["resources"]["used"] == {"cpuSeconds": 12.5, "peakMemoryMib": 300}

    timeline = [(entry["offsetSeconds"], entry["what"]) for entry in doc["timeline"]]
    assert timeline == [
        (0.0, "dispatched to infra-1"),
        (2.0, "accepted by infra-1, started"),
        (3.0, "changed: write file @ web-1"),
        (5.0, "failed: start service @ web-1"),
        (6.0, "run.result failed (rc 2): rc 2"),
    ]
    assert [s["file"] for s in doc["suggestions"]] == [PLAYBOOK]
    assert doc["annotations"] == []
    assert doc["audit"]["href"] == "/api/v1/audit?resource=DeploymentIntent%2Fkuma"


async def test_successful_run_gets_a_document_without_failures_and_unknown_run_404(lab: Served) -> None:
    done = await get(lab, f"/runs/{LATER_ID}/postmortem")
    missing = await get(lab, "/runs/kuma-nope/postmortem")

    assert done.status_code == 200
    doc = done.json()
    assert doc["outcome"] == "successful" and doc["failed"] == [] and doc["resources"]["used"] is None
    # No run.result audit for this one: the run's own finish time stands in for it.
    assert [entry["what"] for entry in doc["timeline"]] == [
        "dispatched to infra-1",
        "accepted by infra-1, started",
        "finished successful",
    ]
    assert missing.status_code == 404 and "kuma-nope" in missing.json()["detail"]


async def test_cli_prints_the_sections_and_intent_picks_the_latest_failed_run(lab: Served) -> None:
    by_id = await chiffonctl(lab.server, "postmortem", FAILED_ID)
    by_intent = await chiffonctl(lab.server, "postmortem", "intent/kuma", "-o", "json")
    as_yaml = await chiffonctl(lab.server, "postmortem", f"run/{FAILED_ID}", "-o", "yaml")
    unknown = await chiffonctl(lab.server, "postmortem", "kuma-nope")
    no_intent = await chiffonctl(lab.server, "postmortem", "intent/ghost")

    assert by_id.code == 0, by_id.stderr
    text = by_id.stdout
    for section in ("Intent:      kuma", "Outcome:     failed (rc 2)", "Failed:", "Resources:", "Timeline:"):
        assert section in text
    assert "  start service @ web-1 (failed): fatal: [web-1]: FAILED!" in text
    assert "infra-1: 8 cores, 87% load, memory 1.0Gi free of 16.0Gi, GPU free 2.0Gi" in text
    assert "run:       CPU 12.5s, peak memory 300Mi" in text
    lines = text.splitlines()
    timeline = lines[lines.index("Timeline:") + 1 : lines.index("Suggestions:")]
    assert [line.split(None, 1)[0] for line in timeline] == ["+0.0s", "+2.0s", "+3.0s", "+5.0s", "+6.0s"]
    assert f"idempotence {PLAYBOOK}:12: task changes every run" in text
    assert "other.yml" not in text
    assert lines[-1] == "Audit:       /api/v1/audit?resource=DeploymentIntent%2Fkuma"

    assert by_intent.code == 0, by_intent.stderr
    assert json.loads(by_intent.stdout)["run"]["id"] == FAILED_ID  # not the newer successful one
    assert as_yaml.code == 0 and yaml.safe_load(as_yaml.stdout)["annotations"] == []
    assert unknown.code == 1 and "run kuma-nope not found" in unknown.stderr
    assert no_intent.code == 1 and "deploymentintent/ghost not found" in no_intent.stderr
