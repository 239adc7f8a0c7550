"""The agents' promise as a new user meets it: ``chiffon up``, then ``chiffonctl`` (README tour).

A real ``chiffon up`` process on the embedded default (its own state directory
and port) runs the local infra and desktop agents; real ``chiffonctl``
commands show them with this machine's own cores and memory, apply an Auto
example intent, wait for it, and print the run's output. The playbook writes
its files on localhost under ``<home>/lab``.
"""

from __future__ import annotations

import os

import psutil
import pytest

from .conftest import Chiffon

pytestmark = pytest.mark.slow

MIB = 1024 * 1024


def test_agents_show_this_machine_and_an_auto_intent_runs_for_real(chiffon: Chiffon) -> None:
    # The local agents register with their first heartbeat, right after start.
    agents = chiffon.wait_for(
        lambda: (
            {item["kind"]: item for item in chiffon.ctl("get", "agents", "-o", "json").json()["items"]}
            if chiffon.ctl("get", "agents").code == 0
            else None
        ),
        "the local agents' first heartbeats",
    )
    assert set(agents) == {"infra", "desktop"}, agents
    for kind, agent in agents.items():
        assert agent["online"] is True, agent
        capacity = agent["capacity"]
        assert capacity["cpuCores"] == os.cpu_count(), (kind, capacity)
        assert capacity["memoryTotalMib"] == psutil.virtual_memory().total // MIB, (kind, capacity)
        assert 0 < capacity["memoryAvailableMib"] <= capacity["memoryTotalMib"]
    assert agents["desktop"]["labels"]["role"] == "desktop"
    assert agents["infra"]["labels"]["role"] == "infra"

    table = chiffon.ctl("get", "agents", "-o", "wide")
    assert table.code == 0, table.stderr
    assert table.stdout.split()[:6] == ["NAME", "KIND", "ONLINE", "LAST-SEEN", "LOAD", "FREE-VRAM"]
    for agent in agents.values():
        [row] = [line.split() for line in table.stdout.splitlines() if line.startswith(agent["id"] + " ")]
        assert row[1:3] == [agent["kind"], "True"] and str(os.cpu_count()) in row

    # reverse-proxy is `approval: Auto`: applying it is enough for it to run.
    applied = chiffon.ctl("apply", "-f", "examples/intents/reverse-proxy.yaml")
    assert applied.code == 0, applied.stderr
    waited = chiffon.ctl("wait", "intent/reverse-proxy", "--for=condition=Ready", "--timeout", "90s")
    assert waited.code == 0, f"{waited.stdout}{waited.stderr}\nserver log:\n{chiffon.log.read_text()}"

    caddyfile = chiffon.home / "lab" / "stacks" / "caddy" / "Caddyfile"
    assert caddyfile.is_file(), sorted(str(p) for p in (chiffon.home / "lab").rglob("*"))
    assert "jellyfin" in caddyfile.read_text() or "media." in caddyfile.read_text()

    item = chiffon.ctl("get", "intents", "reverse-proxy", "-o", "json").json()
    ready = {c["type"]: c for c in item["status"]["conditions"]}["Ready"]
    assert (ready["status"], ready["reason"]) == ("True", "Applied")

    runs = chiffon.ctl("get", "runs", "--intent", "reverse-proxy", "-o", "json").json()["items"]
    assert [(run["status"], run["rc"], run["agentId"]) for run in runs] == [
        ("successful", 0, agents["infra"]["id"])
    ]

    logs = chiffon.ctl("logs", "intent/reverse-proxy")
    assert logs.code == 0, logs.stderr
    for task in ("Create the caddy stack folders", "Render the Caddyfile from the site list"):
        assert task in logs.stdout, logs.stdout
    assert "changed: [localhost]" in logs.stdout, logs.stdout
    assert "PLAY RECAP" in logs.stdout and "failed=0" in logs.stdout, logs.stdout
    assert "successful" in logs.stderr, logs.stderr  # the outcome line, after the output
    by_id = chiffon.ctl("logs", runs[0]["id"])
    assert (by_id.code, by_id.stdout) == (0, logs.stdout)
