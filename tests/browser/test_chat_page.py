"""The chat page end to end, in headless Chromium against a real ``chiffon up``.

Each test starts its own server (``tests/e2e`` helpers), applies or asks for
intents, and drives the page the way a person would: it reads what the page
says, clicks its buttons and checks the state of the world through the API.
Screenshots of each stage land in ``tests/browser/artifacts/``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from .conftest import ROOT, Chiffon, LabFactory, git_repo_copy, shot

pytestmark = pytest.mark.slow

KUMA_REQUEST = "Deploy Kuma Uptime, add existing portals to config"
KUMA_PLAYBOOKS = ["ansible/playbooks/kuma-deployment.yml", "ansible/playbooks/kuma-config-update.yml"]
RUN_TIMEOUT_MS = 120_000


def get(lab: Chiffon, path: str, token: str | None = None) -> Any:
    request = urllib.request.Request(f"{lab.server}/api/v1{path}")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=15) as response:
        return json.loads(response.read())


def conditions(lab: Chiffon, name: str, token: str | None = None) -> dict[str, tuple[str, str]]:
    item = get(lab, f"/intents/{name}", token)
    return {c["type"]: (c["status"], c["reason"]) for c in (item.get("status") or {}).get("conditions", [])}


def apply(lab: Chiffon, *paths: str | Path) -> None:
    for path in paths:
        result = lab.ctl("apply", "-f", str(path))
        assert result.code == 0, result.stderr


def kuma_without_cpu(tmp_path: Path) -> Path:
    """The example uptime-kuma intent without its one-core request.

    The scheduler counts a core as free from the agent's load average; on a
    busy two-core test machine that may be none for minutes, and the run would
    wait for capacity (which the page shows, but this test is about the run).
    """
    text = (ROOT / "examples/intents/uptime-kuma.yaml").read_text()
    assert "    cpuCores: 1\n" in text
    path = tmp_path / "uptime-kuma.yaml"
    path.write_text(text.replace("    cpuCores: 1\n", ""))
    return path


def by_id(value: str) -> str:
    return f'[data-testid="{value}"]'


def follow(page: Any, name: str) -> Any:
    """Open the intent's tracker from the side list; returns its locator."""
    page.locator(by_id(f"follow-{name}")).click()
    tracker = page.locator(f'{by_id("tracker")}[data-intent="{name}"]')
    tracker.wait_for()
    return tracker


def wait_planned(lab: Chiffon, name: str) -> str:
    lab.wait_for(
        lambda: conditions(lab, name).get("Approved") == ("False", "AwaitingApproval"),
        f"{name} to wait for approval",
        timeout=60,
    )
    return str(get(lab, f"/intents/{name}")["status"]["plan"]["digest"])


def test_page_serves_itself_and_lists_intents(lab: Chiffon, page: Any) -> None:
    apply(lab, ROOT / "examples/intents/")
    lab.wait_for(lambda: conditions(lab, "reverse-proxy").get("Ready", ("",))[0] == "True", "Ready", 90)

    with urllib.request.urlopen(f"{lab.server}/", timeout=10) as response:
        policy = response.headers["Content-Security-Policy"]
        assert "default-src 'self'" in policy and "script-src 'self'" in policy
        assert response.headers["Cache-Control"] == "no-cache"
        assert '<script type="module" src="/static/chat.js">' in response.read().decode()
    with urllib.request.urlopen(f"{lab.server}/docs", timeout=10) as response:
        assert response.status == 200

    page.goto(lab.server)
    for name in ("uptime-kuma", "reverse-proxy", "ollama", "nightly-updates"):
        page.locator(by_id(f"intent-{name}")).wait_for()
    kuma = page.locator(by_id("intent-uptime-kuma"))
    assert kuma.locator(by_id("condition-Planned")).get_attribute("data-status") == "True"
    assert kuma.locator(by_id("condition-Approved")).get_attribute("data-reason") == "AwaitingApproval"
    assert "waiting for approval" in kuma.locator(by_id("blocked-by")).inner_text()
    proxy = page.locator(by_id("intent-reverse-proxy"))
    proxy.locator(f'{by_id("condition-Ready")}[data-status="True"]').wait_for()
    shot(page, "intents-list")

    # Narrow screens: one column, nothing wider than the window.
    page.set_viewport_size({"width": 390, "height": 844})
    page.locator(by_id("intent-uptime-kuma")).wait_for()
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page is {overflow}px wider than a 390px window"
    shot(page, "intents-list-narrow")


