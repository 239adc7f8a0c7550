"""The seed scenario, end to end on PostgreSQL + RabbitMQ with real ansible (issue: audit, drift, Kuma).

A person asks for "Deploy Kuma Uptime, add existing portals to config" through
``chiffonctl chat``; the intent is committed, planned with both Kuma playbooks,
approved, checked for capacity and run by the infra agent; it ends ``Ready``.
The controller's quick scan then produces suggestions for the playbooks that
ran, and ``chiffonctl audit --service uptime-kuma`` tells the whole story —
request, plan, approval, both runs, the suggestions — which the audit git repo
holds too, one signed-off commit per event.

Then reality moves: the compose file is edited by hand, and the next drift
check (``driftDetection.interval: 1m``) sets ``Drifted=True`` with the diff.

The failing variant: an intent whose step cannot write where it must fails;
its post-mortem names the task, the host and the error, and carries the
suggestion the scan made from that failure.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ALICE

from .distributed import INFRA, Lab, open_lab, sweep_queues  # noqa: F401  (sweep_queues: a fixture)

# The drift check waits up to an interval (1m) plus a round of check runs.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

REQUEST = "Deploy Kuma Uptime, add existing portals to config"
KUMA = "uptime-kuma"

BROKEN = """\
apiVersion: chiffon.dev/v1alpha1
kind: DeploymentIntent
metadata:
  name: broken-kuma
spec:
  service: broken-kuma
  steps:
    - name: deploy
      playbook: ansible/playbooks/kuma-deployment.yml
  inventory: ansible/inventory/hosts.yml
  limit: localhost
  vars: {homelab_root: /proc/chiffon-cannot-write-here}
  approval: Auto
