"""The ansible-runner adapter against real Ansible on localhost, in a copy of the example repo.

Every run writes only under a temporary lab root (``CHIFFON_LAB_ROOT``), the
way the example inventory's ``lab`` group rehearses deployments.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from chiffon.agents.runner import BATCH_SIZE, HIDDEN, PlaybookJob, PlaybookOutcome, run_playbook
from chiffon.resources.messages import AnsibleEvent

ROOT = Path(__file__).resolve().parents[2]
INVENTORY = "ansible/inventory/hosts.yml"

EXTRA_PLAYBOOKS = {
    "failing.yml": """\
        - name: Fail on purpose
          hosts: lab
          gather_facts: false
          tasks:
            - name: Succeed first
              ansible.builtin.debug:
                msg: fine
            - name: Break the run
              ansible.builtin.fail:
                msg: this step is broken on purpose
            - name: Never reached
              ansible.builtin.debug:
                msg: unreachable
        """,
    "slow.yml": """\
        - name: Take a long time
          hosts: lab
          gather_facts: false
          tasks:
            - name: Start
              ansible.builtin.debug:
                msg: starting
            - name: Sleep
              ansible.builtin.command: sleep 120
              changed_when: false
        """,
    "probe.yml": """\
        - name: Write what arrived
          hosts: lab
          gather_facts: false
          tasks:
            - name: Make the lab root
              ansible.builtin.file:
                path: "{{ homelab_root }}"
                state: directory
                mode: "0755"
            - name: Write the literal value
              ansible.builtin.copy:
                content: "{{ probe }}"
                dest: "{{ homelab_root }}/probe.txt"
                mode: "0644"
            - name: Write all of it as JSON
              ansible.builtin.copy:
                content: "{{ payload | to_json }}"
                dest: "{{ homelab_root }}/payload.json"
                mode: "0644"
        """,
    "secret.yml": """\
        - name: Handle a secret
          hosts: lab
          gather_facts: false
          tasks:
            - name: Use the secret
              ansible.builtin.command: echo hunter2-secret
              no_log: true
              changed_when: true
            - name: Fail with the secret
              ansible.builtin.command: sh -c 'echo hunter2-secret; exit 3'
              no_log: true
        """,
}


@dataclass
class Lab:
    repo: Path
    root: Path
    work: Path
    batches: list[list[AnsibleEvent]] = field(default_factory=list)

    def job(self, run_id: str, playbook: str | None = None, **changes: Any) -> PlaybookJob:
        fields: dict[str, Any] = {
            "run_id": run_id,
            "repo": self.repo,
            "work_dir": self.work,
            "playbook": playbook,
            "inventory": INVENTORY,
            "limit": "localhost",
            "env": {"CHIFFON_LAB_ROOT": str(self.root)},
        }
        fields.update(changes)
        return PlaybookJob(**fields)

    async def run(self, job: PlaybookJob, cancel: asyncio.Event | None = None) -> PlaybookOutcome:
        async def sink(batch: list[AnsibleEvent]) -> None:
            self.batches.append(batch)

        return await run_playbook(job, sink, cancel or asyncio.Event())

    @property
    def events(self) -> list[AnsibleEvent]:
        return [event for batch in self.batches for event in batch]


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    repo = tmp_path / "homelab-infra"
    shutil.copytree(ROOT / "examples" / "homelab-infra", repo)
    for name, text in EXTRA_PLAYBOOKS.items():
        (repo / "ansible" / "playbooks" / name).write_text(textwrap.dedent(text))
    return Lab(repo=repo, root=tmp_path / "lab", work=tmp_path / "agent" / "runs")


def ansible_processes(marker: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if any(marker in part for part in process.info.get("cmdline") or []):
            found.append(process)
    return found


async def test_kuma_deployment_succeeds(lab: Lab) -> None:
    outcome = await lab.run(
        lab.job("kuma-1", "ansible/playbooks/kuma-deployment.yml", extra_vars={"kuma_port": 3005})
    )

    assert (outcome.status, outcome.rc, outcome.error) == ("successful", 0, None)
    compose = lab.root / "stacks" / "uptime-kuma" / "docker-compose.yml"
    assert compose.is_file() and "3005:3001" in compose.read_text()
    stats = outcome.stats["localhost"]
    assert stats.ok > 0 and stats.changed > 0 and stats.failed == 0
    changed = [e for e in lab.events if e.status == "changed"]
    assert any(e.task == "Render the uptime-kuma compose file" and e.host == "localhost" for e in changed)
    seqs = [e.seq for e in lab.events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert all(1 <= len(batch) <= BATCH_SIZE for batch in lab.batches)
    assert lab.events[-1].event == "playbook_on_stats"
    assert outcome.usage is not None and outcome.usage.cpu_seconds and outcome.usage.cpu_seconds > 0
    assert outcome.usage.peak_memory_mib and outcome.usage.peak_memory_mib > 20
    artifacts = lab.work / "kuma-1" / "artifacts" / "kuma-1"
    assert (artifacts / "status").read_text() == "successful"
    assert not (artifacts / "command").exists(), "the environment must not be left on disk"
    # The repo is left as it was: ansible-runner works in the agent's dir, not in the checkout.
    assert not (lab.repo / "artifacts").exists() and not (lab.repo / "env").exists()

    # Run again: nothing changes the second time (the example playbooks are idempotent).
    lab.batches.clear()
    again = await lab.run(
        lab.job("kuma-2", "ansible/playbooks/kuma-deployment.yml", extra_vars={"kuma_port": 3005})
    )
    assert again.status == "successful"


async def test_failing_playbook(lab: Lab) -> None:
    outcome = await lab.run(lab.job("fail-1", "ansible/playbooks/failing.yml"))

    assert outcome.status == "failed" and outcome.rc not in (0, None)
    failed = [e for e in lab.events if e.status == "failed"]
    assert [(e.task, e.host) for e in failed] == [("Break the run", "localhost")]
    assert "this step is broken on purpose" in failed[0].output
    assert outcome.error == "task 'Break the run' failed on localhost: this step is broken on purpose"
    assert outcome.stats["localhost"].failed == 1
    assert not any(e.task == "Never reached" for e in lab.events)


async def test_timeout_stops_the_run(lab: Lab) -> None:
    job = lab.job("slow-timeout", "ansible/playbooks/slow.yml", timeout_seconds=3)
    outcome = await lab.run(job)

    assert outcome.status == "timeout"
    assert outcome.duration_seconds < 30
    assert "timeout of 3s" in (outcome.error or "")
    await asyncio.sleep(0.5)
    assert ansible_processes(str(job.private_data_dir)) == []


async def test_cancel_stops_the_run(lab: Lab) -> None:
    job = lab.job("slow-cancel", "ansible/playbooks/slow.yml")
    cancel = asyncio.Event()
    running = asyncio.create_task(lab.run(job, cancel))
    for _ in range(600):
        if any(e.task == "Sleep" for e in lab.events):
            break
        await asyncio.sleep(0.05)
    cancel.set()
    outcome = await asyncio.wait_for(running, 30)

    assert outcome.status == "canceled" and outcome.error == "the run was canceled"
    await asyncio.sleep(0.5)
    assert ansible_processes(str(job.private_data_dir)) == []


async def test_cancelling_the_coroutine_stops_ansible(lab: Lab) -> None:
    job = lab.job("slow-task-cancel", "ansible/playbooks/slow.yml")
    running = asyncio.create_task(lab.run(job))
    for _ in range(600):
        if ansible_processes(str(job.private_data_dir)):
            break
        await asyncio.sleep(0.05)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert ansible_processes(str(job.private_data_dir)) == []


async def test_extra_vars_are_never_templated(lab: Lab) -> None:
    payload = {
        "jinja": "{{ lookup('env','HOME') }}",
        "block": "{% for x in [1] %}{{ x }}{% endfor %}",
        "nested": [{"name": "NAS", "url": "http://nas:5000/{{ path }}"}],
        "unicode": "é 😀",
        "number": 1.5,
        "flag": True,
    }
    outcome = await lab.run(
        lab.job(
            "probe-1",
            "ansible/playbooks/probe.yml",
            extra_vars={"probe": payload["jinja"], "payload": payload},
        )
    )

    assert outcome.status == "successful", outcome.error
    assert (lab.root / "probe.txt").read_text() == "{{ lookup('env','HOME') }}"
    assert json.loads((lab.root / "payload.json").read_text()) == payload


async def test_no_log_output_is_hidden(lab: Lab) -> None:
    outcome = await lab.run(lab.job("secret-1", "ansible/playbooks/secret.yml"))

    assert outcome.status == "failed"
    secret_events = [
        e for e in lab.events if e.task in ("Use the secret", "Fail with the secret") and e.status
    ]
    assert [e.status for e in secret_events] == ["changed", "failed"]
    assert all(e.output == HIDDEN for e in secret_events)
    assert not any("hunter2" in e.output for e in lab.events)
    assert "hunter2" not in (outcome.error or "") and HIDDEN in (outcome.error or "")


async def test_role_step_runs_the_role_from_the_repo(lab: Lab) -> None:
    outcome = await lab.run(lab.job("role-1", None, role="common"))

    assert outcome.status == "successful", outcome.error
    assert (lab.root / "config" / "homelab.env").is_file()
    assert outcome.stats["localhost"].changed > 0


async def test_tags_and_check_mode(lab: Lab) -> None:
    job = lab.job("check-1", "ansible/playbooks/kuma-deployment.yml", check=True, diff=True, tags=("deploy",))
    outcome = await lab.run(job)

    assert outcome.status == "successful", outcome.error
    assert not (
        lab.root / "stacks" / "uptime-kuma" / "docker-compose.yml"
    ).exists()  # check mode wrote nothing
    assert not any(
        e.task == "Look for the rendered uptime-kuma compose file" for e in lab.events
    )  # tag filtered


async def test_an_invalid_job_fails_without_running_ansible(lab: Lab) -> None:
    outcome = await lab.run(lab.job("bad-1", "../../../etc/passwd"))
    assert outcome.status == "failed" and outcome.rc is None
    assert "escapes the homelab-infra repository" in (outcome.error or "")
    assert lab.events == []