def test_approve_watch_the_run_and_read_the_summary(lab: Chiffon, page: Any, tmp_path: Path) -> None:
    apply(lab, ROOT / "examples/intents/reverse-proxy.yaml", kuma_without_cpu(tmp_path))
    digest = wait_planned(lab, "uptime-kuma")

    page.goto(lab.server)
    tracker = follow(page, "uptime-kuma")
    steps = tracker.locator(f"{by_id('tracker-plan')} {by_id('plan-step')}")
    steps.first.wait_for()
    texts = steps.all_inner_texts()
    assert len(texts) == 2
    assert texts[0].startswith("Step 1 of 2 — deploy") and KUMA_PLAYBOOKS[0] in texts[0]
    assert texts[1].startswith("Step 2 of 2 — configure-portals") and KUMA_PLAYBOOKS[1] in texts[1]
    assert tracker.locator(by_id("resources")).inner_text() == "512 MiB memory"
    assert tracker.locator(by_id("risk")).first.inner_text() == "High risk"
    approve = tracker.locator(by_id("approve"))
    assert approve.get_attribute("data-digest") == digest
    shot(page, "approve-plan")
    approve.click()

    # The output arrives while the run is going, not all at the end.
    tracker.locator(by_id("event")).first.wait_for(timeout=RUN_TIMEOUT_MS)
    assert tracker.locator(by_id("summary")).count() == 0
    assert tracker.get_attribute("data-phase") == "running"
    shot(page, "run-streaming")

    summary = tracker.locator(by_id("summary"))
    summary.wait_for(timeout=RUN_TIMEOUT_MS)
    assert summary.get_attribute("data-outcome") == "succeeded"
    rows = summary.locator(by_id("summary-step"))
    assert rows.count() == 2
    assert [rows.nth(i).get_attribute("data-status") for i in range(2)] == ["successful", "successful"]
    assert "in all" in summary.locator(by_id("summary-total")).inner_text()
    assert "CPU time" in summary.locator(by_id("summary-used")).inner_text()
    runs = tracker.locator(by_id("run"))
    assert runs.count() == 2
    for index in range(2):
        assert runs.nth(index).locator(by_id("event")).count() > 3
    assert tracker.locator('[data-testid="event"][data-status="changed"]').count() > 0
    assert conditions(lab, "uptime-kuma")["Ready"] == ("True", "Applied")
    shot(page, "summary")

    summary.locator(by_id("audit-link")).click()
    view = page.locator(by_id("audit-view"))
    view.locator(by_id("audit-event")).first.wait_for()
    actions = view.locator(by_id("audit-event")).evaluate_all("nodes => nodes.map(n => n.dataset.action)")
    assert {"plan", "approve", "dispatch", "run.result", "applied"} <= set(actions)
    assert "/api/v1/audit?resource=DeploymentIntent%2Fuptime-kuma" in summary.locator(
        by_id("audit-json")
    ).get_attribute("href")
    shot(page, "audit-trail")


def test_reject_needs_a_reason(lab: Chiffon, page: Any) -> None:
    apply(lab, ROOT / "examples/intents/uptime-kuma.yaml")
    wait_planned(lab, "uptime-kuma")

    page.goto(lab.server)
    tracker = follow(page, "uptime-kuma")
    tracker.locator(by_id("reject")).click()
    tracker.locator(by_id("reject-confirm")).click()
    error = tracker.locator(by_id("approval-error"))
    assert "needs a reason" in error.inner_text()
    time.sleep(0.5)
    assert conditions(lab, "uptime-kuma")["Approved"] == ("False", "AwaitingApproval")
    shot(page, "reject-without-reason")

    tracker.locator(by_id("reject-reason")).fill("not during the backup window")
    tracker.locator(by_id("reject-confirm")).click()
    state = tracker.locator(by_id("approval-state"))
    state.filter(has_text="Rejected").wait_for(timeout=30_000)
    assert conditions(lab, "uptime-kuma")["Approved"] == ("False", "Rejected")
    rejected = get(lab, "/audit?resource=DeploymentIntent%2Fuptime-kuma&action=reject")["items"]
    assert rejected[0]["details"]["reason"] == "not during the backup window"
    shot(page, "rejected")


