"""The Foundation's promise, end to end, as a new user would meet it (README tour).

A real ``chiffon up`` process on the embedded default; real ``chiffonctl``
commands; real git commits into the intents repo picked up by the watcher.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers import BOMB

from .conftest import ROOT, Chiffon, start

pytestmark = pytest.mark.slow

EXAMPLE_NAMES = {"uptime-kuma", "reverse-proxy", "ollama", "nightly-updates"}


def intents_by_name(chiffon: Chiffon) -> dict[str, dict]:  # type: ignore[type-arg]
    result = chiffon.ctl("get", "intents", "-o", "json")
    assert result.code == 0, result.stderr
    return {item["metadata"]["name"]: item for item in result.json()["items"]}


def test_apply_get_edit_and_bad_files(chiffon: Chiffon) -> None:
    applied = chiffon.ctl("apply", "-f", "examples/intents/")
    assert applied.code == 0, applied.stderr
    assert {f"deploymentintent/{name} created" for name in EXAMPLE_NAMES} <= set(applied.stdout.splitlines())

    items = intents_by_name(chiffon)
    assert set(items) == EXAMPLE_NAMES
    kuma = items["uptime-kuma"]
    assert kuma["metadata"]["generation"] == 1
    assert re.fullmatch(r"[0-9a-f]{40}", kuma["status"]["observedRevision"])
    assert {c["type"] for c in kuma["status"]["conditions"]} >= {"Planned", "Approved", "Scheduled", "Ready"}
    assert chiffon.git("log", "-1", "--format=%an <%ae>") == "Erin Tester <erin@example.com>"

    # Editing the spec in git bumps the generation; the watcher sees the commit by itself.
    path = chiffon.home / "intents" / "uptime-kuma.yaml"
    text = path.read_text()
    assert "kuma_port: 3001" in text
    path.write_text(text.replace("kuma_port: 3001", "kuma_port: 3002", 1))
    chiffon.git("commit", "-qam", "move Kuma to port 3002")
    chiffon.wait_for(
        lambda: intents_by_name(chiffon)["uptime-kuma"]["metadata"]["generation"] == 2,
        "generation 2 after a spec edit",
    )

    # A comment-only edit moves the revision, not the generation.
    path.write_text("# a new comment\n" + path.read_text())
    chiffon.git("commit", "-qam", "comment only")
    sha = chiffon.git("rev-parse", "HEAD")
    chiffon.wait_for(
        lambda: intents_by_name(chiffon)["uptime-kuma"]["status"]["observedRevision"] == sha,
        "the comment commit to be observed",
    )
    assert intents_by_name(chiffon)["uptime-kuma"]["metadata"]["generation"] == 2

    # Bad files are reported one line each and the others are still served.
    bad = {
        "malformed.yaml": "apiVersion: chiffon.dev/v1alpha1\nkind: [unclosed\n",
        "bomb.yaml": BOMB,
        "huge.yaml": "# " + "x" * 1_100_000 + "\n",
        "invalid.yaml": (ROOT / "examples/intents/reverse-proxy.yaml")
        .read_text()
        .replace("name: reverse-proxy", "name: Not_DNS", 1),
    }
    for name, content in bad.items():
        (chiffon.home / "intents" / name).write_text(content)
    chiffon.git("add", *bad)
    chiffon.git("commit", "-qm", "bad files")
    sources = chiffon.wait_for(
        lambda: (r := chiffon.ctl("get", "sources")).stdout.count("error:") >= 4 and r, "file errors reported"
    )
    for name in bad:
        assert f"error: {name}" in sources.stdout
    assert set(intents_by_name(chiffon)) == EXAMPLE_NAMES


def conditions(chiffon: Chiffon, name: str) -> dict[str, tuple[str, str]]:
    item = intents_by_name(chiffon)[name]
    return {c["type"]: (c["status"], c["reason"]) for c in item["status"]["conditions"]}


def test_manual_approval_is_bound_to_the_plan(chiffon: Chiffon, tmp_path: Path) -> None:
    """The README's approval walk-through: plan, approve, stale approvals refused."""
    manual = tmp_path / "proxy.yaml"
    manual.write_text(
        (ROOT / "examples/intents/reverse-proxy.yaml")
        .read_text()
        .replace("approval: Auto", "approval: Manual")
    )
    assert chiffon.ctl("apply", "-f", str(manual)).code == 0
    chiffon.wait_for(
        lambda: conditions(chiffon, "reverse-proxy").get("Approved") == ("False", "AwaitingApproval"),
        "the plan to wait for approval",
    )
    item = intents_by_name(chiffon)["reverse-proxy"]
    digest = item["status"]["plan"]["digest"]
    assert f"chiffonctl approve reverse-proxy --plan {digest[:12]}" in item["status"]["blockedBy"]
    described = chiffon.ctl("describe", "intent", "reverse-proxy")
    assert f"digest:      {digest}" in described.stdout and "AwaitingApproval" in described.stdout
    head = chiffon.git("rev-parse", "HEAD")

    stale = chiffon.ctl("approve", "reverse-proxy", "--plan", "0" * 12)
    assert stale.code == 2 and "is stale" in stale.stderr
    approved = chiffon.ctl("approve", "reverse-proxy", "--plan", digest[:12], "--reason", "reviewed")
    assert approved.code == 0, approved.stderr
    chiffon.wait_for(
        lambda: conditions(chiffon, "reverse-proxy").get("Approved") == ("True", "Approved"),
        "the approval to be seen by the controller",
    )
    assert chiffon.git("rev-parse", "HEAD") == head  # approving never commits
    # The embedded infra agent runs the playbook for real, against localhost.
    waited = chiffon.ctl("wait", "intent/reverse-proxy", "--for=condition=Ready", "--timeout", "90s")
    assert waited.code == 0, waited.stderr
    runs = chiffon.ctl("get", "runs", "--intent", "reverse-proxy", "-o", "json").json()["items"]
    assert [(run["status"], run["rc"]) for run in runs] == [("successful", 0)]
    assert list((chiffon.home / "lab").rglob("*")), "the playbook should have written into the lab root"

    # A changed spec makes a new plan; the old approval no longer counts.
    manual.write_text(manual.read_text().replace("limit: localhost", "limit: localhost,unraid", 1))
    assert chiffon.ctl("apply", "-f", str(manual)).code == 0
    chiffon.wait_for(
        lambda: conditions(chiffon, "reverse-proxy").get("Approved") == ("False", "PlanChanged"),
        "the new plan to need a new approval",
    )


