"""The planner against a real copy of examples/homelab-infra and the real ansible-playbook.

Each scenario copies the sample repo, changes the world (a template, a
symlink, a broken playbook) and checks the plan or the error that comes back.
Syntax checks run for real wherever they are part of the behaviour; the
scenarios about hashing switch them off to stay quick.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from chiffon import ansible_cli
from chiffon.controllers.planner import PlanError, Planner
from chiffon.resources.conditions import Reason
from chiffon.resources.intent import DeploymentIntent
from chiffon.resources.plan import Plan, Risk
from chiffon.resources.yamlio import parse_intents

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
EXAMPLE_INTENTS = sorted((EXAMPLES / "intents").glob("*.yaml"))
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
SHA256 = re.compile(r"^[0-9a-f]{64}$")

KUMA_DEPLOY = "ansible/playbooks/kuma-deployment.yml"
KUMA_CONFIG = "ansible/playbooks/kuma-config-update.yml"
PROXY = "ansible/playbooks/reverse-proxy.yml"
OLLAMA = "ansible/playbooks/ollama-deployment.yml"


def copy_infra(destination: Path) -> Path:
    shutil.copytree(EXAMPLES / "homelab-infra", destination, symlinks=True)
    return destination


def load_example(name: str) -> DeploymentIntent:
    path = EXAMPLES / "intents" / f"{name}.yaml"
    parsed = parse_intents(path.read_text(), str(path))
    assert not parsed.errors, parsed.errors
    return parsed.intents[0].intent


def make_intent(*steps: dict[str, Any], **spec: Any) -> DeploymentIntent:
    wire = {
        "apiVersion": "chiffon.dev/v1alpha1",
        "kind": "DeploymentIntent",
        "metadata": {"name": "test"},
        "spec": {
            "steps": list(steps),
            "inventory": "ansible/inventory/hosts.yml",
            "limit": "localhost",
            **spec,
        },
    }
    return DeploymentIntent.model_validate(wire)


async def plan(planner: Planner, intent: DeploymentIntent, **overrides: Any) -> Plan:
    arguments: dict[str, Any] = {"revision": "rev-1", "infra_revision": "infra-1", "history": {}, "now": NOW}
    arguments.update(overrides)
    return await planner.plan(intent, **arguments)


async def plan_error(planner: Planner, intent: DeploymentIntent) -> PlanError:
    with pytest.raises(PlanError) as caught:
        await plan(planner, intent)
    return caught.value


def append(path: Path, text: str) -> None:
    path.write_text(path.read_text() + text)


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        path.relative_to(root).as_posix(): (b"<dir>" if path.is_dir() else path.read_bytes())
        for path in sorted(root.rglob("*"))
    }


@pytest.fixture
def infra(tmp_path: Path) -> Path:
    return copy_infra(tmp_path / "homelab-infra")


@pytest.fixture(scope="module")
def shared_planner(tmp_path_factory: pytest.TempPathFactory) -> Planner:
    """One checkout and one Planner for the read-only scenarios, so syntax checks are shared."""
    return Planner(copy_infra(tmp_path_factory.mktemp("shared") / "homelab-infra"))


# --------------------------------------------------------------------------- the examples


@pytest.mark.parametrize("path", EXAMPLE_INTENTS, ids=[p.stem for p in EXAMPLE_INTENTS])
async def test_every_example_intent_plans(shared_planner: Planner, path: Path) -> None:
    intent = load_example(path.stem)
    result = await plan(shared_planner, intent)
    assert SHA256.match(result.digest)
    assert [step.name for step in result.steps] == [step.name for step in intent.spec.steps]
    assert all(SHA256.match(step.content_hash) for step in result.steps)
    assert (result.revision, result.infra_revision, result.created_at) == ("rev-1", "infra-1", NOW)
    assert (result.inventory, result.limit) == (intent.spec.inventory, intent.spec.limit)
    # Every example role restarts its stack with `command` (and the updates use become): High.
    assert result.risk is Risk.HIGH
    assert result.estimated_duration_seconds is None


async def test_step_vars_stay_with_their_step(shared_planner: Planner) -> None:
    result = await plan(shared_planner, load_example("uptime-kuma"))
    deploy, configure = result.steps
    assert deploy.vars == {}
    assert [portal["name"] for portal in configure.vars["portals"]][:2] == ["Unraid", "Home Assistant"]
    assert configure.tags == ["kuma", "config"]
    assert "kuma_port" not in configure.vars  # shared vars are in the digest, not copied into steps


async def test_planning_writes_nothing_into_the_repo(infra: Path) -> None:
    before = snapshot(infra)
    planner = Planner(infra)
    await plan(planner, load_example("uptime-kuma"))
    await plan(planner, make_intent({"name": "kuma", "role": "uptime_kuma"}))
    assert snapshot(infra) == before


# --------------------------------------------------------------------------- content hashes


async def test_changing_a_role_template_changes_that_step_and_the_digest(infra: Path) -> None:
    planner = Planner(infra, syntax_check=False)
    intent = make_intent({"name": "proxy", "playbook": PROXY}, {"name": "ollama", "playbook": OLLAMA})
    before = await plan(planner, intent)
    append(infra / "ansible/roles/reverse_proxy/templates/Caddyfile.j2", "# a new site\n")
    after = await plan(planner, intent)
    assert after.steps[0].content_hash != before.steps[0].content_hash
    assert after.steps[1].content_hash == before.steps[1].content_hash
    assert after.digest != before.digest


async def test_changing_an_unrelated_role_keeps_the_digest(infra: Path) -> None:
    planner = Planner(infra, syntax_check=False)
    intent = load_example("uptime-kuma")
    before = await plan(planner, intent)
    append(infra / "ansible/roles/ollama/templates/models.txt.j2", "# another model\n")
    (infra / "ansible/playbooks/unrelated.yml").write_text("- hosts: all\n  tasks: []\n")
    after = await plan(planner, intent)
    assert after.digest == before.digest


async def test_a_role_dependency_counts_for_every_step_using_it(infra: Path) -> None:
    planner = Planner(infra, syntax_check=False)
    intent = load_example("uptime-kuma")
    before = await plan(planner, intent)
    # common is pulled in through uptime_kuma's meta/main.yml dependencies.
    append(infra / "ansible/roles/common/templates/homelab.env.j2", "EXTRA=1\n")
    after = await plan(planner, intent)
    assert all(a.content_hash != b.content_hash for a, b in zip(after.steps, before.steps, strict=True))


async def test_a_file_added_to_a_role_counts(infra: Path) -> None:
    planner = Planner(infra, syntax_check=False)
    intent = load_example("reverse-proxy")
    before = await plan(planner, intent)
    (infra / "ansible/roles/reverse_proxy/files").mkdir()
    (infra / "ansible/roles/reverse_proxy/files/extra.conf").write_text("x\n")
    assert (await plan(planner, intent)).digest != before.digest


async def test_playbook_templates_and_inventory_vars_count(infra: Path) -> None:
    planner = Planner(infra, syntax_check=False)
    intent = load_example("nightly-updates")
    first = await plan(planner, intent)
    append(infra / "ansible/playbooks/templates/system-update-report.txt.j2", "footer\n")
    second = await plan(planner, intent)
    assert second.steps[0].content_hash != first.steps[0].content_hash
    append(infra / "ansible/inventory/group_vars/lab.yml", "extra_var: 1\n")
    third = await plan(planner, intent)
    assert third.steps[0].content_hash == second.steps[0].content_hash
    assert third.digest != second.digest


# --------------------------------------------------------------------------- the digest


async def test_digest_is_the_same_across_planners_and_checkouts(tmp_path: Path) -> None:
    first = Planner(copy_infra(tmp_path / "one" / "homelab-infra"), syntax_check=False)
    second = Planner(copy_infra(tmp_path / "two" / "deeper" / "infra"), syntax_check=False)
    again = Planner(first.root, syntax_check=False)
    for path in EXAMPLE_INTENTS:
        intent = load_example(path.stem)
        plans = [await plan(planner, intent) for planner in (first, second, again)]
        assert len({p.digest for p in plans}) == 1, path.stem
        assert len({tuple(s.content_hash for s in p.steps) for p in plans}) == 1, path.stem


async def test_digest_ignores_revision_labels_approval_and_priority(infra: Path) -> None:
    planner = Planner(infra, syntax_check=False)
    base = load_example("uptime-kuma")
    reference = (await plan(planner, base)).digest
    wire = base.model_dump(mode="json", by_alias=True, exclude_none=True)
    wire["metadata"]["labels"] = {"service": "uptime-kuma", "owner": "alice"}
    wire["metadata"]["annotations"] = {"chiffon.dev/request": "reworded"}
    wire["spec"].update(approval="Auto", priority="High", dependsOn=[])
    relabelled = DeploymentIntent.model_validate(wire)
    assert (await plan(planner, relabelled, revision="rev-2", infra_revision="infra-2")).digest == reference
    wire["spec"]["vars"] = {"kuma_port": 3002}
    assert (await plan(planner, DeploymentIntent.model_validate(wire))).digest != reference


# --------------------------------------------------------------------------- what gets refused


async def test_missing_playbook_suggests_the_closest_one(infra: Path) -> None:
    error = await plan_error(
        Planner(infra), make_intent({"name": "deploy", "playbook": "ansible/playbooks/kuma-deploy.yml"})
    )
    assert error.reason == Reason.PLAYBOOK_NOT_FOUND
    assert error.message.startswith("step deploy: playbook ansible/playbooks/kuma-deploy.yml does not exist")
    assert "did you mean ansible/playbooks/kuma-deployment.yml?" in error.message


async def test_playbook_symlinked_to_etc_is_invalid(infra: Path) -> None:
    (infra / "ansible/playbooks/evil.yml").symlink_to("/etc/hostname")
    error = await plan_error(
        Planner(infra), make_intent({"name": "evil", "playbook": "ansible/playbooks/evil.yml"})
    )
    assert error.reason == Reason.INVALID_SPEC
    assert "step evil: ansible/playbooks/evil.yml resolves outside homelab-infra" in error.message


async def test_a_role_file_symlinked_out_of_the_repo_is_invalid(infra: Path) -> None:
    (infra / "ansible/roles/uptime_kuma/templates/users.j2").symlink_to("/etc/passwd")
    error = await plan_error(Planner(infra), load_example("uptime-kuma"))
    assert error.reason == Reason.INVALID_SPEC
    assert "ansible/roles/uptime_kuma/templates/users.j2 resolves outside homelab-infra" in error.message


async def test_a_symlink_inside_the_repo_is_followed(infra: Path) -> None:
    (infra / "ansible/playbooks/kuma.yml").symlink_to("kuma-deployment.yml")
    planner = Planner(infra, syntax_check=False)
    linked = await plan(planner, make_intent({"name": "deploy", "playbook": "ansible/playbooks/kuma.yml"}))
    direct = await plan(planner, make_intent({"name": "deploy", "playbook": KUMA_DEPLOY}))
    assert linked.steps[0].content_hash != direct.steps[0].content_hash  # the path differs…
    append(infra / "ansible/playbooks/kuma-deployment.yml", "# edited through the real file\n")
    changed = await plan(planner, make_intent({"name": "deploy", "playbook": "ansible/playbooks/kuma.yml"}))
    assert changed.steps[0].content_hash != linked.steps[0].content_hash  # …and the content is followed


async def test_yaml_error_is_lint_failed_naming_the_step(infra: Path) -> None:
    (infra / "ansible/playbooks/broken.yml").write_text(
        "- hosts: all\n  tasks:\n    - name: x\n      debug: {msg: hi}\n     bad: [\n"
    )
    error = await plan_error(
        Planner(infra),
        make_intent(
            {"name": "deploy", "playbook": KUMA_DEPLOY},
            {"name": "broken", "playbook": "ansible/playbooks/broken.yml"},
        ),
    )
    assert error.reason == Reason.LINT_FAILED
    assert error.message.startswith("step broken: ")
    assert "ansible/playbooks/broken.yml" in error.message
    assert "\n" not in error.message and len(error.message) < 600


async def test_unknown_module_is_lint_failed_in_ansibles_words(infra: Path) -> None:
    (infra / "ansible/playbooks/typo.yml").write_text(
        "- hosts: all\n  tasks:\n    - ansible.builtin.debugg: {msg: x}\n"
    )
    error = await plan_error(
        Planner(infra), make_intent({"name": "typo", "playbook": "ansible/playbooks/typo.yml"})
    )
    assert error.reason == Reason.LINT_FAILED
    assert "step typo: " in error.message and "ansible.builtin.debugg" in error.message


async def test_a_role_the_playbook_names_must_exist(infra: Path) -> None:
    (infra / "ansible/playbooks/typo-role.yml").write_text("- hosts: all\n  roles: [uptime_kumaa]\n")
    error = await plan_error(
        Planner(infra, syntax_check=False),
        make_intent({"name": "deploy", "playbook": "ansible/playbooks/typo-role.yml"}),
    )
    assert error.reason == Reason.PLAYBOOK_NOT_FOUND
    assert "uses role 'uptime_kumaa'" in error.message
    assert "did you mean 'uptime_kuma'?" in error.message


async def test_goal_only_step_waits_for_the_catalog(infra: Path) -> None:
    error = await plan_error(Planner(infra), make_intent({"name": "monitor", "goal": "watch my services"}))
    assert error.reason == Reason.PLAYBOOK_NOT_FOUND
    assert error.message == (
        "step monitor names only a goal, and no playbook catalog is configured to match goals to playbooks "
        "(the controller runs with one); name a playbook or a role"
    )


async def test_missing_inventory_is_invalid_spec(infra: Path) -> None:
    intent = make_intent({"name": "deploy", "playbook": KUMA_DEPLOY}, inventory="ansible/inventory/host.yml")
    error = await plan_error(Planner(infra), intent)
    assert error.reason == Reason.INVALID_SPEC
    assert error.message.startswith("spec.inventory: ansible/inventory/host.yml does not exist")
    assert "did you mean ansible/inventory/hosts.yml?" in error.message


# --------------------------------------------------------------------------- role steps


async def test_role_step_plans_with_a_real_syntax_check(infra: Path) -> None:
    result = await plan(Planner(infra), make_intent({"name": "kuma", "role": "uptime_kuma"}))
    (step,) = result.steps
    assert (step.role, step.playbook) == ("uptime_kuma", None)
    assert SHA256.match(step.content_hash)


async def test_role_step_with_a_broken_task_is_lint_failed(infra: Path) -> None:
    tasks = infra / "ansible/roles/broken/tasks"
    tasks.mkdir(parents=True)
    (tasks / "main.yml").write_text("- name: typo\n  ansible.builtin.nosuchmodule: {}\n")
    error = await plan_error(Planner(infra), make_intent({"name": "broken", "role": "broken"}))
    assert error.reason == Reason.LINT_FAILED
    assert error.message.startswith("step broken: ") and "nosuchmodule" in error.message


async def test_role_step_missing_role_suggests(infra: Path) -> None:
    error = await plan_error(Planner(infra), make_intent({"name": "kuma", "role": "uptime-kuma"}))
    assert error.reason == Reason.PLAYBOOK_NOT_FOUND
    assert "role 'uptime-kuma' is not in homelab-infra (looked in ansible/roles " in error.message
    assert "did you mean 'uptime_kuma'?" in error.message


async def test_collection_role_step(infra: Path) -> None:
    tasks = infra / "collections/ansible_collections/acme/lab/roles/hello/tasks"
    tasks.mkdir(parents=True)
    (tasks / "main.yml").write_text("- name: Hello\n  ansible.builtin.debug: {msg: hello}\n")
    result = await plan(Planner(infra), make_intent({"name": "hello", "role": "acme.lab.hello"}))
    assert result.steps[0].role == "acme.lab.hello"
    error = await plan_error(Planner(infra), make_intent({"name": "hello", "role": "acme.lab.nope"}))
    assert error.reason == Reason.PLAYBOOK_NOT_FOUND
    assert "collections/ansible_collections/acme/lab/roles/nope" in error.message


# --------------------------------------------------------------------------- caching and estimates


@pytest.fixture
def syntax_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The playbooks ansible's syntax check runs on, in order (the real check still runs)."""
    calls: list[str] = []
    real: Callable[..., Awaitable[ansible_cli.SyntaxCheckResult]] = ansible_cli.syntax_check

    async def counting(root: Path, playbook: str | Path, **kwargs: Any) -> ansible_cli.SyntaxCheckResult:
        calls.append(str(playbook))
        return await real(root, playbook, **kwargs)

    monkeypatch.setattr(ansible_cli, "syntax_check", counting)
    return calls