def test_a_stale_digest_is_refused_and_the_new_plan_shown(lab: Chiffon, page: Any, tmp_path: Path) -> None:
    apply(lab, ROOT / "examples/intents/uptime-kuma.yaml")
    old = wait_planned(lab, "uptime-kuma")

    page.goto(lab.server)
    tracker = follow(page, "uptime-kuma")
    approve = tracker.locator(by_id("approve"))
    assert approve.get_attribute("data-digest") == old

    # Someone changes the intent while this page still shows the old plan: hold the page's
    # reads of the intent at what it saw, so the click goes out with the old digest.
    stale = json.dumps(get(lab, "/intents/uptime-kuma"))
    frozen = {"on": True}

    def hold(route: Any) -> None:
        if frozen["on"] and route.request.method == "GET":
            route.fulfill(status=200, content_type="application/json", body=stale)
        else:
            route.continue_()

    page.route(re.compile(r".*/api/v1/intents/uptime-kuma$"), hold)
    edited = tmp_path / "kuma.yaml"
    edited.write_text((ROOT / "examples/intents/uptime-kuma.yaml").read_text().replace("3001", "3002"))
    apply(lab, edited)
    lab.wait_for(
        lambda: (
            (get(lab, "/intents/uptime-kuma")["status"].get("plan") or {}).get("digest") not in {None, old}
        ),
        "the new plan",
        timeout=60,
    )
    new = get(lab, "/intents/uptime-kuma")["status"]["plan"]["digest"]

    approve.click()
    error = tracker.locator(by_id("approval-error"))
    error.filter(has_text="is stale").wait_for()
    shot(page, "stale-digest")
    frozen["on"] = False
    tracker.locator(f'{by_id("approve")}[data-digest="{new}"]').wait_for()
    assert "is stale" in tracker.locator(by_id("approval-error")).inner_text()
    tracker.locator(by_id("plan-changed")).wait_for()
    assert conditions(lab, "uptime-kuma")["Approved"][0] == "False"
    shot(page, "new-plan-after-stale")

    tracker.locator(by_id("approve")).click()
    lab.wait_for(lambda: conditions(lab, "uptime-kuma")["Approved"][0] == "True", "the new plan approved")
    approved = get(lab, "/audit?resource=DeploymentIntent%2Fuptime-kuma&action=approve")["items"]
    assert [event["details"]["digest"] for event in approved] == [new]


SLOW_PLAYBOOK = """\
- name: Take a while
  hosts: all
  gather_facts: false
  tasks:
    - name: Say hello
      ansible.builtin.debug:
        msg: hello
    - name: Wait for a minute
      ansible.builtin.pause:
        seconds: 60
    - name: Say goodbye
      ansible.builtin.debug:
        msg: goodbye
"""

SLOW_INTENT = """\
apiVersion: chiffon.dev/v1alpha1
kind: DeploymentIntent
metadata:
  name: slow-job
spec:
  steps:
    - name: wait
      playbook: ansible/playbooks/slow.yml
  inventory: ansible/inventory/hosts.yml
  limit: localhost
  approval: Manual
"""


