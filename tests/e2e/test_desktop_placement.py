"""Placement by GPU memory, end to end in the distributed mode: wait, run, pause, resume.

Real processes on real services: ``chiffon controller`` and ``chiffon api`` on
a throwaway PostgreSQL database, ``chiffon agent infra`` running real
ansible on localhost, all on RabbitMQ under a queue prefix of their own, and a
simulated desktop (``python -m tests.agentsim desktop``: the real desktop
agent reporting one GPU with 24 GiB free) that the test starts, stops cleanly
or kills. Every step is checked with ``chiffonctl``, as a person would:

1. an intent needing 16 GiB of GPU memory, with only the infra agent (no GPU)
   online, waits: ``Scheduled=False InsufficientCapacity``, and ``blockedBy``
   says which agent lacks what;
2. the desktop starts: step 1 runs (the infra agent executes it, the desktop
   lends its capacity) and holds until the test opens a gate file;
3. the desktop stops (``AgentOffline``) or is killed (three missed 1 s
   heartbeats) while step 1 runs: step 1 still finishes, and the intent
   pauses between steps (``Ready=False Paused``, audit ``pause``);
4. the desktop comes back: the intent resumes by itself, step 2 runs,
   ``Ready=True`` (audit ``resume``).

The intent is committed straight to the intents repo, as the README allows
("edit a file there and git commit"); the last test checks that ``chiffonctl
apply`` through the separate ``chiffon api`` process reaches the controller too
(the API syncs the store itself, so the controller's source must still announce it).
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.helpers import ALICE

from .conftest import ROOT
from .distributed import DESKTOP, INFRA, Lab, open_lab, stop, sweep_queues  # noqa: F401  (sweep_queues: a fixture)

pytestmark = pytest.mark.slow


GATE_PLAYBOOK = """\
---
# Step 1 of the test: "uses the GPU" until the test opens the gate.
- name: Hold the GPU until the gate opens
  hosts: lab
  gather_facts: false
  tasks:
    - name: Create the job folder
      ansible.builtin.file:
        path: "{{ homelab_root }}/gpu-job"
        state: directory
        mode: "0755"
    - name: Say that the step started
      ansible.builtin.copy:
        content: "started\\n"
        dest: "{{ homelab_root }}/gpu-job/started"
        mode: "0644"
    - name: Wait for the gate
      ansible.builtin.wait_for:
        path: "{{ gate }}"
        timeout: 60
    - name: Write the result
      ansible.builtin.copy:
        content: "done\\n"
        dest: "{{ homelab_root }}/gpu-job/done"
        mode: "0644"
"""


def intent(gate: Path) -> str:
    return f"""\
apiVersion: chiffon.dev/v1alpha1
kind: DeploymentIntent
metadata:
  name: gpu-job
spec:
  service: gpu-job
  steps:
    - name: warm-up
      playbook: ansible/playbooks/gpu-gate.yml
    - name: configure-caddy
      playbook: ansible/playbooks/reverse-proxy.yml
  inventory: ansible/inventory/hosts.yml
  limit: localhost
  vars: {{gate: "{gate}"}}
  resources: {{gpuMemoryMiB: 16384}}
  approval: Auto
