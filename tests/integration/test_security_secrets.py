"""No secret leaks, end to end: API, controller and a real infra agent running Ansible on localhost.

The server has API tokens (stored and the legacy shared one) and an external
LLM API key; the agent has an Ansible Vault password, and the playbooks
decrypt a vaulted variable and use it in ``no_log`` tasks — one that succeeds,
one that fails on purpose. After a chat proposal, an apply, an approval, a
successful run and a failed one, every place a secret could end up is read:
the process logs, every message the bus carried, every row of every table
(outbox, audit, run events, proposals...), every file under the test's
directory (the agent's run folders, artifacts and journal, the database
file), and the API's answers (intents, runs, events, the live stream,
summaries, post-mortems, audit, agents, usage, whoami, errors). None holds any
secret.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from chiffon.agents.infra import InfraAgent
from chiffon.api.app import create_app
from chiffon.api.auth import Role, create_token
from chiffon.api.context import ServerContext
from chiffon.controllers.controller import Controller
from chiffon.controllers.intents_writer import IntentsWriter
from chiffon.controllers.planner import Planner
from chiffon.controllers.source import GitSource
from chiffon.resources import ConditionType, RunStatus, is_condition_true
from chiffon.settings import Settings
from chiffon.store import Store
from chiffon.store.tables import ResourceRow
from tests.contract.support import BusFactory, unique_prefix

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

VAULT_PASSWORD = "vault-pass-Q7xZr2MwLp9T"
DB_PASSWORD = "db-secret-H3nK8vYc5Ws1"
LEGACY_TOKEN = "legacy-token-P4tD6sJq0Fb2"
LLM_KEY = "sk-ant-api03-LlmKey9Vb3Nq7Rx"

INTENTS = """\
apiVersion: chiffon.dev/v1alpha1
kind: DeploymentIntent
metadata:
  name: secret-service
spec:
  service: secret-service
  steps:
    - name: configure
      playbook: ansible/playbooks/secret-config.yml
  inventory: ansible/inventory/hosts.yml
  limit: localhost
  vars: {service_name: secret-service}
  approval: Manual
  placement: {agentSelector: {role: infra}}
---
apiVersion: chiffon.dev/v1alpha1
kind: DeploymentIntent
metadata:
  name: secret-check
spec:
  service: secret-check
  steps:
    - name: verify
      playbook: ansible/playbooks/secret-verify.yml
  inventory: ansible/inventory/hosts.yml
  limit: localhost
  approval: Auto
  placement: {agentSelector: {role: infra}}
"""


def vaulted(password_file: Path, name: str, value: str) -> str:
    """``name: !vault |`` followed by the encrypted value, as ``ansible-vault encrypt_string`` writes it."""
    done = subprocess.run(
        [
            str(BIN / "ansible-vault"),
            "encrypt_string",
            "--vault-password-file",
            str(password_file),
            "--name",
            name,
            value,
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return "\n".join("    " + line for line in done.stdout.strip().splitlines())


def playbooks(password_file: Path) -> dict[str, str]:
    secret = vaulted(password_file, "db_password", DB_PASSWORD)
    return {
        "secret-config.yml": f"""\
---
- name: Configure the secret service
  hosts: lab
  gather_facts: false
  vars:
{secret}
  tasks:
    - name: Make the service's folder
      ansible.builtin.file:
        path: "{{{{ homelab_root }}}}/secret-service"
        state: directory
        mode: "0700"
    - name: Write the database password
      ansible.builtin.copy:
        dest: "{{{{ homelab_root }}}}/secret-service/password"
        content: "{{{{ db_password }}}}"
        mode: "0600"
      no_log: true
    - name: Check the password the noisy way
      ansible.builtin.fail:
        msg: "the password {{{{ db_password }}}} is wrong"
      no_log: true
      ignore_errors: true
    - name: Say something harmless
      ansible.builtin.debug:
        msg: "configured {{{{ service_name }}}}"
""",
        "secret-verify.yml": f"""\