"""


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[Lab]:
    async with open_lab(tmp_path, compiler_default_limit="localhost") as running:
        running.subject = KUMA
        yield running


def audit_items(lab: Lab, *args: str) -> list[dict[str, Any]]:
    found = lab.ctl("audit", *args, "--limit", "500", "-o", "json")
    assert found.code == 0, found.stderr
    items: list[dict[str, Any]] = found.json()["items"]
    return items


def audit_log(lab: Lab) -> str:
    done = subprocess.run(
        ["git", "-C", str(lab.tmp / "home" / "audit"), "log", "--format=%s%n%b"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout


async def test_kuma_from_the_request_to_the_audit_repo_then_drift(lab: Lab) -> None:
    await lab.until(lambda: lab.agent(INFRA), "the infra agent's first heartbeat", within=60)
    chat = lab.ctl("chat", REQUEST, "--yes", "--approve", timeout=300)
    assert chat.code == 0, f"{chat.stdout}{chat.stderr}\n{lab.logs()}"
    assert "ansible/playbooks/kuma-deployment.yml" in chat.stdout
    assert "ansible/playbooks/kuma-config-update.yml" in chat.stdout
    assert f"deploymentintent/{KUMA} is Ready" in chat.stdout
    compose = lab.tmp / "lab" / "stacks" / "uptime-kuma" / "docker-compose.yml"
    assert compose.is_file()

    # The quick scan after the runs: suggestions about the files the plan ran, audited by service.
    story = await lab.until(
        lambda: (
            (items := audit_items(lab, "--service", KUMA))
            and "suggestion" in {i["action"] for i in items}
            and items
        ),
        "the suggestions to be audited under uptime-kuma",
    )
    actions = [item["action"] for item in story]
    assert {"chat.propose", "chat.confirm", "plan", "approve", "suggestion"} <= set(actions), actions
    assert actions.count("dispatch") == 2 and actions.count("run.result") == 2, actions
    suggested = [item for item in story if item["action"] == "suggestion"]
    # Only files the plan runs: the Kuma playbooks, the uptime_kuma role and common (its dependency).
    ran = ("ansible/playbooks/kuma-", "ansible/roles/uptime_kuma/", "ansible/roles/common/")
    files = {s["details"]["file"] for s in suggested}
    assert files and all(file.startswith(ran) for file in files), files
    assert "ansible/roles/uptime_kuma/tasks/monitors.yml" in files
    listed = lab.ctl("suggestions", "list", "-o", "json")
    assert listed.code == 0 and listed.json()["items"], listed.stderr
    approvals = [item for item in story if item["action"] == "approve"]
    assert approvals[0]["actor"] == "Erin Tester <erin@example.com>"

    log = await lab.until(
        lambda: (
            (text := audit_log(lab)) and "suggestion Suggestion/" in text and "run.result" in text and text
        ),
        "the audit repo to hold the runs and the suggestions",
    )
    assert f"chat.confirm DeploymentIntent/{KUMA}: success" in log
    assert "Signed-off-by: Erin Tester <erin@example.com>" in log

    # Drift: check every minute, then change the managed compose file by hand.
    source = lab.repo.path / f"{KUMA}.yaml"
    text = source.read_text()
    assert "driftDetection" not in text
    await lab.repo.commit(
        {f"{KUMA}.yaml": (text.rstrip("\n") + "\n  driftDetection: {interval: 1m, mode: Report}\n").encode()},
        "Check uptime-kuma for drift every minute",
        ALICE,
    )
    await lab.until(
        lambda: lab.intent().get("metadata", {}).get("generation") == 2, "the new generation", within=30
    )
    compose.write_text(compose.read_text().replace("3001", "3999"))
    drifted = await lab.until(
        lambda: (c := lab.condition("Drifted")) and c[0] == "True" and c,
        "Drifted=True after the hand edit",
        within=150,
    )
    assert drifted[1] == "ChangesFound" and "docker-compose.yml" in str(lab.intent()["status"]["drift"]), (
        drifted
    )
    changes = lab.intent()["status"]["drift"]["changes"]
    assert any("3999" in change["diff"] and "3001" in change["diff"] for change in changes), changes
    assert lab.condition("Ready")[:2] == ("True", "Applied")  # type: ignore[index]
    assert any(run["checkMode"] for run in lab.runs())
    described = lab.ctl("describe", "intent", KUMA)
    assert "Drifted" in described.stdout and "ChangesFound" in described.stdout
    drift_audit = [item for item in audit_items(lab, "--service", KUMA) if item["action"] == "drift"]
    assert drift_audit and drift_audit[0]["outcome"] == "failure"


async def test_a_failing_run_leaves_a_post_mortem_with_a_suggestion(lab: Lab) -> None:
    await lab.until(lambda: lab.agent(INFRA), "the infra agent's first heartbeat", within=60)
    lab.subject = "broken-kuma"
    await lab.repo.commit(
        {"broken-kuma.yaml": BROKEN.encode()}, "Deploy Kuma somewhere it cannot write", ALICE
    )
    failed = await lab.until(
        lambda: next((run for run in lab.runs() if run["status"] == "failed"), None),
        "the first failed run",
        within=120,
    )
    suggestion = await lab.until(
        lambda: next(
            (
                item
                for item in (lab.ctl("suggestions", "list", "-o", "json").json()["items"])
                if item["category"] == "run/run-failed"
            ),
            None,
        ),
        "the suggestion made from the failure",
    )
    assert "broken-kuma" in suggestion["reasoning"] and failed["id"] in suggestion["reasoning"]
    assert f"chiffonctl postmortem {failed['id']}" in suggestion["reasoning"]

    postmortem = lab.ctl("postmortem", failed["id"], "-o", "json")
    assert postmortem.code == 0, postmortem.stderr
    record = postmortem.json()
    assert record["outcome"] == "failed"
    [first, *_] = record["failed"]
    assert first["host"] == "localhost" and first["task"]
    assert any(s["category"] == "run/run-failed" for s in record["suggestions"]), record["suggestions"]
    assert record["resources"]["agent"]  # the agent's capacity as last reported
    text = lab.ctl("postmortem", failed["id"])
    assert text.code == 0 and "run/run-failed" in text.stdout, text.stdout

    failures = audit_items(lab, "--failed", "--service", "broken-kuma")
    assert any(item["action"] == "run.result" for item in failures), failures
