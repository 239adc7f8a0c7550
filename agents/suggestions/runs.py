"""Run-based findings: what the stored runs say about the playbooks (DESIGN §5).

A plan digest fixes everything that decides a run — playbook and role files,
vars, inventory, limit. Two successful, non-check runs of the same step of
the same digest are therefore identical requests; a task that still reports
``changed`` on the second one is not idempotent (it would also make every
drift check report drift). The finding points at the task in the repo when
its name can be found there.

Pure: :func:`not_idempotent` takes runs, their events and the parsed repo.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime

from chiffon.agents.suggestions.findings import RUN, Finding
from chiffon.agents.suggestions.playbooks import RepoFiles, Task
from chiffon.resources import Run, RunStatus
from chiffon.resources.messages import AnsibleEvent

__all__ = ["not_idempotent", "repeated_runs"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def repeated_runs(runs: Sequence[Run]) -> dict[tuple[str, str, str], list[Run]]:
    """Successful non-check runs grouped by (intent, plan digest, step), oldest first; only groups of 2+."""
    groups: dict[tuple[str, str, str], list[Run]] = defaultdict(list)
    for run in runs:
        if run.status is RunStatus.SUCCESSFUL and not run.check_mode:
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
            Finding(
                source=RUN,
                rule="not-idempotent",
                file=task.file if task else (playbook or ""),
                line=task.line if task else None,
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