async def test_syntax_checks_are_cached_by_content(infra: Path, syntax_calls: list[str]) -> None:
    calls = syntax_calls
    planner = Planner(infra)
    intent = load_example("uptime-kuma")
    first = await plan(planner, intent)
    assert sorted(calls) == [KUMA_CONFIG, KUMA_DEPLOY]
    assert (await plan(planner, intent)).digest == first.digest
    assert len(calls) == 2
    append(infra / "ansible/playbooks/kuma-config-update.yml", "# reviewed\n")
    await plan(planner, intent)
    assert calls[2:] == [KUMA_CONFIG]


async def test_intents_planned_at_once_share_one_syntax_check(infra: Path, syntax_calls: list[str]) -> None:
    """A controller that has just started plans every intent at once with an empty cache: the same
    playbook must be checked once, not once per intent (it made recovery after a restart slow)."""
    planner = Planner(infra)
    intents = [make_intent({"name": "deploy", "playbook": KUMA_DEPLOY}, service=f"s{i}") for i in range(8)]
    plans = await asyncio.gather(*(plan(planner, intent) for intent in intents))
    assert syntax_calls == [KUMA_DEPLOY]
    assert len({p.steps[0].content_hash for p in plans}) == 1


async def test_estimated_duration_from_history(shared_planner: Planner) -> None:
    intent = load_example("uptime-kuma")
    history = {KUMA_DEPLOY: [600.0, 50.0, 70.0, 60.0, 40.0, 80.0], KUMA_CONFIG: [10.0, 20.0]}
    result = await plan(shared_planner, intent, history=history)
    assert result.estimated_duration_seconds == pytest.approx(60.0 + 15.0)
    partial = await plan(shared_planner, intent, history={KUMA_DEPLOY: [60.0]})
    assert partial.estimated_duration_seconds is None
