"""Suggestions' pure parts, table-tested: fixers, static checks, run-based checks, fingerprints, lint JSON."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime, timedelta

import pytest

from chiffon.agents.suggestions import fixers, static
from chiffon.agents.suggestions.findings import Finding, with_fingerprints
from chiffon.agents.suggestions.lint import LintError, parse_codeclimate
from chiffon.agents.suggestions.playbooks import RepoFiles, parse_file
from chiffon.agents.suggestions.runs import GENERIC_HINT, failed_steps, failure_hint, not_idempotent
from chiffon.resources import Run, RunStatus, drift_run_id
from chiffon.resources.messages import AnsibleEvent


def text(block: str) -> str:
    return textwrap.dedent(block).lstrip("\n")


ROOT_FOR_NOTHING = (
    "- name: X\n  hosts: all\n  become: true\n  tasks:\n"
    "    - name: Say\n      ansible.builtin.debug:\n        msg: hi\n"
)
ROOT_FOR_PACKAGES = ROOT_FOR_NOTHING.replace("Say", "Pkg").replace(
    "debug:\n        msg: hi", "apt:\n        name: curl"
)
PLAY = text(
    """
    ---
    - name: Demo
      hosts: all
      become: false
      tasks:
        - name: make folders
          shell: mkdir -p {{ root }}/a /srv/b
          tags: [demo]

        - name: Copy config
          ansible.builtin.copy:
            src: app.conf
            dest: /etc/app/app.conf

        - name: Flag
          ansible.builtin.set_fact:
            enabled: yes
    """
)


@pytest.mark.parametrize(
    ("fixer", "line", "before", "after"),
    [
        (fixers.fix_name_casing, 6, "    - name: make folders", "    - name: Make folders"),
        (fixers.fix_fqcn, 6, "      shell: mkdir", "      ansible.builtin.shell: mkdir"),
        (fixers.fix_shell_to_command, 7, "      shell: mkdir", "      ansible.builtin.command: mkdir"),
        (fixers.fix_truthy, 17, "        enabled: yes", "        enabled: true"),
        (
            fixers.fix_file_permissions,
            10,
            "        dest: /etc/app/app.conf\n",
            '        dest: /etc/app/app.conf\n        mode: "0644"\n',
        ),
    ],
)
def test_fixers_change_only_what_they_fix(fixer, line: int, before: str, after: str) -> None:  # type: ignore[no-untyped-def]
    fixed = fixer(PLAY, line)
    assert fixed is not None and before in PLAY
    assert fixed == PLAY.replace(before, after, 1)


def test_fixers_decline_what_they_cannot_fix_with_certainty() -> None:
    assert fixers.fix_fqcn(PLAY, 11) is None  # already a FQCN
    assert fixers.fix_truthy(PLAY, 3) is None  # `become: false` is fine
    assert fixers.fix_shell_to_command(PLAY, 11) is None
    assert fixers.fix("no-changed-when", PLAY, 6) is None
    assert fixers.fix("name[casing]", PLAY, None) is None


def test_mkdir_becomes_the_file_module_over_a_loop() -> None:
    fixed = fixers.fix_mkdir_to_file(PLAY, 6)
    assert fixed is not None
    assert '      ansible.builtin.file:\n        path: "{{ item }}"\n        state: directory\n' in fixed
    assert '      loop:\n        - "{{ root }}/a"\n        - "/srv/b"\n      tags: [demo]\n' in fixed
    assert 'path: "{{ item }}"' in fixed and '- "/srv/b"' in fixed and "tags: [demo]" in fixed
    assert fixers.fix_mkdir_to_file(PLAY.replace("mkdir -p", "mkdir -p $(pwd)"), 6) is None


def test_unified_patch_applies_as_git_expects() -> None:
    patch = fixers.unified_patch("p.yml", "a\nb\n", "a\nc\n")
    assert patch.startswith("--- a/p.yml\n+++ b/p.yml\n@@")
    assert "-b\n+c\n" in patch


def repo_of(files: dict[str, str]) -> RepoFiles:
    repo = RepoFiles()
    for path, content in files.items():
        parsed = parse_file(path, content)
        assert parsed is not None, path
        repo.files[path] = parsed
        repo.texts[path] = content
    return repo


def rules(found: list[Finding]) -> list[tuple[str, int | None]]:
    return sorted((f.rule, f.line) for f in found)


@pytest.mark.parametrize(
    ("files", "want"),
    [
        # shell where a module exists; config without a handler; /etc written without become.
        (
            {"site.yml": PLAY},
            [("become-missing", 10), ("missing-handler", 10), ("shell-instead-of-module", 6)],
        ),
        # A play that becomes root for nothing.
        (
            {"p.yml": ROOT_FOR_NOTHING},
            [("become-unneeded", 1)],
        ),
        # ...but not when a task installs a package.
        (
            {"p.yml": ROOT_FOR_PACKAGES},
            [],
        ),
        # A role that starts a compose stack and never checks it; a notified config change is fine.
        (
            {
                "roles/web/tasks/main.yml": text(
                    """
                    - name: Render config
                      ansible.builtin.template:
                        src: web.conf.j2
                        dest: /srv/web/web.conf
                        mode: "0644"
                      notify: restart web
                    - name: Start
                      ansible.builtin.command:
                        cmd: docker compose up -d
                        chdir: /srv/web
                      changed_when: true
                    """
                )
            },
            [("missing-health-check", 1)],
        ),
        # The same role with a health check is clean.
        (
            {
                "roles/web/tasks/main.yml": text(
                    """
                    - name: Start
                      ansible.builtin.systemd_service:
                        name: web
                        state: started
                    - name: Check web
                      ansible.builtin.uri:
                        url: http://127.0.0.1:8080/
                    """
                )
            },
            [],
        ),
        # A registered result checked with `is changed` does a handler's job.
        (
            {
                "roles/app/tasks/main.yml": text(
                    """
                    - name: Write settings
                      ansible.builtin.copy:
                        content: "x"
                        dest: /srv/app/settings.yml
                        mode: "0644"
                      register: app_settings
                    - name: Restart when needed
                      ansible.builtin.command: /srv/app/restart
                      when: app_settings is changed
                      changed_when: true
                    """
                )
            },
            [],
        ),
    ],
)
def test_static_checks(files: dict[str, str], want: list[tuple[str, int]]) -> None:
    assert rules(static.check_repo(repo_of(files))) == want


def test_static_patches_are_offered_where_safe() -> None:
    found = {f.rule: f for f in static.check_repo(repo_of({"site.yml": PLAY}))}
    assert found["become-missing"].patch and "+      become: true" in found["become-missing"].patch
    assert (
        found["shell-instead-of-module"].patch
        and "+      ansible.builtin.file:" in found["shell-instead-of-module"].patch
    )
    assert found["missing-handler"].patch is None  # no handler in the play to notify
    unneeded = static.check_repo(repo_of({"p.yml": ROOT_FOR_NOTHING}))
    assert unneeded[0].patch and "-  become: true\n+  become: false" in unneeded[0].patch


def test_missing_handler_notifies_the_only_restart_handler() -> None:
    play = PLAY.replace(
        "  tasks:\n",
        "  handlers:\n    - name: Restart app\n      ansible.builtin.debug:\n"
        "        msg: restart\n  tasks:\n",
    )
    found = {f.rule: f for f in static.check_repo(repo_of({"site.yml": play}))}
    assert found["missing-handler"].patch and "+      notify: Restart app" in found["missing-handler"].patch


def run(
    run_id: str,
    digest: str = "d1",
    *,
    minutes: int,
    check: bool = False,
    status: RunStatus = RunStatus.SUCCESSFUL,
) -> Run:
    at = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=minutes)
    return Run(
        id=run_id,
        intent="kuma",
        generation=1,
        plan_digest=digest,
        step="deploy",
        step_index=0,
        status=status,
        check_mode=check,
        created_at=at,
        finished_at=at,
    )


def changed(seq: int, task: str, status: str = "changed") -> AnsibleEvent:
    return AnsibleEvent(seq=seq, event="runner_on_ok", task=task, host="localhost", status=status)  # type: ignore[arg-type]


ROLE = {
    "roles/kuma/tasks/main.yml": (
        "- name: Render file\n  ansible.builtin.copy:\n    content: x\n    dest: /tmp/x\n    mode: '0644'\n"
    )
}


@pytest.mark.parametrize(
    ("runs", "events", "want"),
    [
        # Changed again on the identical second run: not idempotent.
        (
            [run("a", minutes=0), run("b", minutes=5)],
            {"a": [changed(1, "Render file")], "b": [changed(1, "Render file")]},
            ["Render file"],
        ),
        # Changed only on the first run: fine.
        (
            [run("a", minutes=0), run("b", minutes=5)],
            {"a": [changed(1, "Render file")], "b": [changed(1, "Render file", "ok")]},
            [],
        ),
        # Different digests are different requests.
        ([run("a", minutes=0), run("b", "d2", minutes=5)], {"a": [], "b": [changed(1, "Render file")]}, []),
        # Check-mode and failed runs do not count.
        (
            [
                run("a", minutes=0),
                run("b", minutes=5, check=True),
                run("c", minutes=9, status=RunStatus.FAILED),
            ],
            {"b": [changed(1, "Render file")], "c": [changed(1, "Render file")]},
            [],
        ),
        # Facts gathering is never a finding; role prefixes are stripped.
        (
            [run("a", minutes=0), run("b", minutes=5)],
            {"b": [changed(1, "Gathering Facts"), changed(2, "kuma : Render file")]},
            ["Render file"],
        ),
    ],
)
def test_not_idempotent(runs: list[Run], events: dict[str, list[AnsibleEvent]], want: list[str]) -> None:
    found = not_idempotent(runs, events, repo_of(ROLE), lambda _run: "kuma.yml")
    assert [f.key for f in found] == want
    for finding in found:
        assert finding.file == "roles/kuma/tasks/main.yml" and finding.line == 1
        assert "not idempotent" in finding.reasoning


def test_a_heal_run_is_no_repeat_of_its_step() -> None:
    first = run("kuma-1", minutes=0)
    heal_id = drift_run_id("kuma", 1, "d1", "deploy", 1, heal=True)
    heal = first.model_copy(update={"id": heal_id, "finished_at": first.finished_at + timedelta(hours=1)})
    assert heal.heals_drift and not first.heals_drift
    assert not_idempotent([first, heal], {heal_id: [changed(1, "Render file")]}, repo_of(ROLE)) == []


def failed(seq: int, task: str, output: str, status: str = "failed") -> AnsibleEvent:
    return AnsibleEvent(
        seq=seq,
        event="runner_on_failed",
        task=task,
        host="localhost",
        status=status,
        output=output,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("message", "says"),
    [
        ("The task includes an option with an undefined variable. 'kuma_port' is undefined", "not defined"),
        ("UNREACHABLE! Failed to connect to the host via ssh", "could not reach"),
        ("[Errno 13] Permission denied: '/mnt/user/appdata'", "become: true"),
        ("Could not find or access 'monitors.yml.j2'", "file or path the task needs is missing"),
        ("couldn't resolve module/action 'community.docker.docker_compose_v2'", "collection is missing"),
        ("something nobody has seen", GENERIC_HINT),
    ],
)
def test_failure_hints_say_what_a_message_usually_means(message: str, says: str) -> None:
    assert says in failure_hint(message)


def test_a_step_whose_newest_run_failed_gets_one_finding_until_it_succeeds() -> None:
    broken = run("b", minutes=5, status=RunStatus.FAILED)
    events = {"b": [changed(1, "Render file", "ok"), failed(2, "kuma : Render file", "Permission denied")]}
    [finding] = failed_steps([run("a", minutes=0), broken], events, repo_of(ROLE), lambda _run: "kuma.yml")
    assert (finding.rule, finding.file, finding.line) == ("run-failed", "roles/kuma/tasks/main.yml", 1)
    assert "Step deploy of kuma failed at task 'Render file' on localhost (run b)" in finding.reasoning
    assert "become: true" in finding.reasoning and "chiffonctl postmortem b" in finding.reasoning
    # A retry failing the same way is the same suggestion; a later success closes it.
    retry = run("c", minutes=9, status=RunStatus.FAILED)
    [again] = failed_steps([broken, retry], events | {"c": events["b"]}, repo_of(ROLE))
    assert again.key == finding.key
    assert failed_steps([broken, run("d", minutes=12)], events, repo_of(ROLE)) == []
    # Check-mode runs never count; a failure without events still says what the run said.
    assert failed_steps([run("e", minutes=1, check=True, status=RunStatus.FAILED)], {}, repo_of(ROLE)) == []
    lost = run("f", minutes=1, status=RunStatus.TIMEOUT).model_copy(
        update={"error": "run timed out after 3600s"}
    )
    [timed_out] = failed_steps([lost], {}, repo_of(ROLE), lambda _run: "kuma.yml")
    assert timed_out.file == "kuma.yml" and "timed out at the run" in timed_out.reasoning


def finding(line: int, key: str = "Render file") -> Finding:
    return Finding("ansible-lint", "name[casing]", "a.yml", line, "r", key)


def test_fingerprints_survive_moves_and_casing_and_number_twins() -> None:
    [one] = with_fingerprints([finding(3, "make folders")])
    [moved] = with_fingerprints([finding(30, "Make Folders")])
    assert one.fingerprint == moved.fingerprint
    twins = with_fingerprints([finding(3), finding(9)])
    assert len({f.fingerprint for f in twins}) == 2


def test_codeclimate_report_is_parsed() -> None:
    report = """[{"type": "issue", "check_name": "fqcn[action-core]", "categories": ["formatting"],
      "severity": "major", "description": "Use FQCN.", "location": {"path": "a.yml", "lines": {"begin": 7}},
      "content": {"body": "Task/Handler: Copy"}},
     {"type": "issue", "check_name": "name[casing]", "description": "Casing.",
      "location": {"path": "b.yml", "positions": {"begin": {"line": 3, "column": 9}}}}]"""
    first, second = parse_codeclimate(report)
    assert (first.rule, first.path, first.line, first.body) == (
        "fqcn[action-core]",
        "a.yml",
        7,
        "Task/Handler: Copy",
    )
    assert (second.line, second.column) == (3, 9)
    assert parse_codeclimate("") == []
    with pytest.raises(LintError):
        parse_codeclimate("Traceback: boom")