@pytest.mark.timeout(240)
def test_abort_stops_the_run_in_flight(start_lab: LabFactory, page: Any, tmp_path: Path) -> None:
    repo = tmp_path / "homelab-infra"
    git_repo_copy(ROOT / "examples/homelab-infra", repo)
    (repo / "ansible/playbooks/slow.yml").write_text(SLOW_PLAYBOOK)
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True, timeout=30)
    subprocess.run(
        ["git", "-c", "user.name=Erin", "-c", "user.email=erin@example.com", "commit", "-qm", "slow"],
        cwd=repo,
        check=True,
        timeout=30,
    )
    lab = start_lab(infra_repo=repo)
    intent = tmp_path / "slow.yaml"
    intent.write_text(SLOW_INTENT)
    apply(lab, intent)
    wait_planned(lab, "slow-job")

    page.goto(lab.server)
    tracker = follow(page, "slow-job")
    tracker.locator(by_id("approve")).click()
    tracker.locator(by_id("event"), has_text="Wait for a minute").wait_for(timeout=RUN_TIMEOUT_MS)
    shot(page, "abort-run-in-flight")
    started = time.monotonic()
    tracker.locator(by_id("abort")).click()
    tracker.locator(by_id("abort-reason")).fill("wrong evening for this")
    tracker.locator(by_id("abort-confirm")).click()
    tracker.locator(by_id("abort-sent")).wait_for()

    summary = tracker.locator(by_id("summary"))
    summary.wait_for(timeout=60_000)
    assert time.monotonic() - started < 45, "the run should stop well before its minute of waiting is over"
    assert summary.get_attribute("data-outcome") == "canceled"
    assert tracker.locator(by_id("run-status")).get_attribute("data-status") == "canceled"
    runs = get(lab, "/runs?intent=slow-job")["items"]
    assert [run["status"] for run in runs] == ["canceled"]
    assert conditions(lab, "slow-job")["Approved"] == ("False", "Rejected")
    tracker.locator(by_id("approval-state")).filter(has_text="Rejected").wait_for()
    assert tracker.locator(by_id("event"), has_text="Say goodbye").count() == 0
    shot(page, "aborted")


ADMIN_TOKEN = "browser-test-admin-token"


def viewer_token(lab: Chiffon) -> str:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "chiffon"), "token", "create", "vic", "--role", "viewer"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin", "HOME": str(lab.home.parent), "CHIFFON_HOME": str(lab.home)},
    )
    assert done.returncode == 0, done.stderr
    found = re.search(r"chf_[A-Za-z0-9_-]+", done.stdout)
    assert found, done.stdout
    return found.group(0)


def test_the_page_asks_for_a_token_and_honours_its_role(start_lab: LabFactory, page: Any) -> None:
    lab = start_lab(token=ADMIN_TOKEN)
    apply(lab, ROOT / "examples/intents/uptime-kuma.yaml")
    lab.wait_for(
        lambda: conditions(lab, "uptime-kuma", ADMIN_TOKEN).get("Approved") == ("False", "AwaitingApproval"),
        "a plan waiting for approval",
        timeout=60,
    )
    viewer = viewer_token(lab)

    page.goto(lab.server)
    form = page.locator(by_id("token-form"))
    form.wait_for()
    assert page.locator(by_id("intent-uptime-kuma")).count() == 0
    shot(page, "token-asked")

    page.locator(by_id("token-input")).fill("not-the-token")
    page.locator(by_id("token-save")).click()
    page.locator(by_id("token-message")).filter(has_text="refused").wait_for()

    page.locator(by_id("token-input")).fill(viewer)
    page.locator(by_id("token-save")).click()
    page.locator(by_id("intent-uptime-kuma")).wait_for()
    assert form.is_hidden()
    page.locator(by_id("whoami")).filter(has_text="viewer").wait_for()
    tracker = follow(page, "uptime-kuma")
    tracker.locator(by_id("approve-not-allowed")).wait_for()
    assert tracker.locator(by_id("approve")).count() == 0
    shot(page, "token-viewer")

    # The token lives in the tab's sessionStorage: a reload keeps it; no cookie is set.
    page.evaluate(f"sessionStorage.setItem('chiffon.token', {json.dumps(ADMIN_TOKEN)})")
    page.reload()
    page.locator(by_id("whoami")).filter(has_text="admin").wait_for()
    assert page.context.cookies() == []
    tracker = follow(page, "uptime-kuma")
    tracker.locator(by_id("approve")).click()
    lab.wait_for(
        lambda: conditions(lab, "uptime-kuma", ADMIN_TOKEN)["Approved"][0] == "True", "approved (token)"
    )
    approved = get(lab, "/audit?resource=DeploymentIntent%2Fuptime-kuma&action=approve", ADMIN_TOKEN)["items"]
    assert "admin token" in approved[0]["actor"]


