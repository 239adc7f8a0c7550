"""The REST API over the real store (SQLite and PostgreSQL) and a real intents repo."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from chiffon.api.app import MAX_BODY_BYTES, create_app
from chiffon.api.context import ServerContext
from chiffon.controllers.intents_writer import IntentsWriter
from chiffon.settings import Settings
from tests.helpers import BOMB, intent_yaml

ALICE_HEADER = {"X-Chiffon-Actor": "Alice Admin <alice@example.com>"}


def make_client(source, store, tmp_path: Path, **settings: object) -> httpx.AsyncClient:  # type: ignore[no-untyped-def]
    context = ServerContext(Settings(home=tmp_path, **settings), store, source, IntentsWriter(source))
    transport = httpx.ASGITransport(app=create_app(context))
    return httpx.AsyncClient(transport=transport, base_url="http://chiffon", headers=ALICE_HEADER)


@pytest.fixture
async def api(source, store, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client(source, store, tmp_path) as client:
        yield client


def apply_body(**texts: str) -> dict[str, object]:
    return {"files": [{"name": f"{name}.yaml", "content": text} for name, text in texts.items()]}


async def test_apply_then_list_shows_generation_revision_and_conditions(api, intents_repo) -> None:
    response = await api.post("/api/v1/intents/apply", json=apply_body(kuma=intent_yaml("kuma")))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["committed"] and body["intents"][0] == {
        "name": "kuma",
        "outcome": "created",
        "path": "kuma.yaml",
        "generation": 1,
        "revision": body["revision"],
    }
    listed = (await api.get("/api/v1/intents")).json()
    assert listed["kind"] == "List"
    [item] = listed["items"]
    assert item["metadata"]["generation"] == 1
    assert item["status"]["observedRevision"] == await intents_repo.resolve("HEAD")
    assert item["status"]["sourcePath"] == "kuma.yaml"
    assert {c["status"] for c in item["status"]["conditions"]} == {"Unknown"}
    author = (await intents_repo.commit_info("HEAD")).author
    assert author.email == "alice@example.com"


async def test_invalid_documents_get_422_naming_file_line_and_field(api, store) -> None:
    bad = intent_yaml("bad").replace("limit: localhost", "limit: localhost\n  colour: blue")
    response = await api.post("/api/v1/intents/apply", json=apply_body(good=intent_yaml("good"), bad=bad))
    assert response.status_code == 422
    body = response.json()
    assert "nothing was applied" in body["detail"]
    assert body["errors"] == [
        {
            "source": "bad.yaml",
            "line": 12,
            "field": "spec.colour",
            "message": "Extra inputs are not permitted",
        }
    ]
    assert await store.list_intents() == []


async def test_alias_bomb_is_refused_quickly(api) -> None:
    response = await api.post("/api/v1/intents/apply", json=apply_body(bomb=BOMB))
    assert response.status_code == 422 and "alias" in response.text


async def test_oversized_body_is_refused_before_reading(api) -> None:
    response = await api.post(
        "/api/v1/intents/apply", content=b"{}", headers={"Content-Length": str(MAX_BODY_BYTES + 1)}
    )
    assert response.status_code == 413


async def test_unknown_intent_is_404(api) -> None:
    assert (await api.get("/api/v1/intents/nope")).status_code == 404
    assert (await api.delete("/api/v1/intents/nope")).status_code == 404


async def test_label_selector(api) -> None:
    await api.post("/api/v1/intents/apply", json=apply_body(a=intent_yaml("kuma"), b=intent_yaml("proxy")))
    found = (await api.get("/api/v1/intents", params={"labelSelector": "service=proxy"})).json()["items"]
    assert [i["metadata"]["name"] for i in found] == ["proxy"]
    assert (await api.get("/api/v1/intents", params={"labelSelector": "nonsense"})).status_code == 422


async def test_delete_then_audit_trail(api) -> None:
    await api.post("/api/v1/intents/apply", json=apply_body(kuma=intent_yaml("kuma")))
    assert (await api.delete("/api/v1/intents/kuma")).status_code == 200
    assert (await api.get("/api/v1/intents/kuma")).status_code == 404
    events = (await api.get("/api/v1/audit", params={"resource": "DeploymentIntent/kuma"})).json()["items"]
    assert [e["action"] for e in events] == ["intent.pruned", "intent.created"]


async def test_sources_report_file_errors(api, commit) -> None:
    await commit({"broken.yaml": "kind: [\n"})
    await api.post("/api/v1/sources/sync")
    [source] = (await api.get("/api/v1/sources")).json()["items"]
    assert source["fileErrors"][0]["path"] == "broken.yaml" and source["fileErrors"][0]["line"]


async def test_token_is_required_when_configured(source, store, tmp_path: Path) -> None:
    async with make_client(source, store, tmp_path, api_token="s3cret-token") as client:
        assert (await client.get("/api/v1/intents")).status_code == 401
        wrong = await client.get("/api/v1/intents", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "s3cret" not in wrong.text
        ok = await client.get("/api/v1/intents", headers={"Authorization": "Bearer s3cret-token"})
        assert ok.status_code == 200


async def test_dry_run_commits_nothing(api, intents_repo) -> None:
    head = await intents_repo.resolve("HEAD")
    body = {**apply_body(kuma=intent_yaml("kuma")), "dry_run": True}
    response = await api.post("/api/v1/intents/apply", json=body)
    assert response.json()["intents"][0]["outcome"] == "valid"
    assert await intents_repo.resolve("HEAD") == head


async def planned(store, name: str, digest: str = "a" * 64) -> None:  # type: ignore[no-untyped-def]
    """Give an applied intent a plan, as the reconciler would."""
    from chiffon.resources import Plan, PlannedStep

    intent = await store.get_intent(name)
    status = intent.status.model_copy(
        update={"plan": Plan(digest=digest, steps=[PlannedStep(name="deploy", content_hash="c" * 64)])}
    )
    assert await store.write_intent_status(name, status)


async def test_approve_binds_to_the_current_plan_digest(api, store, intents_repo) -> None:
    await api.post("/api/v1/intents/apply", json=apply_body(kuma=intent_yaml("kuma")))
    assert (await api.post("/api/v1/intents/kuma/approve", json={})).status_code == 409  # no plan yet
    await planned(store, "kuma", "a" * 64)
    head = await intents_repo.resolve("HEAD")
    stale = await api.post("/api/v1/intents/kuma/approve", json={"plan": "b" * 12})
    assert stale.status_code == 409 and "is stale" in stale.json()["detail"] and "aaaaaaaaaaaa" in stale.text
    ok = await api.post("/api/v1/intents/kuma/approve", json={"plan": "a" * 12, "reason": "looks right"})
    assert (
        ok.status_code == 200 and ok.json()["digest"] == "a" * 64 and ok.json()["actor"].startswith("Alice")
    )
    [approval] = await store.list_approvals("kuma")
    assert approval.decision.value == "Approved" and approval.reason == "looks right"
    assert await intents_repo.resolve("HEAD") == head  # approving never touches git
    actions = [
        e["action"] for e in (await api.get("/api/v1/audit", params={"action": "approve"})).json()["items"]
    ]
    assert actions == ["approve"]


async def test_reject_needs_a_reason_and_unknown_intents_are_404(api, store) -> None:
    await api.post("/api/v1/intents/apply", json=apply_body(kuma=intent_yaml("kuma")))
    await planned(store, "kuma")
    assert (await api.post("/api/v1/intents/kuma/reject", json={})).status_code == 422
    assert (await api.post("/api/v1/intents/kuma/reject", json={"reason": "not now"})).status_code == 200
    assert (await api.post("/api/v1/intents/nope/approve", json={})).status_code == 404
    bad = await api.post("/api/v1/intents/kuma/approve", json={"plan": "not-hex!"})
    assert bad.status_code == 422


async def test_runs_endpoints(api, store) -> None:
    from chiffon.resources import Run

    await store.upsert_run(
        Run(id="kuma-0123", intent="kuma", generation=1, plan_digest="a" * 64, step="deploy", step_index=0)
    )
    listed = (await api.get("/api/v1/runs", params={"intent": "kuma"})).json()["items"]
    assert [r["id"] for r in listed] == ["kuma-0123"]
    assert (await api.get("/api/v1/runs/kuma-0123")).json()["status"] == "pending"
    assert (await api.get("/api/v1/runs/nope")).status_code == 404
    assert (await api.get("/api/v1/runs/kuma-0123/events")).json()["items"] == []
