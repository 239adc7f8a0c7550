"""Table tests for the planner's pure decisions: the digest, risk, duration and what YAML pulls in."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from chiffon.controllers.planner import (
    DIGEST_SCHEME,
    YamlFacts,
    assess_risk,
    content_hash,
    estimate_duration,
    intent_digest,
    inventory_groups,
    limit_risk,
    plan_digest,
    planned_steps,
    read_facts,
    role_dependencies,
)
from chiffon.resources.intent import DeploymentIntent
from chiffon.resources.plan import PlannedStep, Risk
from chiffon.resources.yamlio import ResourceError

HASH_A = "a" * 64
HASH_B = "b" * 64

# --------------------------------------------------------------------------- intents to vary


def base_wire() -> dict[str, Any]:
    """An intent in wire form; each case below edits one field of a fresh copy."""
    return {
        "apiVersion": "chiffon.dev/v1alpha1",
        "kind": "DeploymentIntent",
        "metadata": {"name": "kuma", "labels": {"service": "kuma"}, "annotations": {"note": "first"}},
        "spec": {
            "steps": [
                {"name": "deploy", "playbook": "ansible/playbooks/kuma-deployment.yml"},
                {
                    "name": "configure",
                    "playbook": "ansible/playbooks/kuma-config-update.yml",
                    "vars": {"portals": [{"name": "Unraid", "url": "http://192.168.10.10"}]},
                    "tags": ["kuma"],
                },
            ],
            "inventory": "ansible/inventory/hosts.yml",
            "limit": "localhost",
            "vars": {"kuma_port": 3001, "a": 1, "b": 2},
            "approval": "Manual",
            "priority": "Normal",
        },
    }


def digest_of(
    wire: dict[str, Any], hashes: tuple[str, ...] = (HASH_A, HASH_B), inventory_hash: str = HASH_A
) -> str:
    intent = DeploymentIntent.model_validate(wire)
    return intent_digest(
        intent,
        hashes[: len(intent.spec.steps)],
        inventory=intent.spec.inventory,
        inventory_hash=inventory_hash,
    )


def edit(path: str, value: Any) -> dict[str, Any]:
    """A fresh base intent with the field at dotted ``path`` set (``steps.1.tags``)."""
    wire = base_wire()
    target: Any = wire
    *parents, last = path.split(".")
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target[part]
    if isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value
    return wire


BASE_DIGEST = digest_of(base_wire())

CHANGES_DIGEST = [
    ("step name", edit("spec.steps.0.name", "install"), {}),
    ("step playbook", edit("spec.steps.0.playbook", "ansible/playbooks/site.yml"), {}),
    (
        "playbook becomes a role",
        edit("spec.steps.0", {"name": "deploy", "role": "uptime_kuma"}),
        {},
    ),
    ("step vars", edit("spec.steps.1.vars", {"portals": []}), {}),
    ("step tags", edit("spec.steps.1.tags", ["kuma", "config"]), {}),
    ("step skipTags", edit("spec.steps.1.skipTags", ["slow"]), {}),
    ("step order", edit("spec.steps", list(reversed(base_wire()["spec"]["steps"]))), {}),
    ("shared vars value", edit("spec.vars", {"kuma_port": 3002, "a": 1, "b": 2}), {}),
    ("shared vars type (1 vs '1')", edit("spec.vars", {"kuma_port": "3001", "a": 1, "b": 2}), {}),
    ("shared vars added key", edit("spec.vars", {"kuma_port": 3001, "a": 1, "b": 2, "c": None}), {}),
    ("inventory path", edit("spec.inventory", "ansible/inventory/lab.yml"), {}),
    ("limit", edit("spec.limit", "unraid"), {}),
    ("limit removed", edit("spec.limit", None), {}),
    ("a step's content hash", base_wire(), {"hashes": (HASH_B, HASH_B)}),
    ("inventory content hash", base_wire(), {"inventory_hash": HASH_B}),
]


@pytest.mark.parametrize(("case", "wire", "extra"), CHANGES_DIGEST, ids=[c[0] for c in CHANGES_DIGEST])
def test_plan_digest_changes_with_what_runs(case: str, wire: dict[str, Any], extra: dict[str, Any]) -> None:
    if wire["spec"].get("limit", "x") is None:
        del wire["spec"]["limit"]
    assert digest_of(wire, **extra) != BASE_DIGEST, case


KEEPS_DIGEST = [
    ("labels", edit("metadata.labels", {"service": "kuma", "team": "ops"})),
    ("annotations (the chat request)", edit("metadata.annotations", {"note": "second"})),
    ("approval policy", edit("spec.approval", "Auto")),
    ("priority", edit("spec.priority", "High")),
    ("drift detection", edit("spec.driftDetection", {"interval": "24h", "mode": "Heal"})),
    ("resources", edit("spec.resources", {"cpuCores": 4, "memoryMiB": 2048})),
    ("placement", edit("spec.placement", {"agentSelector": {"role": "infra"}})),
    ("dependsOn", edit("spec.dependsOn", ["reverse-proxy"])),
    ("suspend", edit("spec.suspend", True)),
    ("service", edit("spec.service", "uptime-kuma")),
    ("vars key order", edit("spec.vars", {"b": 2, "a": 1, "kuma_port": 3001})),
    ("generation and uid", edit("metadata.generation", 7)),
]


@pytest.mark.parametrize(("case", "wire"), KEEPS_DIGEST, ids=[c[0] for c in KEEPS_DIGEST])
def test_plan_digest_ignores_what_does_not_decide_the_run(case: str, wire: dict[str, Any]) -> None:
    assert digest_of(wire) == BASE_DIGEST, case


def test_plan_digest_is_sha256_hex() -> None:
    assert len(BASE_DIGEST) == 64
    assert set(BASE_DIGEST) <= set("0123456789abcdef")


def golden_steps() -> list[PlannedStep]:
    return [
        PlannedStep(name="deploy", playbook="p.yml", content_hash=HASH_A, vars={"x": [1, 2.5, None]}),
        PlannedStep(name="cfg", role="r", content_hash=HASH_B, tags=["t"], skip_tags=["s"]),
    ]


# The canonical form is a contract: approvals recorded today must match plans made
# tomorrow. If this changes on purpose, bump DIGEST_SCHEME so old approvals lapse visibly.
GOLDEN_DOCUMENT = (
    '{"inventory":"inv.yml","inventoryHash":"' + HASH_A + '","limit":"lab",'
    '"scheme":"chiffon.dev/plan-digest/v1",'
    '"steps":[{"contentHash":"' + HASH_A + '","name":"deploy","playbook":"p.yml","role":null,'
    '"skipTags":[],"tags":[],"vars":{"x":[1,2.5,null]}},'
    '{"contentHash":"' + HASH_B + '","name":"cfg","playbook":null,"role":"r",'
    '"skipTags":["s"],"tags":["t"],"vars":{}}],'
    '"vars":{"n":1,"\\u00e9":"\\u00fc"}}'
)
GOLDEN = "01147f29e8934fd2065f0d2565b6c6e7f7f91e37441b481ddc7bfdb00f58c74c"


def test_plan_digest_golden_value() -> None:
    digest = plan_digest(
        golden_steps(),
        shared_vars={"é": "ü", "n": 1},
        inventory="inv.yml",
        inventory_hash=HASH_A,
        limit="lab",
    )
    assert DIGEST_SCHEME == "chiffon.dev/plan-digest/v1"
    assert hashlib.sha256(GOLDEN_DOCUMENT.encode()).hexdigest() == digest == GOLDEN


def test_plan_digest_is_the_same_in_another_process() -> None:
    """Hash randomisation, dict order and float repr must not leak into the digest."""
    here = plan_digest(
        golden_steps(), shared_vars={"b": 0.1, "a": [True]}, inventory=None, inventory_hash="", limit=None
    )
    script = textwrap.dedent(
        f"""
        from chiffon.controllers.planner import plan_digest
        from chiffon.resources.plan import PlannedStep
        steps = [
            PlannedStep(
                name="deploy", playbook="p.yml", content_hash={HASH_A!r}, vars={{"x": [1, 2.5, None]}}
            ),
            PlannedStep(name="cfg", role="r", content_hash={HASH_B!r}, tags=["t"], skip_tags=["s"]),
        ]
        shared = {{"a": [True], "b": 0.1}}
        print(plan_digest(steps, shared_vars=shared, inventory=None, inventory_hash="", limit=None))
        """
    )
    env = {"PYTHONHASHSEED": "12345"}
    there = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env, timeout=60
    ).stdout.strip()
    assert there == here


def test_planned_steps_keep_step_vars_apart_from_shared_vars() -> None:
    intent = DeploymentIntent.model_validate(base_wire())
    steps = planned_steps(intent, [HASH_A, HASH_B])
    assert steps[0].vars == {}
    assert steps[1].vars == {"portals": [{"name": "Unraid", "url": "http://192.168.10.10"}]}
    assert steps[1].tags == ["kuma"]
    assert [s.content_hash for s in steps] == [HASH_A, HASH_B]


CONTENT_CASES = [
    ("same files, any order", {"b": "2", "a": "1"}, True),
    ("a file's content", {"a": "1", "b": "3"}, False),
    ("a file renamed", {"a": "1", "c": "2"}, False),
    ("a file added", {"a": "1", "b": "2", "c": "3"}, False),
    ("a file removed", {"a": "1"}, False),
]


@pytest.mark.parametrize(("case", "files", "same"), CONTENT_CASES, ids=[c[0] for c in CONTENT_CASES])
def test_content_hash(case: str, files: dict[str, str], same: bool) -> None:
    assert (content_hash(files) == content_hash({"a": "1", "b": "2"})) is same, case


# --------------------------------------------------------------------------- risk


def intent_with_limit(limit: str | None) -> DeploymentIntent:
    wire = base_wire()
    if limit is None:
        del wire["spec"]["limit"]
    else:
        wire["spec"]["limit"] = limit
    return DeploymentIntent.model_validate(wire)


def play(tasks: str, *, header: str = "") -> str:
    """A playbook with one play; ``tasks`` is the YAML of its task list, indented by the caller."""
    return f"- hosts: all\n  gather_facts: false\n{header}  tasks:\n{textwrap.indent(tasks, '    ')}"


DEBUG = "- ansible.builtin.debug: {msg: hi}\n"
FILES = (
    "- ansible.builtin.file: {path: /tmp/x, state: directory}\n"
    "- template: {src: a.j2, dest: /tmp/a}\n"
    "- ansible.builtin.copy: {content: x, dest: /tmp/b}\n"
    "- ansible.builtin.uri: {url: 'http://localhost'}\n"
    "- stat: {path: /tmp/x}\n"
)
GROUPS = frozenset({"all", "ungrouped", "infra", "desktops", "lab"})

RISK_CASES: list[tuple[str, str | None, dict[str, str], frozenset[str] | None, Risk]] = [
    # case, limit, files, inventory groups, want
    ("localhost, files and debug only", "localhost", {"p.yml": play(FILES + DEBUG)}, GROUPS, Risk.LOW),
    ("one host that is not a group", "unraid", {"p.yml": play(DEBUG)}, GROUPS, Risk.LOW),
    ("no limit: every host", None, {"p.yml": play(DEBUG)}, GROUPS, Risk.HIGH),
    ("limit all", "all", {"p.yml": play(DEBUG)}, GROUPS, Risk.HIGH),
    ("limit *", "*", {"p.yml": play(DEBUG)}, GROUPS, Risk.HIGH),
    ("all minus one host is still nearly all", "all:!nas", {"p.yml": play(DEBUG)}, GROUPS, Risk.HIGH),
    ("all narrowed by a group", "all:&lab", {"p.yml": play(DEBUG)}, GROUPS, Risk.MEDIUM),
    ("a group", "infra", {"p.yml": play(DEBUG)}, GROUPS, Risk.MEDIUM),
    ("several hosts", "unraid,nas", {"p.yml": play(DEBUG)}, GROUPS, Risk.MEDIUM),
    ("two groups", "infra:desktops", {"p.yml": play(DEBUG)}, GROUPS, Risk.MEDIUM),
    ("a wildcard", "gpu-*", {"p.yml": play(DEBUG)}, GROUPS, Risk.MEDIUM),
    ("a single name, inventory unknown", "unraid", {"p.yml": play(DEBUG)}, None, Risk.MEDIUM),
    ("localhost, inventory unknown", "localhost", {"p.yml": play(DEBUG)}, None, Risk.LOW),
    ("shell (FQCN)", "localhost", {"p.yml": play("- ansible.builtin.shell: echo hi\n")}, GROUPS, Risk.HIGH),
    ("command (short)", "localhost", {"p.yml": play("- command: uptime\n")}, GROUPS, Risk.HIGH),
    ("raw", "localhost", {"p.yml": play("- ansible.builtin.raw: uptime\n")}, GROUPS, Risk.HIGH),
    ("script", "localhost", {"p.yml": play("- script: files/x.sh\n")}, GROUPS, Risk.HIGH),
    ("action: shell", "localhost", {"p.yml": play("- action: shell echo hi\n")}, GROUPS, Risk.HIGH),
    (
        "command in a rescue",
        "localhost",
        {"p.yml": play("- block:\n    - debug: {msg: a}\n  rescue:\n    - command: /bin/false\n")},
        GROUPS,
        Risk.HIGH,
    ),
    ("command in a role's tasks file", "localhost", {"t.yml": "- command: uptime\n"}, GROUPS, Risk.HIGH),
    ("become on the play", "localhost", {"p.yml": play(DEBUG, header="  become: true\n")}, GROUPS, Risk.HIGH),
    (
        "become on a task",
        "localhost",
        {"p.yml": play("- debug: {msg: a}\n  become: true\n")},
        GROUPS,
        Risk.HIGH,
    ),
    (
        "become: yes (YAML 1.1 word)",
        "localhost",
        {"t.yml": "- debug: {msg: a}\n  become: yes\n"},
        GROUPS,
        Risk.HIGH,
    ),
    (
        "become templated",
        "localhost",
        {"t.yml": "- debug: {msg: a}\n  become: '{{ b }}'\n"},
        GROUPS,
        Risk.HIGH,
    ),
    (
        "become on a role entry",
        "localhost",
        {"p.yml": "- hosts: all\n  roles: [{role: x, become: true}]\n"},
        GROUPS,
        Risk.HIGH,
    ),
    ("become: false", "localhost", {"p.yml": play(DEBUG, header="  become: false\n")}, GROUPS, Risk.LOW),
    ("apt", "localhost", {"p.yml": play("- ansible.builtin.apt: {name: curl}\n")}, GROUPS, Risk.MEDIUM),
    ("service", "localhost", {"p.yml": play("- service: {name: x, state: started}\n")}, GROUPS, Risk.MEDIUM),
    (
        "systemd in handlers",
        "localhost",
        {"h.yml": "- name: restart\n  ansible.builtin.systemd: {name: x}\n"},
        GROUPS,
        Risk.MEDIUM,
    ),
    ("reboot", "localhost", {"t.yml": "- ansible.builtin.reboot: {}\n"}, GROUPS, Risk.MEDIUM),
    ("package", "localhost", {"t.yml": "- package: {name: git}\n"}, GROUPS, Risk.MEDIUM),
    ("dnf", "localhost", {"t.yml": "- dnf: {name: git}\n"}, GROUPS, Risk.MEDIUM),
    (
        "docker compose v2",
        "localhost",
        {"t.yml": "- community.docker.docker_compose_v2: {project_src: /srv}\n"},
        GROUPS,
        Risk.MEDIUM,
    ),
    ("medium tasks on a group stay medium", "infra", {"t.yml": "- apt: {name: git}\n"}, GROUPS, Risk.MEDIUM),
    ("low tasks, high limit", None, {"t.yml": DEBUG}, GROUPS, Risk.HIGH),
    (
        "a var named command is not a task",
        "localhost",
        {"p.yml": play(DEBUG, header="  vars: {command: rm}\n")},
        GROUPS,
        Risk.LOW,
    ),
    (
        "role defaults (a mapping) hold no tasks",
        "localhost",
        {"d.yml": "command: x\nbecome: true\n"},
        GROUPS,
        Risk.LOW,
    ),
    ("a file we cannot read: assume the worst", "localhost", {"p.yml": "- hosts: [\n"}, GROUPS, Risk.HIGH),
    ("no files at all", "localhost", {}, GROUPS, Risk.LOW),
]


@pytest.mark.parametrize(
    ("case", "limit", "files", "groups", "want"), RISK_CASES, ids=[c[0] for c in RISK_CASES]
)
def test_assess_risk(
    case: str, limit: str | None, files: dict[str, str], groups: frozenset[str] | None, want: Risk
) -> None:
    assert assess_risk(intent_with_limit(limit), files, inventory_groups=groups) is want, case


def test_limit_risk_ungrouped_is_a_group() -> None:
    assert limit_risk("ungrouped", frozenset({"all"})) is Risk.MEDIUM


# --------------------------------------------------------------------------- duration

DURATION_CASES: list[tuple[str, list[str], dict[str, list[float]], float | None]] = [
    ("one step, one run", ["a.yml"], {"a.yml": [30.0]}, 30.0),
    ("mean of the runs", ["a.yml"], {"a.yml": [10.0, 20.0, 30.0]}, 20.0),
    ("only the last five count", ["a.yml"], {"a.yml": [1000.0, 10, 10, 10, 10, 10]}, 10.0),
    ("steps add up", ["a.yml", "role"], {"a.yml": [10.0], "role": [4.0, 6.0]}, 15.0),
    ("a step never ran", ["a.yml", "b.yml"], {"a.yml": [10.0]}, None),
    ("an empty history", ["a.yml"], {"a.yml": []}, None),
    ("no steps", [], {}, 0.0),
]


@pytest.mark.parametrize(
    ("case", "keys", "history", "want"), DURATION_CASES, ids=[c[0] for c in DURATION_CASES]
)
def test_estimate_duration(
    case: str, keys: list[str], history: dict[str, list[float]], want: float | None
) -> None:
    assert estimate_duration(keys, history) == want, case


# --------------------------------------------------------------------------- what YAML pulls in

FACTS_CASES: list[tuple[str, str, dict[str, Any]]] = [
    (
        "import_playbook, FQCN and short",
        "- ansible.builtin.import_playbook: a.yml\n- import_playbook: b.yml\n",
        {"playbooks": ("a.yml", "b.yml")},
    ),
    (
        "roles as strings and mappings",
        "- hosts: all\n  roles:\n    - common\n    - role: kuma\n    - {name: proxy, vars: {x: 1}}\n",
        {"roles": ("common", "kuma", "proxy")},
    ),
    (
        "include_role and import_role anywhere in a play",
        "- hosts: all\n  pre_tasks:\n    - include_role: {name: a}\n  tasks:\n    - block:\n"
        "        - ansible.builtin.import_role: {name: b, tasks_from: x}\n      rescue:\n"
        "        - include_role: name=c\n  handlers:\n    - import_role: {name: d}\n",
        {"roles": ("a", "b", "c", "d")},
    ),
    (
        "tasks files in their three spellings",
        "- include_tasks: a.yml\n"
        "- ansible.builtin.import_tasks: {file: b.yml}\n"
        "- include_tasks: file=c.yml\n",
        {"task_files": ("a.yml", "b.yml", "c.yml")},
    ),
    (
        "vars_files with a first-found list, and include_vars",
        "- hosts: all\n  vars_files: [a.yml, [b.yml, c.yml]]\n  tasks:\n    - include_vars: d.yml\n",
        {"vars_files": ("a.yml", "b.yml", "c.yml", "d.yml")},
    ),
    (
        "template and copy sources",
        "- template: {src: a.j2, dest: /x}\n- copy: src=b.txt dest=/y\n- script: files/run.sh --now\n",
        {"sources": ("a.j2", "b.txt", "files/run.sh")},
    ),
    (
        "Ansible's !vault and !unsafe tags do not stop the reading",
        "- hosts: all\n  vars:\n    secret: !vault |\n      $ANSIBLE_VAULT;1.1;AES256\n      6162\n"
        "    raw: !unsafe '{{ x }}'\n  roles: [kuma]\n",
        {"roles": ("kuma",)},
    ),
]


@pytest.mark.parametrize(("case", "text", "want"), FACTS_CASES, ids=[c[0] for c in FACTS_CASES])
def test_read_facts(case: str, text: str, want: dict[str, Any]) -> None:
    facts = read_facts(text, "x.yml")
    for name, value in want.items():
        assert getattr(facts, name) == value, case


def test_read_facts_refuses_broken_yaml_with_a_line() -> None:
    with pytest.raises(ResourceError) as caught:
        read_facts("- hosts: all\n  tasks:\n    - debug: {msg: a}\n   bad: [\n", "p.yml")
    assert caught.value.source == "p.yml"
    assert caught.value.line is not None


def test_read_facts_modules_are_short_names() -> None:
    facts = read_facts("- ansible.builtin.shell: x\n- community.docker.docker_compose_v2: {}\n", "t.yml")
    assert facts == YamlFacts(modules=frozenset({"shell", "docker_compose_v2"}))


def test_role_dependencies() -> None:
    text = "galaxy_info: {author: x}\ndependencies:\n  - common\n  - role: base\n  - {name: tls}\n"
    assert role_dependencies(text, "meta/main.yml") == ("common", "base", "tls")


INVENTORY_CASES: list[tuple[str, dict[str, str], set[str] | None]] = [
    (
        "YAML with children",
        {
            "hosts.yml": "all:\n  children:\n    infra:\n      hosts: {unraid: {}}\n"
            "    lab:\n      children: {gpu: {}}\n"
        },
        {"all", "ungrouped", "infra", "lab", "gpu"},
    ),
    (
        "INI",
        {"hosts": "unraid\n[infra]\nnas\n[desktops:children]\ngpu\n[desktops:vars]\nx=1\n"},
        {"all", "ungrouped", "infra", "desktops"},
    ),
    ("unreadable", {"hosts.yml": "all: [\n"}, None),
]


@pytest.mark.parametrize(("case", "sources", "want"), INVENTORY_CASES, ids=[c[0] for c in INVENTORY_CASES])
def test_inventory_groups(case: str, sources: dict[str, str], want: set[str] | None) -> None:
    groups = inventory_groups(sources)
    assert (set(groups) if groups is not None else None) == want, case
