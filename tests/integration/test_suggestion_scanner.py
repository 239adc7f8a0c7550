"""The controller's suggestion scanner: runs finish → a quick scan → suggestions audited by service.

Runs are played through the real result consumer (as in ``test_reconciler.py``),
so the scanner sees the same ``run.result`` audit events it follows in production.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from chiffon.agents.suggestions.scanner import SuggestionScanner
from chiffon.resources.messages import AnsibleEvent
from chiffon.store import Store
from tests.integration.reconcile_world import KUMA, World, intent_text, make_world

FAILED_TASK = "uptime_kuma : Create the uptime-kuma stack folders"


def commit_all(folder: Path) -> None:
    """homelab-infra as a git repo: the scan reads its committed state."""
    identity = ["-c", "user.name=t", "-c", "user.email=t@x"]
    for command in (["init", "-q"], ["add", "-A"], [*identity, "commit", "-qm", "x"]):
        subprocess.run(["git", "-C", str(folder), *command], check=True, capture_output=True)


@pytest.fixture
async def world(store: Store, tmp_path: Path) -> World:
    made = await make_world(store, tmp_path)
    await asyncio.to_thread(commit_all, tmp_path / "homelab-infra")
    return made


def failure() -> list[AnsibleEvent]:
    return [
        AnsibleEvent(
            seq=3,
            event="runner_on_failed",
            task=FAILED_TASK,
            host="localhost",
            status="failed",
            output="fatal: [localhost]: FAILED! => Permission denied: '/srv/stacks'",
        )
    ]


async def test_a_failed_run_becomes_a_suggestion_audited_under_its_service(
    world: World, tmp_path: Path
) -> None:
    scanner = SuggestionScanner(world.store, tmp_path / "homelab-infra", quiet=0)
    assert await scanner.follow() is False  # starts after the newest event: history is not rescanned
    await world.put(intent_text("kuma", approval="Auto", steps=(KUMA,)))
    await world.heartbeat()
    await world.reconcile("kuma")
    [request] = await world.outbox_requests()
    await world.finish(
        request.run_id, status="failed", error="Create the stack folder failed", events=failure()
    )
    assert await scanner.follow() is True
    added = await scanner.scan()
    [failed] = [s for s in added if s.category == "run/run-failed"]
    assert failed.file == "ansible/roles/uptime_kuma/tasks/main.yml" and failed.line
    assert (
        "become: true" in failed.reasoning and f"chiffonctl postmortem {request.run_id}" in failed.reasoning
    )
    audits = await world.store.list_audit(action="suggestion", limit=100)
    mine = [a for a in audits if a.resource == f"Suggestion/{failed.id}"]
    assert [(a.service, a.details["intent"]) for a in mine] == [("kuma", "kuma")]
    # Static findings about files kuma's plan runs are audited under kuma too (common is a dependency).
    assert {a.service for a in audits} == {"kuma"} or None in {a.service for a in audits}
    assert (
        await scanner.follow() is False and await scanner.scan() == []
    )  # nothing new, nothing audited twice

    # The retry succeeds: the next scan closes the suggestion.
    await world.reconcile("kuma")
    world.clock.advance(60)
    await world.heartbeat()
    await world.reconcile("kuma")
    retry = (await world.outbox_requests())[-1]
    assert retry.attempt == 2
    await world.finish(retry.run_id)
    assert await scanner.follow() is True
    await scanner.scan()
    [closed] = [s for s in await world.store.list_suggestions() if s.id == failed.id]
    assert closed.status == "implemented"


async def test_the_loop_waits_for_results_to_settle_then_scans_once(world: World, tmp_path: Path) -> None:
    scanner = SuggestionScanner(world.store, tmp_path / "homelab-infra", quiet=0.3)
    stop = asyncio.Event()
    loop = asyncio.create_task(scanner.run(stop, interval=0.05))
    try:
        await asyncio.sleep(0.2)
        assert scanner.scans == 0  # no runs, no scan
        await world.put(intent_text("kuma", approval="Auto", steps=(KUMA,)))
        await world.heartbeat()
        await world.reconcile("kuma")
        [request] = await world.outbox_requests()
        await world.finish(request.run_id, status="failed", events=failure())
        for _ in range(100):
            if scanner.scans:
                break
            await asyncio.sleep(0.05)
        assert scanner.scans == 1
        await asyncio.sleep(0.5)
        assert scanner.scans == 1
    finally:
        stop.set()
        await loop