---
- name: Verify the secret service
  hosts: lab
  gather_facts: false
  vars:
{secret}
  tasks:
    - name: Refuse the password
      ansible.builtin.fail:
        msg: "password {{{{ db_password }}}} refused"
      no_log: true
""",
    }


async def eventually(check: Callable[[], Awaitable[bool]], what: str, within: float = 120.0) -> None:
    started = time.monotonic()
    while time.monotonic() - started < within:
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {within}s waiting for {what}")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def every_row(store: Store) -> str:
    """Every row of every table, as text."""
    lines = []
    async with store.engine.connect() as connection:
        for table in ResourceRow.metadata.sorted_tables:
            for row in (await connection.execute(select(table))).all():
                lines.append(f"{table.name}: {tuple(row)!r}")
    return "\n".join(lines)


def files_under(root: Path, skip: set[Path]) -> dict[Path, bytes]:
    return {
        path: path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and not path.is_symlink() and path not in skip
    }


async def test_no_secret_reaches_logs_messages_rows_files_or_answers(
    store: Store,
    source: GitSource,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    logging.getLogger("aiosqlite").setLevel(logging.INFO)  # one line per cursor call, no secrets
    infra = tmp_path / "homelab-infra"
    shutil.copytree(ROOT / "examples" / "homelab-infra", infra)
    password_file = tmp_path / "secrets" / "vault-password"
    password_file.parent.mkdir()
    password_file.write_text(VAULT_PASSWORD + "\n")
    for name, text in playbooks(password_file).items():
        (infra / "ansible" / "playbooks" / name).write_text(text)
    lab = tmp_path / "lab"

    operator = await create_token(store, "ops", Role.OPERATOR, "test")
    approver = await create_token(store, "boss", Role.APPROVER, "test")
    settings = Settings(
        home=tmp_path / "home",
        infra_repo=infra,
        api_token=LEGACY_TOKEN,
        llm_external_model="anthropic/claude-sonnet-4-5",
        llm_external_api_key=LLM_KEY,
        llm_external_monthly_budget_usd=0,  # configured, never called: no network in tests
        catalog_cache_dir=tmp_path_factory.getbasetemp() / "chat-catalog-cache",
        compiler_default_limit="localhost",
    )
    secrets = {
        "vault password": VAULT_PASSWORD,
        "vaulted variable": DB_PASSWORD,
        "legacy API token": LEGACY_TOKEN,
        "LLM API key": LLM_KEY,
        "operator token": operator,
        "approver token": approver,
    }

    factory = BusFactory("memory", unique_prefix())
    bus = await factory.open()
    carried: list[bytes] = []
    publish_raw = bus._publish_raw  # type: ignore[attr-defined]

    async def recording(queue: str, body: bytes) -> None:
        carried.append(body)
        await publish_raw(queue, body)

    bus._publish_raw = recording  # type: ignore[attr-defined]

    controller = Controller(store, bus, source, Planner(infra))
    agent = InfraAgent(
        bus,
        repo=infra,
        work_dir=tmp_path / "agent",
        agent_id="infra-secrets",
        env={"CHIFFON_LAB_ROOT": str(lab), "ANSIBLE_VAULT_PASSWORD_FILE": str(password_file)},
    )
    app = create_app(ServerContext(settings, store, source, IntentsWriter(source)))
    answers: list[str] = []
    lost, stop = asyncio.Event(), asyncio.Event()
    leading = asyncio.create_task(controller.lead(1, lost))
    serving = asyncio.create_task(agent.run(stop))
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://chiffon", timeout=60) as api:

            async def call(method: str, path: str, token: str = approver, **kwargs: Any) -> httpx.Response:
                response = await api.request(method, path, headers=bearer(token), **kwargs)
                answers.append(f"{method} {path} -> {response.status_code}\n{response.text}")
                return response

            # The chat compiles a request (the external model is configured but not worth it).
            proposal = await call("POST", "/api/v1/chat", operator, json={"message": "Deploy Uptime Kuma"})
            assert proposal.status_code == 200, proposal.text
            await call("GET", f"/api/v1/chat/conversations/{proposal.json()['conversation']}")

            applied = await call(
                "POST",
                "/api/v1/intents/apply",
                operator,
                json={"files": [{"name": "secret.yaml", "content": INTENTS}]},
            )
            assert applied.status_code == 200, applied.text

            async def planned() -> bool:
                intent = await store.get_intent("secret-service")
                return intent is not None and intent.status is not None and intent.status.plan is not None

            await eventually(planned, "the plan of secret-service")
            intent = await store.get_intent("secret-service")
            assert intent is not None and intent.status is not None and intent.status.plan is not None
            approved = await call(
                "POST",
                "/api/v1/intents/secret-service/approve",
                json={"plan": intent.status.plan.digest, "reason": "reviewed"},
            )
            assert approved.status_code == 200, approved.text

            async def ready() -> bool:
                found = await store.get_intent("secret-service")
                conditions = found.status.conditions if found and found.status else []
                return is_condition_true(conditions, ConditionType.READY)

            async def check_failed() -> bool:
                return any(r.status is RunStatus.FAILED for r in await store.list_runs(intent="secret-check"))

            await eventually(ready, "secret-service to be Ready")
            await eventually(check_failed, "secret-check's run to fail")
            assert (lab / "secret-service" / "password").read_text() == DB_PASSWORD  # the secret was used

            runs = await store.list_runs(limit=20)
            assert {r.intent for r in runs} == {"secret-service", "secret-check"}
            failed = next(r for r in runs if r.status is RunStatus.FAILED)
            assert failed.error  # says why, without the secret (checked below)
            events = await store.list_run_events(next(r for r in runs if r.intent == "secret-service").id)
            assert any(e.output == "(output hidden: no_log)" for e in events)

            # Every answer the API gives about all this.
            for path in [
                "/api/v1/intents",
                "/api/v1/intents/secret-service",
                "/api/v1/intents/secret-check",
                "/api/v1/intents/secret-service/summary",
                "/api/v1/intents/secret-check/summary",
                "/api/v1/intents/secret-service/history",
                "/api/v1/runs?limit=50",
                "/api/v1/agents",
                "/api/v1/sources",
                "/api/v1/audit?limit=1000",
                "/api/v1/audit?action=denied",
                "/api/v1/usage",
                "/api/v1/whoami",
                "/api/v1/version",
                "/api/v1/healthz",
                "/api/v1/suggestions",
            ]:
                await call("GET", path)
            for run in runs:
                for suffix in ("", "/events", "/postmortem", "/stream"):
                    await call("GET", f"/api/v1/runs/{run.id}{suffix}")
            await call("GET", "/api/v1/whoami", LEGACY_TOKEN)
            # Refusals say what to do, never the secret.
            await call("GET", "/api/v1/intents", "chf_" + "x" * 43)
            await call("POST", "/api/v1/intents/secret-service/approve", operator, json={})
            await call("GET", "/api/v1/intents", LEGACY_TOKEN + "-wrong")
    finally:
        stop.set()
        await asyncio.wait_for(serving, 60)
        lost.set()
        await asyncio.wait_for(leading, 30)
        await factory.cleanup()

    outbox = await store.count_rows("outbox")
    assert outbox > 0 and carried, "the run requests went through the outbox and the bus"
    places: dict[str, str] = {
        "process logs": caplog.text,
        "bus messages": "\n".join(body.decode("utf-8", "replace") for body in carried),
        "database rows": await every_row(store),
        "API answers": "\n\n".join(answers),
    }
    skip = {password_file, lab / "secret-service" / "password"}
    for path, content in files_under(tmp_path, skip).items():
        places[f"file {path.relative_to(tmp_path)}"] = content.decode("utf-8", "replace")
    assert any("agent/runs" in place or "agent/journal" in place for place in places), sorted(places)[:20]
    leaks = [
        f"the {what} is in {place}"
        for place, text in places.items()
        for what, secret in secrets.items()
        if secret in text
    ]
    assert leaks == []