"""


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[Lab]:
    infra = tmp_path / "homelab-infra"
    shutil.copytree(ROOT / "examples/homelab-infra", infra)
    (infra / "ansible/playbooks/gpu-gate.yml").write_text(GATE_PLAYBOOK)
    async with open_lab(tmp_path) as running:
        yield running


@pytest.mark.parametrize("loss", ["clean-stop", "killed"])
async def test_gpu_intent_waits_runs_pauses_and_resumes(lab: Lab, tmp_path: Path, loss: str) -> None:
    started = time.monotonic()
    timings: dict[str, float] = {}

    def mark(what: str) -> None:
        timings[what] = time.monotonic() - started

    infra = await lab.until(lambda: lab.agent(INFRA), "the infra agent's first heartbeat", within=60)
    assert infra["online"] and infra["capacity"]["gpus"] == []
    mark("infra online")

    # 1. Nothing has 16 GiB of GPU memory: the intent waits and says why.
    # Committed straight to the intents repo (README: "edit a file there and git commit"), not
    # through `chiffonctl apply`: see test_apply_through_the_api_process_reaches_the_controller.
    gate = tmp_path / "gate"
    await lab.repo.commit({"gpu-job.yaml": intent(gate).encode()}, "A GPU job", ALICE)
    scheduled = await lab.until(
        lambda: (c := lab.condition("Scheduled")) and c[1] == "InsufficientCapacity" and c,
        "Scheduled=False InsufficientCapacity",
    )
    mark("waiting for capacity")
    assert scheduled[0] == "False"
    blocked = lab.intent()["status"]["blockedBy"]
    assert blocked.startswith("waiting for capacity"), blocked
    assert f"{INFRA} has 0 MiB GPU memory free, 16384 MiB needed" in blocked, blocked
    described = lab.ctl("describe", "intent", "gpu-job")
    assert "InsufficientCapacity" in described.stdout and "16384 MiB needed" in described.stdout
    assert lab.runs() == []

    # 2. A desktop with 24 GiB free appears: step 1 runs, executed by the infra agent.
    lab.start_desktop()
    await lab.until(lambda: (tmp_path / "lab/gpu-job/started").is_file(), "step 1 to start on localhost")
    mark("step 1 running")
    assert lab.condition("Scheduled") == (
        "True",
        "AgentSelected",
        f"Scheduled on {DESKTOP}, run by {INFRA}.",
    )
    [first] = lab.runs()
    assert (first["step"], first["agentId"]) == ("warm-up", INFRA)
    assert first["status"] in {"starting", "running"}, first

    # 3. The desktop goes away while step 1 runs; step 1 finishes, step 2 waits.
    desktop = lab.processes["desktop"]
    if loss == "clean-stop":
        stop(desktop)
        assert desktop.returncode == 0, lab.logs()
    else:
        desktop.kill()
        desktop.wait()
    await lab.until(
        lambda: (agent := lab.agent(DESKTOP)) and agent["online"] is False, "the desktop to be offline"
    )
    mark("desktop offline")
    gate.write_text("open\n")
    paused = await lab.until(
        lambda: (c := lab.condition("Ready")) and c[1] == "Paused" and c, "Ready=False Paused"
    )
    mark("paused")
    assert paused[0] == "False"
    assert "16384 MiB needed" in paused[2] and "resumes when capacity returns" in paused[2], paused
    assert (tmp_path / "lab/gpu-job/done").is_file()
    assert [(run["step"], run["status"]) for run in lab.runs()] == [("warm-up", "successful")]
    assert lab.condition("Scheduled")[:2] == ("False", "InsufficientCapacity")  # type: ignore[index]
    assert "pause" in await lab.actions()
    offline = await lab.store.list_audit(resource=f"Agent/{DESKTOP}", action="agent.offline", limit=10)
    assert [event.outcome.value for event in offline] == ["info" if loss == "clean-stop" else "failure"]
    await asyncio.sleep(2)  # paused means paused: nothing is dispatched without capacity
    assert len(lab.runs()) == 1 and lab.condition("Ready")[1] == "Paused"  # type: ignore[index]

    # 4. The desktop comes back: the intent resumes by itself and finishes.
    lab.start_desktop()
    await lab.until(lambda: len(lab.runs()) == 2, "step 2 to be dispatched")
    mark("resumed")
    waited = lab.ctl("wait", "intent/gpu-job", "--for=condition=Ready", "--timeout", "60s")
    assert waited.code == 0, f"{waited.stdout}{waited.stderr}\n{lab.logs()}"
    mark("ready")
    assert [(run["step"], run["status"], run["agentId"]) for run in lab.runs()] == [
        ("warm-up", "successful", INFRA),
        ("configure-caddy", "successful", INFRA),
    ]
    assert (tmp_path / "lab/stacks/caddy/Caddyfile").is_file()
    assert lab.condition("Ready")[:2] == ("True", "Applied")  # type: ignore[index]
    actions = await lab.actions()
    assert actions.index("pause") < actions.index("resume") < actions.index("applied"), actions
    assert actions.count("dispatch") == 2, actions
    history = lab.ctl("describe", "intent", "gpu-job").stdout
    events = history.split("\nEvents:\n", 1)[1].splitlines()[1:]  # newest first, after the header
    shown = [row.split()[1] for row in events if row.strip()]
    assert shown.index("resume") < shown.index("pause") < shown.index("plan"), history
    print(f"{loss}: " + ", ".join(f"{what} at {seconds:.1f}s" for what, seconds in timings.items()))


async def test_apply_through_the_api_process_reaches_the_controller(lab: Lab) -> None:
    await lab.until(lambda: lab.agent(INFRA), "the infra agent's first heartbeat", within=60)
    applied = lab.ctl("apply", "-f", str(ROOT / "examples/intents/reverse-proxy.yaml"))
    assert applied.code == 0, applied.stderr
    waited = lab.ctl("wait", "intent/reverse-proxy", "--for=condition=Ready", "--timeout", "15s")
    assert waited.code == 0, f"{waited.stdout}{waited.stderr}"
