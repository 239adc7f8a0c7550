"""The infra agent's memory of runs: a small JSON-lines file in its work dir.

It is what lets an agent keep the protocol's promise across restarts
(docs/protocol.md §4.1): *never run a run id twice*. One line per fact, each
appended, flushed and fsynced before the agent acts on it:

``{"kind": "epoch", "epoch": 3}``
    the highest leader epoch seen (the epoch fence, §4.3);
``{"kind": "accepted", "runId": …}``
    RunAccepted was confirmed by the broker; the run is ours to finish;
``{"kind": "finished", "result": {RunResult}}``
    the run's result, to publish again when the request comes back;
``{"kind": "reported", "runId": …}``
    that result was confirmed by the broker;
``{"kind": "canceled", "runId": …}``
    a CancelRun for a run this agent did not know (§4.5), kept for an hour.

On load, a run ``accepted`` but never ``finished`` was interrupted (the agent
died under it): it is not run again; :meth:`Journal.interrupted` lists it so
the agent reports it as failed. A torn last line (a crash mid-write) is
skipped. When the file holds more than twice :data:`KEEP_RUNS` runs it is
rewritten with the newest :data:`KEEP_RUNS` (to a temporary file, then renamed).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from chiffon.resources.messages import RunResult

log = logging.getLogger(__name__)

KEEP_RUNS = 1000
CANCEL_MEMORY = timedelta(hours=1)


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Journal:
    path: Path
    epoch: int = 0
    accepted: dict[str, datetime] = field(default_factory=dict)
    finished: dict[str, RunResult] = field(default_factory=dict)
    finished_at: dict[str, datetime] = field(default_factory=dict)
    reported: set[str] = field(default_factory=set)
    canceled: dict[str, datetime] = field(default_factory=dict)
    lines: int = 0

    @classmethod
    def open(cls, path: Path) -> Journal:
        journal = cls(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            journal._load()
            if journal.lines > 2 * KEEP_RUNS + 10:
                journal._compact()
        return journal

    # Reading --------------------------------------------------------------------------------

    def _load(self) -> None:
        with self.path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                self.lines += 1
                try:
                    self._apply(json.loads(line))
                except (ValueError, KeyError, TypeError, ValidationError) as exc:
                    log.warning("%s:%d: skipped an unreadable journal line (%s)", self.path, number, exc)

    def _apply(self, record: dict[str, Any]) -> None:
        kind = record["kind"]
        at = datetime.fromisoformat(record["at"]) if "at" in record else _now()
        if kind == "epoch":
            self.epoch = max(self.epoch, int(record["epoch"]))
        elif kind == "accepted":
            self.accepted[str(record["runId"])] = at
        elif kind == "finished":
            result = RunResult.model_validate(record["result"])
            self.finished[result.run_id] = result
            self.finished_at[result.run_id] = at
        elif kind == "reported":
            self.reported.add(str(record["runId"]))
        elif kind == "canceled":
            self.canceled[str(record["runId"])] = at
        else:
            raise ValueError(f"unknown record kind {kind!r}")

    def interrupted(self) -> list[str]:
        """Runs accepted by an earlier life of this agent that never finished."""
        return [run for run in self.accepted if run not in self.finished]

    def unreported(self) -> list[RunResult]:
        return [result for run, result in self.finished.items() if run not in self.reported]

    def finished_since(self, since: datetime) -> list[RunResult]:
        return [result for run, result in self.finished.items() if self.finished_at.get(run, since) >= since]

    def canceled_recently(self, run_id: str, now: datetime | None = None) -> bool:
        at = self.canceled.get(run_id)
        return at is not None and (now or _now()) - at <= CANCEL_MEMORY

    # Writing --------------------------------------------------------------------------------

    def record_epoch(self, epoch: int) -> None:
        if epoch > self.epoch:
            self.epoch = epoch
            self._append({"kind": "epoch", "epoch": epoch})

    def record_accepted(self, run_id: str) -> None:
        self.accepted[run_id] = _now()
        self._append({"kind": "accepted", "runId": run_id})

    def record_finished(self, result: RunResult) -> None:
        self.finished[result.run_id] = result
        self.finished_at[result.run_id] = _now()
        self._append({"kind": "finished", "result": _result_json(result)})

    def record_reported(self, run_id: str) -> None:
        if run_id not in self.reported:
            self.reported.add(run_id)
            self._append({"kind": "reported", "runId": run_id})

    def record_canceled(self, run_id: str) -> None:
        self.canceled[run_id] = _now()
        self._append({"kind": "canceled", "runId": run_id})

    def _append(self, record: dict[str, Any]) -> None:
        line = json.dumps({**record, "at": _now().isoformat()}, separators=(",", ":")) + "\n"
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
        self.lines += 1

    def _compact(self) -> None:
        keep = sorted(self.finished, key=lambda run: self.accepted.get(run, datetime.min.replace(tzinfo=UTC)))
        keep = keep[-KEEP_RUNS:]
        now = _now()
        records: list[dict[str, Any]] = [{"kind": "epoch", "epoch": self.epoch}]
        for run in keep:
            records.append({"kind": "accepted", "runId": run, "at": self.accepted.get(run, now).isoformat()})
            finished_at = self.finished_at.get(run, now).isoformat()
            records.append(
                {"kind": "finished", "result": _result_json(self.finished[run]), "at": finished_at}
            )
            if run in self.reported:
                records.append({"kind": "reported", "runId": run})
        interrupted = self.interrupted()
        for run in interrupted:
            records.append({"kind": "accepted", "runId": run, "at": self.accepted[run].isoformat()})
        for run, at in self.canceled.items():
            if now - at <= CANCEL_MEMORY:
                records.append({"kind": "canceled", "runId": run, "at": at.isoformat()})
        temporary = self.path.with_suffix(".tmp")
        with temporary.open("w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, separators=(",", ":")) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        temporary.replace(self.path)
        kept = set(keep)
        self.finished = {run: result for run, result in self.finished.items() if run in kept}
        self.finished_at = {run: at for run, at in self.finished_at.items() if run in kept}
        self.reported &= kept
        self.accepted = {run: at for run, at in self.accepted.items() if run in kept or run in interrupted}
        self.lines = len(records)
        log.info("compacted the run journal %s to %d runs", self.path, len(keep))


def _result_json(result: RunResult) -> dict[str, Any]:
    return result.model_dump(mode="json", by_alias=True, exclude_none=True)
