"""Run-based findings: what the stored runs say about the playbooks (DESIGN §5).

A plan digest fixes everything that decides a run — playbook and role files,
vars, inventory, limit. Two successful, non-check runs of the same step of
the same digest are therefore identical requests; a task that still reports
``changed`` on the second one is not idempotent (it would also make every
drift check report drift). The finding points at the task in the repo when
its name can be found there.

A step whose newest run failed gets a finding too (:func:`failed_steps`): the task
and host that failed, ansible's message, and what that message usually means — the
suggestion a post-mortem shows next to the timeline. It is closed by the next scan
after the step succeeds.

Pure: :func:`not_idempotent` and :func:`failed_steps` take runs, their events and the
parsed repo.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime

from chiffon.agents.suggestions.findings import RUN, Finding
from chiffon.agents.suggestions.playbooks import RepoFiles, Task
from chiffon.resources import Run, RunStatus
from chiffon.resources.messages import AnsibleEvent

__all__ = ["failed_steps", "not_idempotent", "repeated_runs"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def repeated_runs(runs: Sequence[Run]) -> dict[tuple[str, str, str], list[Run]]:
    """Successful non-check runs grouped by (intent, plan digest, step), oldest first; only groups of 2+."""
    groups: dict[tuple[str, str, str], list[Run]] = defaultdict(list)
    for run in runs:
        # A heal run changes what drifted on purpose: it is no repeat of the step.
        if run.status is RunStatus.SUCCESSFUL and not run.check_mode and not run.heals_drift:
            groups[(run.intent, run.plan_digest, run.step)].append(run)
    return {
        key: sorted(group, key=lambda r: (r.finished_at or r.created_at or _EPOCH, r.id))
        for key, group in groups.items()
        if len(group) >= 2
    }


def _task_name(event: AnsibleEvent) -> str | None:
    if not event.task:
        return None
    # "role : task" in some callbacks; the repo has the bare task name.
    return event.task.split(" : ", 1)[-1].strip() or None


def _locate(name: str, playbook: str | None, repo: RepoFiles) -> Task | None:
    matches = [task for task in repo.all_tasks() if task.name == name]
    if playbook:
        preferred = [task for task in matches if task.file == playbook]
        if preferred:
            return preferred[0]
    return matches[0] if matches else None


def not_idempotent(
    runs: Sequence[Run],
    events_of: Mapping[str, Sequence[AnsibleEvent]],
    repo: RepoFiles,
    playbook_of: Callable[[Run], str | None] = lambda _run: None,
) -> list[Finding]:
    """Tasks that reported ``changed`` on a repeat of an identical, successful run."""
    changed: dict[tuple[str | None, str], dict[str, object]] = {}
    for (intent, digest, step), group in sorted(repeated_runs(runs).items()):
        playbook = playbook_of(group[-1])
        for repeat in group[1:]:
            hosts_by_task: dict[str, set[str]] = defaultdict(set)
            for event in events_of.get(repeat.id, ()):
                name = _task_name(event)
                if event.status == "changed" and name and name.lower() != "gathering facts":
                    hosts_by_task[name].add(event.host or "?")
            for name, hosts in hosts_by_task.items():
                entry = changed.setdefault(
                    (playbook, name),
                    {"intent": intent, "step": step, "digest": digest, "runs": set(), "hosts": set()},
                )
                entry["runs"].add(repeat.id)  # type: ignore[attr-defined]
                entry["hosts"].update(hosts)  # type: ignore[attr-defined]
    findings = []
    for (playbook, name), entry in sorted(changed.items(), key=lambda item: (item[0][0] or "", item[0][1])):
        task = _locate(name, playbook, repo)
        runs_seen = sorted(entry["runs"])  # type: ignore[call-overload]
        hosts = sorted(entry["hosts"])  # type: ignore[call-overload]
        findings.append(
            _finding(
                "not-idempotent",
                task,
                playbook,
                reasoning=(
                    f"Task {name!r} reported `changed` on {', '.join(hosts)} in {len(runs_seen)} repeated "
                    f"run{'s' if len(runs_seen) != 1 else ''} of the same plan "
                    f"({entry['intent']}/{entry['step']}, digest {str(entry['digest'])[:12]}; e.g. run "
                    f"{runs_seen[0]}): nothing had changed, so the task is not idempotent. Use a module "
                    "that checks state, or give a command `creates:`/`removes:` or a `changed_when:` that "
                    "says when it really changed; otherwise every drift check reports drift."
                ),
                key=name,
            )
        )
    return findings


def _finding(rule: str, task: Task | None, playbook: str | None, *, reasoning: str, key: str) -> Finding:
    """A run-based finding at the task when the repo has it, else at the playbook the step ran."""
    return Finding(
        source=RUN,
        rule=rule,
        file=task.file if task else (playbook or ""),
        line=task.line if task else None,
        reasoning=reasoning,
        key=key,
    )


#: What a failure message usually means, checked in order; the first match explains it.
FAILURE_HINTS: tuple[tuple[tuple[str, ...], str], ...] = (
    (
        ("is undefined", "undefined variable"),
        "A variable the task uses is not defined: set it in group_vars/host_vars, the role's "
        "defaults, or the intent's `vars`.",
    ),
    (
        ("unreachable", "failed to connect", "could not resolve hostname", "connection timed out"),
        "Ansible could not reach the host: check `ansible_host`/`ansible_user` in the inventory, "
        "the SSH key the infra agent uses and that the machine is up.",
    ),
    (
        ("missing sudo password", "sudo: a password is required"),
        "The task needs privilege escalation without a password: configure passwordless sudo for "
        "the Ansible user or provide the become password from the vault.",
    ),
    (
        ("permission denied", "operation not permitted"),
        "The task was not allowed to write or run something: give the task `become: true`, or fix "
        "the owner and mode of the path it touches.",
    ),
    (
        ("couldn't resolve module", "could not resolve module", "no module named", "was not found in"),
        "A module or collection is missing on the agent: add it to `collections/requirements.yml` "
        "and install it with `ansible-galaxy collection install -r`.",
    ),
    (
        ("could not find or access", "no such file or directory", "does not exist"),
        "A file or path the task needs is missing: check the `src`/template path (relative to the "
        "role or playbook) and that earlier steps created what this one reads.",
    ),
    (
        ("timed out", "timeout"),
        "The task ran out of time: raise its `timeout`/`retries`, or check the service it waits for.",
    ),
)
ENDED = {RunStatus.FAILED: "failed", RunStatus.TIMEOUT: "timed out"}
GENERIC_HINT = "Read the post-mortem for the full timeline and the resource state at the time."
FAILURE_TEXT_CHARS = 300


def failure_hint(text: str) -> str:
    lowered = text.lower()
    for needles, hint in FAILURE_HINTS:
        if any(needle in lowered for needle in needles):
            return hint
    return GENERIC_HINT


def _newest(runs: Sequence[Run]) -> Run:
    return max(runs, key=lambda r: (r.finished_at or r.created_at or _EPOCH, r.attempt, r.id))


def failed_steps(
    runs: Sequence[Run],
    events_of: Mapping[str, Sequence[AnsibleEvent]],
    repo: RepoFiles,
    playbook_of: Callable[[Run], str | None] = lambda _run: None,
) -> list[Finding]:
    """One finding per step whose newest real run failed or timed out: where, why, and what to try."""
    by_step: dict[tuple[str, str], list[Run]] = defaultdict(list)
    for run in runs:
        if not run.check_mode and run.status.finished:
            by_step[(run.intent, run.step)].append(run)
    findings = []
    for (intent, step), group in sorted(by_step.items()):
        newest = _newest(group)
        if newest.status not in ENDED:
            continue
        failing = next(
            (e for e in events_of.get(newest.id, ()) if e.status in ("failed", "unreachable")), None
        )
        name = _task_name(failing) if failing else None
        playbook = playbook_of(newest)
        task = _locate(name, playbook, repo) if name else None
        message = " ".join(((failing.output if failing else "") or newest.error or "").split())
        where = f"task {name!r} on {failing.host or '?'}" if failing and name else "the run"
        findings.append(
            _finding(
                "run-failed",
                task,
                playbook,
                reasoning=(
                    f"Step {step} of {intent} {ENDED[newest.status]} at {where} (run {newest.id}): "
                    f"{message[:FAILURE_TEXT_CHARS] or 'no message'}. {failure_hint(message)} "
                    f"Timeline: chiffonctl postmortem {newest.id}"
                ),
                # Retries failing the same way share one suggestion; another failure gets its own.
                key=f"{intent}/{step}/{name or ''}/{failure_hint(message)[:40]}",
            )
        )
    return findings
