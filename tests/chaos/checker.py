"""The chaos checker: what was requested against what ran, seen from two sides, and a report.

*Requested* is the controller's record: the run rows in the database. *Ran* is
observed on the host, independently of any Chiffon process: the chaos playbook
appends ``start RUN_ID`` before it works and ``end RUN_ID`` after, to a ledger
file, reading the run id from ``CHIFFON_RUN_ID`` (the agent sets it for every
playbook). From the two:

* **lost** — a run the database says succeeded without an ``end`` in the ledger,
  or an intent that never became Ready;
* **duplicated** — a run id with more than one ``start`` (executed twice);
* **unexpected** — a run id in the ledger that the database does not know.

Each scenario adds a row to the report (``CHIFFON_CHAOS_REPORT``, default
``tests/chaos/results/latest.json``) that ``scripts/chaos`` prints as a table.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from chiffon.resources import Run, RunStatus

ROOT = Path(__file__).resolve().parents[2]
REPORT_ENV = "CHIFFON_CHAOS_REPORT"
DEFAULT_REPORT = ROOT / "tests" / "chaos" / "results" / "latest.json"

LEDGER_PLAYBOOK = """\
---
# The chaos suite's step: stamps the run id in a ledger before and after it works,
# so what ran is observed on the host, not taken from any Chiffon process.
- name: Chaos step
  hosts: lab
  gather_facts: false
  tasks:
    - name: Record the start of this run
      ansible.builtin.shell: printf 'start %s\\n' "$CHIFFON_RUN_ID" >> "{{ ledger }}"
      changed_when: true
    - name: Work for a while
      ansible.builtin.wait_for:
        timeout: "{{ work_seconds | default(1) | int }}"
    - name: Record the end of this run
      ansible.builtin.shell: printf 'end %s\\n' "$CHIFFON_RUN_ID" >> "{{ ledger }}"
      changed_when: true
"""


def chaos_intent(name: str, ledger: Path, *, steps: int = 1, work_seconds: int = 1) -> bytes:
    step_lines = "".join(
        f"    - name: step-{i}\n      playbook: ansible/playbooks/chaos-step.yml\n"
        for i in range(1, steps + 1)
    )
    return (
        f"apiVersion: chiffon.dev/v1alpha1\nkind: DeploymentIntent\nmetadata:\n  name: {name}\nspec:\n"
        f"  steps:\n{step_lines}  inventory: ansible/inventory/hosts.yml\n  limit: localhost\n"
        f'  vars: {{ledger: "{ledger}", work_seconds: {work_seconds}}}\n  approval: Auto\n'
    ).encode()


@dataclass
class Ledger:
    path: Path

    def lines(self) -> list[tuple[str, str]]:
        if not self.path.exists():
            return []
        found = []
        for line in self.path.read_text().splitlines():
            kind, _, run_id = line.partition(" ")
            if kind in ("start", "end") and run_id:
                found.append((kind, run_id))
        return found

    def started(self) -> Counter[str]:
        return Counter(run_id for kind, run_id in self.lines() if kind == "start")

    def ended(self) -> set[str]:
        return {run_id for kind, run_id in self.lines() if kind == "end"}


@dataclass
class Verdict:
    scenario: str
    intents: int
    runs_requested: int
    runs_executed: int
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    recovery_seconds: float | None = None
    note: str = ""

    @property
    def clean(self) -> bool:
        return not (self.lost or self.duplicated or self.unexpected)


def judge(scenario: str, runs: list[Run], ledger: Ledger, *, not_ready: list[str], intents: int) -> Verdict:
    """Compare the database's runs with the ledger."""
    known = {run.id for run in runs}
    started = ledger.started()
    ended = ledger.ended()
    succeeded = {run.id for run in runs if run.status is RunStatus.SUCCESSFUL}
    return Verdict(
        scenario=scenario,
        intents=intents,
        runs_requested=len(known),
        runs_executed=len(started),
        lost=sorted(succeeded - ended) + [f"intent {name} not Ready" for name in not_ready],
        duplicated=sorted(run_id for run_id, count in started.items() if count > 1),
        unexpected=sorted(set(started) - known),
    )


def report_path() -> Path:
    return Path(os.environ.get(REPORT_ENV) or DEFAULT_REPORT)


def record(verdict: Verdict) -> None:
    """Add the scenario's row to the report (one JSON list, rewritten whole)."""
    path = report_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = json.loads(path.read_text()) if path.exists() else []
    rows.append({**asdict(verdict), "clean": verdict.clean})
    path.write_text(json.dumps(rows, indent=2) + "\n")


def table(rows: list[dict[str, object]]) -> str:
    """The lost/duplicated table ``scripts/chaos`` prints."""
    headers = [
        "scenario",
        "intents",
        "requested",
        "executed",
        "lost",
        "duplicated",
        "unexpected",
        "recovery s",
    ]
    body = [
        [
            str(row["scenario"]),
            str(row["intents"]),
            str(row["runs_requested"]),
            str(row["runs_executed"]),
            str(len(row["lost"])),  # type: ignore[arg-type]
            str(len(row["duplicated"])),  # type: ignore[arg-type]
            str(len(row["unexpected"])),  # type: ignore[arg-type]
            "-" if row["recovery_seconds"] is None else f"{row['recovery_seconds']:.1f}",
        ]
        for row in rows
    ]
    totals = [
        "total",
        str(sum(int(r[1]) for r in body)),
        str(sum(int(r[2]) for r in body)),
        str(sum(int(r[3]) for r in body)),
        str(sum(int(r[4]) for r in body)),
        str(sum(int(r[5]) for r in body)),
        str(sum(int(r[6]) for r in body)),
        "",
    ]
    widths = [max(len(line[i]) for line in [headers, *body, totals]) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()

    return "\n".join([line(headers), *(line(r) for r in body), line(totals)])


def main() -> int:
    path = report_path()
    if not path.exists():
        print(f"no chaos report at {path}: run the chaos suite first (scripts/chaos)")
        return 1
    rows = json.loads(path.read_text())
    print(table(rows))
    dirty = [row["scenario"] for row in rows if not row["clean"]]
    if dirty:
        print(f"\nNOT CLEAN: {', '.join(map(str, dirty))}")
    return 1 if dirty else 0


if __name__ == "__main__":
    raise SystemExit(main())
