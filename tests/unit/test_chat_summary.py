"""The chat page's run summary (``chiffon.api.summary``): pure pieces, by table."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from chiffon.agents.suggestions.relevance import playbook_roles, touches, with_dependencies
from chiffon.api.summary import latest_per_step, outcome, summarize
from chiffon.resources import (
    Condition,
    ConditionStatus,
    DeploymentIntent,
    DriftChange,
    DriftStatus,
    IntentStatus,
    Plan,
    Run,
    RunStatus,
)
from chiffon.resources.plan import PlannedStep
from chiffon.resources.run import HostStats, ResourceUsage
from chiffon.resources.yamlio import parse_intents
from chiffon.store.records import Suggestion

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 1, 1, tzinfo=UTC)
DIGEST = "a" * 64


def kuma(*, applied: bool) -> DeploymentIntent:
    text = (ROOT / "examples/intents/uptime-kuma.yaml").read_text()
    intent = parse_intents(text, "uptime-kuma.yaml").intents[0].intent
    plan = Plan(
        digest=DIGEST,
        steps=[
            PlannedStep(name=step.name, playbook=step.playbook, content_hash="0" * 64)
            for step in intent.spec.steps
        ],
    )
    ready = Condition(
        type="Ready",
        status=ConditionStatus.TRUE if applied else ConditionStatus.FALSE,
        reason="Applied" if applied else "Applying",
        last_transition_time=T0,
    )
    status = IntentStatus(conditions=[ready], plan=plan, last_applied_digest=DIGEST if applied else None)
    return intent.model_copy(update={"status": status})


def run(
    step: str, index: int, status: RunStatus, *, attempt: int = 1, digest: str = DIGEST, **extra: object
) -> Run:
    started = T0 + timedelta(seconds=10 * index)
    finished = started + timedelta(seconds=4) if status.finished else None
    return Run(
        id=f"uptime-kuma-{index}-{attempt}-{digest[:4]}",
        intent="uptime-kuma",
        generation=1,
        plan_digest=digest,
        step=step,
        step_index=index,
        attempt=attempt,
        status=status,
        started_at=started,
        finished_at=finished,
        **extra,  # type: ignore[arg-type]
    )


def suggestion(file: str, status: str = "open") -> Suggestion:
    return Suggestion(1, "static/x", file, 3, "why", None, status, "f", T0, T0)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("statuses", "want"),
    [
        ([], "waiting"),
        (["not started", "not started"], "waiting"),
        (["running", "not started"], "running"),
        (["successful", "not started"], "running"),
        (["successful", "successful"], "succeeded"),
        (["successful", "failed"], "failed"),
        (["canceled", "not started"], "canceled"),
        (["timeout", "not started"], "timeout"),
    ],
)
def test_outcome(statuses: list[str], want: str) -> None:
    assert outcome([{"status": status} for status in statuses]) == want


@pytest.mark.parametrize(
    ("path", "want"),
    [
        ("ansible/playbooks/kuma-deployment.yml", True),
        ("ansible/playbooks/legacy-backup.yml", False),
        ("ansible/roles/uptime_kuma/tasks/monitors.yml", True),
        ("roles/uptime_kuma/handlers/main.yml", True),
        ("ansible/roles/ollama/tasks/main.yml", False),
        ("ansible/roles", False),
    ],
)
def test_touches(path: str, want: bool) -> None:
    assert touches(path, {"ansible/playbooks/kuma-deployment.yml"}, {"uptime_kuma"}) is want


def test_latest_attempt_of_each_step_of_the_digest_only() -> None:
    runs = [
        run("deploy", 0, RunStatus.FAILED),
        run("deploy", 0, RunStatus.SUCCESSFUL, attempt=2),
        run("deploy", 0, RunStatus.SUCCESSFUL, digest="b" * 64),
        run("deploy", 0, RunStatus.SUCCESSFUL, attempt=3, check_mode=True),
    ]
    latest = latest_per_step(runs, DIGEST)
    assert {step: r.attempt for step, r in latest.items()} == {"deploy": 2}


def test_summary_of_an_applied_plan() -> None:
    stats = {"localhost": HostStats(ok=5, changed=2)}
    runs = [
        run(
            "deploy",
            0,
            RunStatus.SUCCESSFUL,
            stats=stats,
            usage=ResourceUsage(cpu_seconds=2.5, peak_memory_mib=100),
        ),
        run(
            "configure-portals",
            1,
            RunStatus.SUCCESSFUL,
            usage=ResourceUsage(cpu_seconds=1.0, peak_memory_mib=140),
        ),
    ]
    summary = summarize(
        kuma(applied=True),
        runs,
        digest=DIGEST,
        suggestions=[
            suggestion("ansible/roles/uptime_kuma/tasks/monitors.yml"),
            suggestion("ansible/playbooks/legacy-backup.yml"),
            suggestion("ansible/playbooks/kuma-deployment.yml", status="dismissed"),
        ],
        roles={"uptime_kuma", "common"},
        audit_events=7,
    )
    assert summary["ready"] is True and summary["outcome"] == "succeeded"
    assert [(s["name"], s["status"], s["durationSeconds"]) for s in summary["steps"]] == [
        ("deploy", "successful", 4.0),
        ("configure-portals", "successful", 4.0),
    ]
    assert summary["steps"][0]["changed"] == 2
    assert summary["totalSeconds"] == 8.0
    assert summary["resourcesUsed"] == {"cpuSeconds": 3.5, "peakMemoryMib": 140}
    assert [s["file"] for s in summary["suggestions"]] == ["ansible/roles/uptime_kuma/tasks/monitors.yml"]
    assert summary["audit"] == {
        "resource": "DeploymentIntent/uptime-kuma",
        "href": "/api/v1/audit?resource=DeploymentIntent%2Fuptime-kuma",
        "page": "/#/audit/uptime-kuma",
        "events": 7,
    }


def test_summary_while_the_second_step_has_not_started() -> None:
    summary = summarize(
        kuma(applied=False),
        [run("deploy", 0, RunStatus.RUNNING)],
        digest=DIGEST,
        suggestions=[],
        roles=(),
        audit_events=0,
    )
    assert summary["ready"] is False and summary["outcome"] == "running"
    assert [s["status"] for s in summary["steps"]] == ["running", "not started"]
    assert summary["totalSeconds"] is None


def test_summary_carries_the_drift_of_its_plan_only() -> None:
    intent = kuma(applied=True)
    assert intent.status is not None
    change = DriftChange(step="deploy", task="Render the compose file", host="localhost", diff="-a\n+b")
    drift = DriftStatus(digest=DIGEST, round=2, checked_at=T0, drifted=True, changes=[change])
    drifted = intent.model_copy(update={"status": intent.status.model_copy(update={"drift": drift})})
    summary = summarize(drifted, [], digest=DIGEST, suggestions=[], roles=(), audit_events=0)
    assert summary["drift"]["drifted"] is True and summary["drift"]["round"] == 2
    assert summary["drift"]["changes"][0]["task"] == "Render the compose file"
    assert summarize(drifted, [], digest="f" * 64, suggestions=[], roles=(), audit_events=0)["drift"] is None
    assert summarize(intent, [], digest=DIGEST, suggestions=[], roles=(), audit_events=0)["drift"] is None


def test_roles_named_by_the_example_playbooks() -> None:
    infra = ROOT / "examples/homelab-infra"
    # uptime_kuma depends on common (meta/main.yml): common's tasks run too, so they concern the intent.
    assert playbook_roles(infra, ["ansible/playbooks/kuma-deployment.yml"]) == {"uptime_kuma", "common"}
    assert playbook_roles(infra, ["../../etc/passwd", "ansible/playbooks/missing.yml"]) == set()


def test_roles_are_read_again_when_a_file_changes(tmp_path: Path) -> None:
    """Parsed files are cached (the summary asks on every request), but never past an edit."""
    playbook = tmp_path / "site.yml"
    playbook.write_text("- hosts: all\n  roles: [web]\n")
    meta = tmp_path / "roles" / "web" / "meta" / "main.yml"
    meta.parent.mkdir(parents=True)
    meta.write_text("dependencies: []\n")
    assert playbook_roles(tmp_path, ["site.yml"]) == {"web"}
    assert playbook_roles(tmp_path, ["site.yml"]) == {"web"}
    playbook.write_text("- hosts: all\n  roles: [web, db]\n")
    meta.write_text("dependencies: [common]\n")
    assert playbook_roles(tmp_path, ["site.yml"]) == {"web", "db", "common"}


def test_role_dependencies_are_followed_through_cycles_and_bad_meta(tmp_path: Path) -> None:
    roles = tmp_path / "roles"
    for name, meta in {
        "a": "dependencies: [b, {role: ns.coll.c}]\n",
        "b": "dependencies:\n  - name: a\n",  # a cycle
        "c": "dependencies: {not: a list}\n",
        "d": "{{ not yaml\n",
    }.items():
        (roles / name / "meta").mkdir(parents=True)
        (roles / name / "meta" / "main.yml").write_text(meta)
    assert with_dependencies(tmp_path, {"a"}, [roles]) == {"a", "b", "c"}
    assert with_dependencies(tmp_path, {"d", "missing"}, [roles]) == {"d", "missing"}
