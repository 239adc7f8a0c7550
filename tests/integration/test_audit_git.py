"""Audit events become commits in the audit repo (controllers/audit_git.py), on both backends."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from chiffon.controllers.audit_git import AuditGitWriter, event_commit
from chiffon.gitrepo import GitError, GitRepo, Identity
from chiffon.resources import AuditEvent, Outcome
from chiffon.store import Store

WHEN = datetime(2025, 1, 31, 12, 30, tzinfo=UTC)


def event(action: str = "approve", **fields: object) -> AuditEvent:
    values: dict[str, object] = {
        "time": WHEN,
        "actor": "Alice <alice@example.org>",
        "action": action,
        "resource": "Intent/kuma",
        "outcome": Outcome.SUCCESS,
    }
    values.update(fields)
    return AuditEvent.model_validate(values)


async def new_repo(path: Path) -> GitRepo:
    return await GitRepo.init(
        path, initial_files={"README.md": b"# Audit\n"}, message="Create the audit repo"
    )


async def commit_count(repo: GitRepo) -> int:
    return int((await repo.git("rev-list", "--count", "HEAD")).decode())


async def message_of(repo: GitRepo, ref: str = "HEAD") -> str:
    return (await repo.git("log", "-1", "--format=%B", ref)).decode().rstrip("\n")


async def test_each_event_becomes_one_commit(store: Store, tmp_path: Path) -> None:
    repo = await new_repo(tmp_path / "audit")
    first = await store.record_audit(event("plan", details={"reason": "kuma drifted\nfrom its spec"}))
    second = await store.record_audit(
        event(
            "run.result",
            actor="controller",
            resource=None,
            service="kuma",
            outcome=Outcome.FAILURE,
            details={"error": "host unreachable"},
        )
    )

    assert await AuditGitWriter(store, repo).sync() == 2

    assert await commit_count(repo) == 3
    plan = await repo.commit_info("HEAD~1")
    assert plan.author.name == "Alice" and plan.author.email == "alice@example.org"
    assert await message_of(repo, "HEAD~1") == (
        "plan Intent/kuma: success\n\n"
        "reason: kuma drifted from its spec\n\n"
        f"Audit-Event: {first}\n"
        "Signed-off-by: Alice <alice@example.org>"
    )
    path = f"events/2025/01/31/{first}-plan.json"
    document = await repo.read_file("HEAD~1", path)
    assert document is not None and document.endswith(b"}\n")
    wire = json.loads(document)
    assert wire["id"] == first and wire["action"] == "plan" and wire["resource"] == "Intent/kuma"
    assert list(wire) == sorted(wire)
    assert (tmp_path / "audit" / path).read_bytes() == document  # the working copy follows

    result = await repo.commit_info("HEAD")
    assert result.subject == "run.result kuma: failure"
    assert result.author.email == "controller@chiffon.local"
    message = await message_of(repo)
    assert "error: host unreachable" in message and f"Audit-Event: {second}" in message
    assert (await repo.git("log", "-1", "--format=%at", "HEAD~1")).decode().strip() == str(
        int(WHEN.timestamp())
    )
    assert await repo.uncommitted_files() == []


async def test_sync_twice_and_restart_never_commit_an_event_twice(store: Store, tmp_path: Path) -> None:
    repo = await new_repo(tmp_path / "audit")
    for _ in range(3):
        await store.record_audit(event())
    writer = AuditGitWriter(store, repo)
    assert await writer.sync() == 3
    assert await writer.sync() == 0
    assert await commit_count(repo) == 4

    # A hand-made commit on top does not reset the cursor.
    await repo.commit({"NOTES.md": b"notes\n"}, "Add notes", Identity("Someone", "someone@example.org"))
    latest = await store.record_audit(event("pause"))
    restarted = AuditGitWriter(store, GitRepo(repo.path))
    assert await restarted.sync() == 1
    assert await commit_count(repo) == 6
    assert f"Audit-Event: {latest}" in await message_of(repo)
    assert await restarted.sync() == 0


async def test_secrets_in_details_are_masked(store: Store, tmp_path: Path) -> None:
    repo = await new_repo(tmp_path / "audit")
    event_id = await store.record_audit(
        event("llm.call", details={"api_token": "sk-123", "model": "m", "nested": {"Password": "p"}})
    )
    await AuditGitWriter(store, repo).sync()

    document = await repo.read_file("HEAD", f"events/2025/01/31/{event_id}-llm.call.json")
    assert document is not None
    assert b"sk-123" not in document and b'"p"' not in document
    details = json.loads(document)["details"]
    assert details == {"api_token": "***", "model": "m", "nested": {"Password": "***"}}


async def test_five_hundred_events_in_one_batch(store: Store, tmp_path: Path) -> None:
    repo = await new_repo(tmp_path / "audit")
    for number in range(500):
        await store.record_audit(event(f"dispatch{number % 7}", details={"message": f"run {number}"}))

    started = time.perf_counter()
    assert await AuditGitWriter(store, repo).sync(limit=500) == 500
    seconds = time.perf_counter() - started
    print(f"\n500 audit events committed in {seconds:.2f}s")

    assert await commit_count(repo) == 501
    assert len(await repo.list_files("HEAD", "events")) == 500
    assert seconds < 60


async def test_run_survives_a_missing_repo(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "audit"
    repo = await new_repo(path)
    stop = asyncio.Event()
    task = asyncio.create_task(AuditGitWriter(store, repo).run(stop, interval=0.05))
    try:
        first = await store.record_audit(event())
        await until(lambda: committed(path, first))
        shutil.rmtree(path)
        second = await store.record_audit(event("resume"))
        await asyncio.sleep(0.3)  # several failing rounds
        assert not task.done()
        await new_repo(path)
        # The new repo has no cursor: it is filled in from the first event.
        await until(lambda: committed(path, second))
        assert committed(path, first)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


def committed(path: Path, event_id: int) -> bool:
    return any((path / "events").rglob(f"{event_id}-*.json")) if (path / "events").exists() else False


async def until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("condition not met in time")
        await asyncio.sleep(0.05)


async def test_a_writer_with_a_stale_cursor_cannot_move_the_branch(store: Store, tmp_path: Path) -> None:
    repo = await new_repo(tmp_path / "audit")
    await store.record_audit(event())
    writer = AuditGitWriter(store, repo)
    branch, stale_tip, after = await writer.cursor()
    assert after == 0
    await writer.sync()  # another writer got there first
    tip = await repo.resolve("HEAD")

    [again] = await store.audit_after(after, 10)
    late = again.model_copy(update={"action": "late"})
    with pytest.raises(GitError, match="fast-import"):
        await repo.import_commits([event_commit(late)], branch=branch, parent=stale_tip)
    assert await repo.resolve("HEAD") == tip
    assert await commit_count(repo) == 2


async def test_the_cli_loop_creates_the_repo_and_writes_as_the_elected_leader(
    store: Store, tmp_path: Path
) -> None:
    from chiffon.cli import audit_git_loop
    from chiffon.settings import Settings

    settings = Settings(home=tmp_path / "home")
    event_id = await store.record_audit(event())
    stop = asyncio.Event()
    task = asyncio.create_task(audit_git_loop(settings, store).run(stop))
    try:
        await until(lambda: committed(settings.resolved_audit_repo, event_id))
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
    assert (settings.resolved_audit_repo / "README.md").exists()
