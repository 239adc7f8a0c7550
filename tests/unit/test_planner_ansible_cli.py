"""How the ansible-playbook adapter turns Ansible's output into one line, and finds the binary."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from chiffon import ansible_cli
from chiffon.ansible_cli import error_summary, find_ansible_playbook

ROOT = Path("/srv/homelab-infra")

YAML_ERROR_2_19 = """\
[ERROR]: YAML parsing failed: While parsing a block collection did not find expected '-' indicator.
Origin: /srv/homelab-infra/ansible/playbooks/bad.yml:5:6

3     - name: x
4       debug: msg=1
5      bad: [
       ^ column 6
"""

MODULE_ERROR_2_19 = """\
[WARNING]: Could not match supplied host pattern, ignoring: unraid
[ERROR]: couldn't resolve module/action 'nosuchmodule'. This often indicates a misspelling,
missing collection, or incorrect module path.
Origin: /srv/homelab-infra/ansible/playbooks/bad2.yml:3:7

1 - hosts: all
"""

OLD_FORMAT = """\
ERROR! the role 'nope' was not found in /srv/homelab-infra/ansible/roles

The error appears to be in '/srv/homelab-infra/ansible/playbooks/x.yml': line 4, column 7, but may
be elsewhere in the file depending on the exact syntax problem.
"""

CASES = [
    (
        "2.19 YAML error with its origin",
        YAML_ERROR_2_19,
        [],
        "YAML parsing failed: While parsing a block collection did not find expected '-' indicator. "
        "(ansible/playbooks/bad.yml:5:6)",
    ),
    (
        "a wrapped message, warnings skipped",
        MODULE_ERROR_2_19,
        [],
        "couldn't resolve module/action 'nosuchmodule'. This often indicates a misspelling, "
        "missing collection, or incorrect module path. (ansible/playbooks/bad2.yml:3:7)",
    ),
    (
        "the ERROR! format of older ansible-core",
        OLD_FORMAT,
        [],
        "the role 'nope' was not found in ansible/roles (ansible/playbooks/x.yml:4:7)",
    ),
    (
        "a wrapper playbook in a temp dir is shown by its name",
        "[ERROR]: the role 'x' was not found\nOrigin: /tmp/chiffon-role-step-1/role-step.yml:3:11\n",
        [Path("/tmp/chiffon-role-step-1")],
        "the role 'x' was not found (role-step.yml:3:11)",
    ),
    ("no ERROR line: the last meaningful line", "playbook: x.yml\nsomething broke\n", [], "something broke"),
    ("nothing at all", "", [], "ansible-playbook exited with status 4"),
]


@pytest.mark.parametrize(("case", "output", "strip", "want"), CASES, ids=[c[0] for c in CASES])
def test_error_summary(case: str, output: str, strip: list[Path], want: str) -> None:
    assert error_summary(output, 4, strip=[ROOT, *strip]) == want, case


def test_error_summary_is_one_bounded_line() -> None:
    output = "[ERROR]: " + "very long words " * 100 + "\n" + "more\n" * 50
    summary = error_summary(output, 1)
    assert "\n" not in summary
    assert len(summary) <= 500
    assert summary.endswith("…")


def test_find_ansible_playbook_prefers_the_one_beside_python() -> None:
    found = find_ansible_playbook()
    assert found.name == "ansible-playbook"
    assert found.parent == Path(sys.executable).parent


def test_find_ansible_playbook_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(ansible_cli.sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ansible_cli.AnsibleNotFoundError, match="pip install ansible-core"):
        find_ansible_playbook()