def test_validate_diff_describe_delete(chiffon: Chiffon, tmp_path: Path) -> None:
    assert chiffon.ctl("apply", "-f", "examples/intents/").code == 0

    unchanged = chiffon.ctl("diff", "-f", "examples/intents/uptime-kuma.yaml")
    assert (unchanged.code, unchanged.stdout) == (0, "")
    edited = tmp_path / "kuma.yaml"
    edited.write_text((ROOT / "examples/intents/uptime-kuma.yaml").read_text().replace("Manual", "Auto"))
    changes = chiffon.ctl("diff", "-f", str(edited))
    assert (
        changes.code == 1
        and "-  approval: Manual" in changes.stdout
        and "+  approval: Auto" in changes.stdout
    )
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        "apiVersion: chiffon.dev/v1alpha1\nkind: DeploymentIntent\nmetadata: {name: x}\nspec: {}\n"
    )
    assert chiffon.ctl("diff", "-f", str(broken)).code == 2

    invalid = chiffon.ctl("validate", str(broken))
    assert invalid.code == 1 and f"{broken}:4: spec.steps: Field required" in invalid.stderr

    table = chiffon.ctl("get", "intents")
    assert table.stdout.splitlines()[0].split()[:3] == ["NAME", "SERVICE", "STEPS"]
    assert "┃" not in table.stdout and "\x1b[" not in table.stdout  # plain when not a TTY

    described = chiffon.ctl("describe", "intent", "uptime-kuma")
    assert described.code == 0
    assert "Conditions:" in described.stdout and "AwaitingApproval" in described.stdout
    assert "Plan:" in described.stdout and "digest:" in described.stdout
    assert "intent.created" in described.stdout

    assert chiffon.ctl("delete", "intent", "nightly-updates").code == 0
    missing = chiffon.ctl("get", "intents", "nightly-updates")
    assert missing.code == 1 and "not found" in missing.stderr
    assert not (chiffon.home / "intents" / "nightly-updates.yaml").exists()


def test_unreachable_server_is_one_clear_line(tmp_path: Path) -> None:
    offline = Chiffon(tmp_path, "http://127.0.0.1:9", None, tmp_path / "none.log")  # type: ignore[arg-type]
    result = offline.ctl("get", "intents")
    assert result.code == 2 and "cannot reach the Chiffon server at http://127.0.0.1:9" in result.stderr
    assert "Traceback" not in result.stderr


def test_up_refuses_to_listen_beyond_loopback_without_a_token(tmp_path: Path) -> None:
    process, log, _ = start(tmp_path / "home", "--host", "0.0.0.0")
    assert process.wait(timeout=30) == 2
    assert "refusing to listen on 0.0.0.0 without authentication" in log.read_text()


def test_second_up_on_the_same_port_says_so(chiffon: Chiffon, tmp_path: Path) -> None:
    port = int(chiffon.server.rsplit(":", 1)[1])
    process, log, _ = start(tmp_path / "other", port=port)
    assert process.wait(timeout=30) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in log.read_text()
