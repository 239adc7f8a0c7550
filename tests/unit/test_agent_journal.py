"""The infra agent's run journal: what survives a restart, torn lines, compaction."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from chiffon.agents import journal as journal_module
from chiffon.agents.journal import Journal
from chiffon.resources.messages import RunResult


def result(run_id: str, status: str = "successful") -> RunResult:
    return RunResult(run_id=run_id, agent_id="infra-1", status=status, rc=0, duration_seconds=1.5)  # type: ignore[arg-type]


def test_facts_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    first = Journal.open(path)
    first.record_epoch(3)
    first.record_epoch(2)  # lower epochs are not recorded
    first.record_accepted("done")
    first.record_finished(result("done"))
    first.record_reported("done")
    first.record_accepted("unreported")
    first.record_finished(result("unreported", "failed"))
    first.record_accepted("interrupted")
    first.record_canceled("early")

    again = Journal.open(path)
    assert again.epoch == 3
    assert again.finished["done"] == result("done")
    assert again.interrupted() == ["interrupted"]
    assert [r.run_id for r in again.unreported()] == ["unreported"]
    assert again.canceled_recently("early")
    assert not again.canceled_recently("early", datetime.now(UTC) + timedelta(hours=2))
    assert not again.canceled_recently("other")


def test_a_torn_last_line_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "journal.jsonl"
    journal = Journal.open(path)
    journal.record_accepted("a")
    with path.open("a") as handle:
        handle.write('{"kind": "finished", "result": {"runId": "a", "ag')
    again = Journal.open(path)
    assert again.interrupted() == ["a"]
    assert "skipped an unreadable journal line" in caplog.text


def test_finished_since(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path / "journal.jsonl")
    journal.record_finished(result("recent"))
    assert [r.run_id for r in journal.finished_since(datetime.now(UTC) - timedelta(minutes=1))] == ["recent"]
    assert journal.finished_since(datetime.now(UTC) + timedelta(minutes=1)) == []


def test_compaction_keeps_the_newest_runs_and_what_is_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_module, "KEEP_RUNS", 3)
    path = tmp_path / "journal.jsonl"
    journal = Journal.open(path)
    journal.record_epoch(7)
    for index in range(10):
        journal.record_accepted(f"run-{index}")
        journal.record_finished(result(f"run-{index}"))
        journal.record_reported(f"run-{index}")
    journal.record_accepted("open")
    journal.record_canceled("early")

    compacted = Journal.open(path)
    assert sorted(compacted.finished) == ["run-7", "run-8", "run-9"]
    assert compacted.interrupted() == ["open"]
    assert compacted.epoch == 7 and compacted.canceled_recently("early")
    assert compacted.unreported() == []
    assert len(path.read_text().splitlines()) == compacted.lines
    again = Journal.open(path)
    assert sorted(again.finished) == ["run-7", "run-8", "run-9"] and again.interrupted() == ["open"]
    assert all(json.loads(line) for line in path.read_text().splitlines())
