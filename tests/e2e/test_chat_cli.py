"""The chat in a terminal, as a new user meets it: ``chiffon up``, then ``chiffonctl chat``.

The archetypal request goes through a real ``chiffon up`` (embedded default,
offline compiler, the bundled example): the proposal shows a two-step plan
with both Kuma playbooks, ``--yes --approve`` commits and approves it, the
runs' output streams, and the command ends on the summary with the audit
link. The audit by service ends with the suggestions the controller made after
the runs. Then a modification makes a new generation, an unknown service is
refused with the closest matches, and the audit holds the chat decisions.
"""

from __future__ import annotations

import subprocess

import pytest

from .conftest import Chiffon

pytestmark = pytest.mark.slow

REQUEST = "Deploy Kuma Uptime, add existing portals to config"


def test_chat_from_request_to_summary(chiffon: Chiffon) -> None:
    chat = chiffon.ctl("chat", REQUEST, "--yes", "--approve", timeout=240)

    out = chat.stdout
    assert chat.code == 0, f"{out}{chat.stderr}\nserver log:\n{chiffon.log.read_text()[-4000:]}"
    assert "new deploymentintent/uptime-kuma: uptime-kuma: 2 steps on localhost" in out, out
    assert "1. deploy: Deploy Uptime Kuma" in out and "ansible/playbooks/kuma-deployment.yml" in out
    assert "2. configure: Add existing portals" in out and "ansible/playbooks/kuma-config-update.yml" in out
    assert "committed " in out and "approved" in out
    assert "TASK [uptime_kuma" in out and "PLAY RECAP" in out  # the runs' output, streamed
    assert "deploymentintent/uptime-kuma is Ready" in out
    assert "Summary of deploymentintent/uptime-kuma:" in out
    assert "deploy: successful" in out and "configure: successful" in out
    assert "audit trail: http://127.0.0.1:" in out and "/api/v1/audit?" in out
    assert (chiffon.home / "lab" / "stacks" / "uptime-kuma" / "docker-compose.yml").is_file()
    # "existing portals": the list homelab-infra keeps (group_vars/all.yml), one monitor file each.
    assert "Uptime Kuma watches Unraid, Home Assistant, Nextcloud, Jellyfin, Portainer" in out
    monitors = chiffon.home / "lab" / "stacks" / "uptime-kuma" / "autokuma" / "static-monitors"
    assert sorted(p.name for p in monitors.glob("*.json")) == [
        "home-assistant.json",
        "jellyfin.json",
        "nextcloud.json",
        "portainer.json",
        "unraid.json",
    ]

    change = chiffon.ctl("chat", "change the port to 3002", "--modify", "uptime-kuma", "--yes", "--no-follow")
    assert change.code == 0, change.stderr
    assert "change deploymentintent/uptime-kuma" in change.stdout and "+    kuma_port: 3002" in change.stdout
    item = chiffon.ctl("get", "intents", "uptime-kuma", "-o", "json").json()
    assert item["metadata"]["generation"] == 2 and item["spec"]["vars"] == {"kuma_port": 3002}

    refused = chiffon.ctl("chat", "deploy a minecraft server", "--yes")
    assert refused.code == 1
    assert 'nothing in homelab-infra matches "deploy a minecraft server"' in refused.stderr

    not_asked = chiffon.ctl("chat", "deploy ollama on the gpu desktop")  # no --yes, no terminal
    assert not_asked.code == 1 and "pass --yes" in not_asked.stderr
    assert chiffon.ctl("get", "intents", "ollama").code == 1  # nothing committed

    # The whole story by service: the request, the plan, the approval, both runs and their results,
    # and the suggestions the scan after the runs made about the files they ran.
    def story() -> list[str] | None:
        audit = chiffon.ctl("audit", "--service", "uptime-kuma", "--limit", "500", "-o", "json")
        assert audit.code == 0, audit.stderr
        found = [event["action"] for event in audit.json()["items"]]
        return found if "suggestion" in found else None

    actions = chiffon.wait_for(story, "the suggestions to be audited under uptime-kuma")
    assert {"chat.propose", "chat.confirm", "plan", "approve", "dispatch"} <= set(actions), actions
    assert actions.count("run.result") == 2 and actions.count("dispatch") == 2, actions
    # ...and in the audit git repo, one commit per event, signed off by whoever acted.
    log = chiffon.wait_for(
        lambda: (lambda text: text if "run.result" in text and "suggestion Suggestion/" in text else None)(
            subprocess.run(
                ["git", "-C", str(chiffon.home / "audit"), "log", "--format=%s%n%b"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout
        ),
        "the audit repo to hold the run results",
    )
    assert "chat.confirm DeploymentIntent/uptime-kuma: success" in log
    assert "suggestion Suggestion/" in log
    assert "Signed-off-by: Erin Tester <erin@example.com>" in log