@pytest.mark.timeout(300)
def test_chat_flow_from_request_to_summary(lab: Chiffon, page: Any) -> None:
    """The issue's "done when": type the Kuma request, confirm, approve, watch, read the summary."""
    page.goto(lab.server)
    page.locator(by_id("message-input")).fill(KUMA_REQUEST)
    page.locator(by_id("send")).click()
    proposal = page.locator(by_id("proposal"))
    proposal.wait_for(timeout=120_000)
    steps = proposal.locator(by_id("plan-step")).all_inner_texts()
    assert len(steps) == 2, steps
    for index, (text, playbook) in enumerate(zip(steps, KUMA_PLAYBOOKS, strict=True)):
        assert text.startswith(f"Step {index + 1} of 2 — ") and playbook in text, text
    assert proposal.locator(by_id("risk")).first.inner_text().endswith("risk")
    assert proposal.locator(by_id("estimate")).inner_text()
    assert "apiVersion: chiffon.dev/v1alpha1" in proposal.locator(by_id("proposal-yaml")).text_content()
    shot(page, "chat-proposal")

    proposal.locator(by_id("confirm")).click()
    proposal.locator(by_id("proposal-status")).filter(has_text="Committed").wait_for(timeout=30_000)
    tracker = proposal.locator(by_id("tracker"))
    name = tracker.get_attribute("data-intent")
    assert name
    approve = tracker.locator(by_id("approve"))
    approve.wait_for(timeout=60_000)
    assert approve.get_attribute("data-digest") == get(lab, f"/intents/{name}")["status"]["plan"]["digest"]
    tracker_steps = tracker.locator(f"{by_id('tracker-plan')} {by_id('plan-step')}").all_inner_texts()
    assert all(book in text for text, book in zip(tracker_steps, KUMA_PLAYBOOKS, strict=True)), tracker_steps
    shot(page, "chat-approve")
    approve.click()

    tracker.locator(by_id("event")).first.wait_for(timeout=RUN_TIMEOUT_MS)
    assert tracker.locator(by_id("summary")).count() == 0
    shot(page, "chat-run-streaming")
    summary = tracker.locator(by_id("summary"))
    summary.wait_for(timeout=RUN_TIMEOUT_MS)
    assert summary.get_attribute("data-outcome") == "succeeded"
    assert summary.locator(by_id("summary-step")).count() == 2
    link = summary.locator(by_id("audit-link"))
    assert link.get_attribute("href") == f"#/audit/{name}"
    shot(page, "chat-summary")
    link.click()
    page.locator(by_id("audit-event")).first.wait_for()
    actions = page.locator(by_id("audit-event")).evaluate_all("nodes => nodes.map(n => n.dataset.action)")
    assert {"approve", "dispatch", "run.result"} <= set(actions)
    shot(page, "chat-audit-trail")

    # A reload restores the conversation (its id is kept in the tab's sessionStorage).
    page.goto(f"{lab.server}/#/")
    page.reload()
    restored = page.locator(by_id("proposal"))
    restored.wait_for()
    assert restored.get_attribute("data-status") == "committed"
    restored.locator(by_id("summary")).wait_for(timeout=30_000)

    # Modify: the next message goes out about this intent.
    restored.locator(f"{by_id('tracker')} {by_id('modify')}").click()
    page.locator(by_id("modify-banner")).filter(has_text=name).wait_for()
    page.locator(by_id("message-input")).fill("Check the portals every 30 seconds")
    with page.expect_request(lambda r: r.url.endswith("/api/v1/chat") and r.method == "POST") as sent:
        page.locator(by_id("send")).click()
    assert json.loads(sent.value.post_data or "{}")["intent"] == name
    page.locator(f"{by_id('proposal')}, {by_id('chat-error')}").nth(1).wait_for(timeout=120_000)
    shot(page, "chat-modify")
