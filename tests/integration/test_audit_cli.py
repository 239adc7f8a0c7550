"""``chiffonctl audit`` against the API on a real socket, over a real audit table (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from chiffon.api.app import create_app
from chiffon.api.context import ServerContext
from chiffon.controllers.intents_writer import IntentsWriter
from chiffon.resources import AuditEvent, Outcome
from chiffon.settings import Settings
from chiffon.store import Store
from tests.integration.live import chiffonctl, serve

ALICE = "Alice <alice@example.com>"
BOB = "Bob <bob@example.com>"


@pytest.fixture
def context(source, store: Store, tmp_path: Path) -> ServerContext:  # type: ignore[no-untyped-def]
    return ServerContext(Settings(home=tmp_path), store, source, IntentsWriter(source))


async def seed(store: Store) -> None:
    now = datetime.now(UTC)
    events = [
        (now - timedelta(days=10), BOB, "approve", "uptime-kuma", Outcome.SUCCESS, {"digest": "d" * 64}),
        (
            now - timedelta(hours=2),
            ALICE,
            "chat.confirm",
            "uptime-kuma",
            Outcome.SUCCESS,
            {"request": "kuma"},
        ),
        (
            now - timedelta(hours=1),
            "controller",
            "run.result",
            "uptime-kuma",
            Outcome.FAILURE,
            {"error": "rc 2"},
        ),
        (
            now - timedelta(minutes=5),
            "controller",
            "run.result",
            "ollama",
            Outcome.FAILURE,
            {"error": "no gpu"},
        ),
    ]
    for time, actor, action, name, outcome, details in events:
        await store.record_audit(
            AuditEvent(
                time=time,
                actor=actor,
                action=action,
                resource=f"DeploymentIntent/{name}",
                service=name,
                outcome=outcome,
                details=details,
            )
        )


async def test_filters_and_outputs(context: ServerContext, store: Store) -> None:
    await seed(store)
    async with serve(create_app(context)) as url:
        by_service = await chiffonctl(url, "audit", "--service", "uptime-kuma")
        failed = await chiffonctl(url, "audit", "--failed", "--since", "7d", "-o", "json")
        recent = await chiffonctl(url, "audit", "--intent", "uptime-kuma", "--since", "1d", "-o", "wide")
        by_actor = await chiffonctl(url, "audit", "--actor", ALICE, "-o", "yaml")
        bad = await chiffonctl(url, "audit", "--since", "a week")

    assert by_service.code == 0, by_service.stderr
    lines = by_service.stdout.splitlines()
    assert lines[0].split() == ["AGE", "ACTOR", "ACTION", "RESOURCE", "OUTCOME"]
    assert [line.split()[-3] for line in lines[1:]] == [
        "run.result",
        "chat.confirm",
        "approve",
    ]  # newest first

    items = json.loads(failed.stdout)["items"]
    assert [(e["resource"], e["details"]["error"]) for e in items] == [
        ("DeploymentIntent/ollama", "no gpu"),
        ("DeploymentIntent/uptime-kuma", "rc 2"),
    ]
    assert recent.code == 0 and "approve" not in recent.stdout  # ten days old
    assert "error=rc 2" in recent.stdout and "request=kuma" in recent.stdout
    assert "action: chat.confirm" in by_actor.stdout and "run.result" not in by_actor.stdout
    assert bad.code == 1 and "--since 'a week'" in bad.stderr and "'30d'" in bad.stderr


async def test_chiffonctl_abort_names_what_is_wrong(context: ServerContext) -> None:
    async with serve(create_app(context)) as url:
        unknown = await chiffonctl(url, "abort", "ghost", "--reason", "test")

    assert unknown.code == 1 and "deploymentintent/ghost not found" in unknown.stderr
