"""History and rollback: the revisions of an intent, and a new commit that takes it back to one.

Against a real intents repo and the store on each backend; the API through an
in-memory transport, ``chiffonctl`` as a subprocess against a real socket.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from chiffon.api.app import create_app
from chiffon.api.context import ServerContext
from chiffon.controllers.intents_writer import ApplyError, IntentsWriter, NotFoundError, SubmittedFile
from chiffon.resources import AuditEvent
from chiffon.settings import Settings
from chiffon.store import Store
from tests.helpers import ALICE, intent_yaml
from tests.integration.live import chiffonctl, serve

BOB_HEADER = {"X-Chiffon-Actor": "Bob <bob@example.com>"}


def kuma(port: int) -> list[SubmittedFile]:
    return [SubmittedFile("kuma.yaml", intent_yaml("kuma", port=port).encode())]


async def two_versions(writer: IntentsWriter) -> tuple[str, str]:
    first = await writer.apply(kuma(3001), ALICE)
    second = await writer.apply(kuma(4000), ALICE)
    assert first.revision and second.revision
    return first.revision, second.revision


@pytest.fixture
def context(source, store: Store, tmp_path: Path) -> ServerContext:  # type: ignore[no-untyped-def]
    return ServerContext(Settings(home=tmp_path), store, source, IntentsWriter(source))


@pytest.fixture
async def api(context: ServerContext) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(context))
    async with httpx.AsyncClient(
        transport=transport, base_url="http://chiffon", headers=BOB_HEADER
    ) as client:
        yield client


async def test_rollback_commits_the_old_document_as_a_new_generation(writer, intents_repo, store) -> None:
    v1, v2 = await two_versions(writer)
    before = await store.get_intent("kuma")
    assert before is not None and before.metadata.generation == 2

    report = await writer.rollback("kuma", v1[:7], ALICE, message="port 4000 broke the portals")

    head = await intents_repo.commit_info("HEAD")
    assert report.committed and report.revision == head.sha not in (v1, v2)
    assert head.subject == f"Roll back deploymentintent/kuma to {v1[:7]}" and head.author == ALICE
    assert await intents_repo.read_file("HEAD", "kuma.yaml") == await intents_repo.read_file(v1, "kuma.yaml")
    after = await store.get_intent("kuma")
    assert after is not None and after.metadata.generation == 3 == report.intents[0].generation
    assert after.spec_wire()["vars"] == {"port": 3001}


async def test_rollback_keeps_the_other_documents_of_a_file(writer, commit, source, intents_repo) -> None:
    await commit({"stack.yaml": "# top\n" + intent_yaml("one") + "---\n" + intent_yaml("two")})
    await source.sync()
    old = await intents_repo.resolve("HEAD")
    assert old is not None
    await commit(
        {"stack.yaml": "# top\n" + intent_yaml("one", port=1) + "---\n" + intent_yaml("two", port=2)}
    )
    await source.sync()

    await writer.rollback("two", old, ALICE)

    text = (intents_repo.path / "stack.yaml").read_text()
    assert text.startswith("# top\n" + intent_yaml("one", port=1))  # "one" keeps its newer port
    assert "port: 2" not in text and text.count("port: 3001") == 1


async def test_rollback_refuses_what_it_cannot_do(writer, commit, source) -> None:
    v1, _ = await two_versions(writer)
    unrelated = await commit({"other.txt": "x"})
    with pytest.raises(NotFoundError, match="not in the intents repo's history"):
        await writer.rollback("kuma", "0123abc", ALICE)
    with pytest.raises(NotFoundError, match="not in the intents repo's history"):
        await writer.rollback("kuma", "--all", ALICE)
    first = (await source.repo.git("rev-list", "--max-parents=0", "HEAD")).decode().strip()
    with pytest.raises(NotFoundError, match="was not defined at revision"):
        await writer.rollback("kuma", first, ALICE)
    with pytest.raises(ApplyError, match="nothing would change"):
        await writer.rollback("kuma", unrelated, ALICE)
    await writer.rollback("kuma", v1, ALICE)
    with pytest.raises(ApplyError, match="nothing would change"):
        await writer.rollback("kuma", v1, ALICE)


async def test_history_and_rollback_over_the_api(api: httpx.AsyncClient, writer, store: Store) -> None:
    v1, v2 = await two_versions(writer)
    # What the reconciler records when a plan from v2 is applied.
    await store.record_audit(
        AuditEvent(
            time=datetime.now(UTC),
            actor="controller",
            action="applied",
            resource="DeploymentIntent/kuma",
            revision=v2,
            details={"digest": "d" * 64},
        )
    )

    response = await api.get("/api/v1/intents/kuma/history")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["path"] == "kuma.yaml" and body["generation"] == 2
    items = body["items"]
    assert [i["revision"] for i in items] == [v2, v1]  # newest first
    assert [i["generation"] for i in items] == [2, 1]
    assert [(i["applied"], i["digest"]) for i in items] == [(True, "d" * 64), (False, None)]
    assert items[0]["appliedAt"] and items[0]["author"] == str(ALICE)
    assert items[0]["subject"] == "Apply deploymentintent/kuma"

    rolled = await api.post("/api/v1/intents/kuma/rollback", json={"to": v1, "reason": "too new"})
    assert rolled.status_code == 200, rolled.text
    assert rolled.json()["intents"][0]["generation"] == 3
    history = (await api.get("/api/v1/intents/kuma/history")).json()
    assert history["items"][0]["revision"] == rolled.json()["revision"]
    assert history["items"][0]["subject"] == f"Roll back deploymentintent/kuma to {v1[:7]}"
    assert history["items"][0]["author"] == "Bob <bob@example.com>"

    unknown = await api.post("/api/v1/intents/kuma/rollback", json={"to": "feedbeef"})
    assert unknown.status_code == 404 and "'feedbeef' is not in the intents repo" in unknown.json()["detail"]
    same = await api.post("/api/v1/intents/kuma/rollback", json={"to": v1})
    assert same.status_code == 422 and "nothing would change" in same.json()["errors"][0]["message"]
    missing = await api.get("/api/v1/intents/nope/history")
    assert missing.status_code == 404


async def test_history_and_rollback_with_chiffonctl(context: ServerContext, writer) -> None:
    v1, v2 = await two_versions(writer)
    async with serve(create_app(context)) as url:
        table = await chiffonctl(url, "history", "intent/kuma")
        as_json = await chiffonctl(url, "history", "intent/kuma", "-o", "json")
        rolled = await chiffonctl(url, "rollback", "kuma", "--to", v1[:8], "--reason", "port broke")
        unknown = await chiffonctl(url, "rollback", "kuma", "--to", "feedbeef")

    assert table.code == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["REVISION", "AGE", "AUTHOR", "GENERATION", "APPLIED", "DIGEST", "SUBJECT"]
    assert [line.split()[0] for line in lines[1:]] == [v2[:7], v1[:7]]
    assert "Apply deploymentintent/kuma" in lines[1] and " no " in lines[1]
    assert [i["generation"] for i in json.loads(as_json.stdout)["items"]] == [2, 1]
    assert rolled.code == 0, rolled.stderr
    assert f"deploymentintent/kuma rolled back to {v1[:7]} in revision" in rolled.stdout
    assert "(generation 3)" in rolled.stdout and "waits for approval" in rolled.stdout
    assert unknown.code == 1 and "'feedbeef' is not in the intents repo's history" in unknown.stderr
