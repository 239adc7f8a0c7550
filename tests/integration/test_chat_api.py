"""``/api/v1/chat`` against the bundled example, on SQLite and PostgreSQL, with the offline compiler.

A proposal commits nothing; a confirm commits exactly the proposed YAML as
the person confirming; a proposal is decided once; a modification makes a
new generation of the same intent and refuses to overwrite a change made
since. Bad requests get a 422 naming what is wrong and change nothing.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from chiffon.api.app import create_app
from chiffon.api.context import ServerContext
from chiffon.controllers.intents_writer import IntentsWriter, SubmittedFile
from chiffon.gitrepo import GitRepo, Identity
from chiffon.resources.yamlio import parse_intents
from chiffon.settings import Settings
from chiffon.store import Store
from tests.helpers import intent_yaml

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "homelab-infra"
KUMA_REQUEST = "Deploy Kuma Uptime, add existing portals to config"
KUMA_PLAYBOOKS = ["ansible/playbooks/kuma-deployment.yml", "ansible/playbooks/kuma-config-update.yml"]
ALICE = {"X-Chiffon-Actor": "Alice <alice@example.com>"}


@pytest.fixture
async def api(
    source, store: Store, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[httpx.AsyncClient]:  # type: ignore[no-untyped-def]
    infra = tmp_path / "homelab-infra"
    shutil.copytree(EXAMPLE, infra)
    settings = Settings(
        home=tmp_path,
        infra_repo=infra,
        catalog_cache_dir=tmp_path_factory.getbasetemp() / "chat-catalog-cache",
        compiler_default_limit="localhost",
    )
    context = ServerContext(settings, store, source, IntentsWriter(source))
    transport = httpx.ASGITransport(app=create_app(context))
    async with httpx.AsyncClient(transport=transport, base_url="http://chiffon", headers=ALICE) as client:
        yield client


async def propose(api: httpx.AsyncClient, message: str, **fields: object) -> dict[str, object]:
    response = await api.post("/api/v1/chat", json={"message": message, **fields})
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


async def test_a_proposal_previews_the_plan_in_words_and_commits_nothing(
    api: httpx.AsyncClient, store: Store, intents_repo: GitRepo
) -> None:
    before = await intents_repo.resolve("HEAD")

    proposal = await propose(api, KUMA_REQUEST)

    assert proposal["status"] == "proposed" and proposal["action"] == "create"
    assert proposal["compiler"] == {
        "engine": "offline",
        "model": None,
        "reason": "no LLM is configured: catalog match and rules",
    }
    [preview] = proposal["preview"]  # type: ignore[misc]
    assert [step["runs"] for step in preview["steps"]] == KUMA_PLAYBOOKS
    assert all(step["hosts"] == "localhost" and step["does"].endswith(".") for step in preview["steps"])
    assert preview["summary"].startswith("uptime-kuma: 2 steps on localhost")
    assert len(preview["digest"]) == 64 and preview["risk"] in ("Low", "Medium", "High")
    assert preview["estimateText"].startswith("unknown") and preview["problems"] == []
    [document] = parse_intents(str(proposal["documents"]), "proposal").intents
    assert [s.playbook for s in document.intent.spec.steps] == KUMA_PLAYBOOKS
    assert document.intent.metadata.annotations["chiffon.dev/request"] == KUMA_REQUEST
    assert any("compiler_default_limit" in w for w in proposal["warnings"])  # type: ignore[union-attr]
    assert await intents_repo.resolve("HEAD") == before and await store.get_intent("uptime-kuma") is None


async def test_confirm_commits_the_proposal_as_the_person_once(
    api: httpx.AsyncClient, store: Store, intents_repo: GitRepo
) -> None:
    proposal = await propose(api, KUMA_REQUEST)

    confirmed = await api.post(f"/api/v1/chat/{proposal['id']}/confirm")

    assert confirmed.status_code == 200, confirmed.text
    body = confirmed.json()
    assert body["status"] == "committed" and body["revision"] == await intents_repo.resolve("HEAD")
    intent = await store.get_intent("uptime-kuma")
    assert intent is not None and intent.metadata.generation == 1
    assert [s.playbook for s in intent.spec.steps] == KUMA_PLAYBOOKS and intent.spec.limit == "localhost"
    commit = (await intents_repo.git("log", "-1", "--format=%an <%ae>|%s")).decode()
    assert commit.strip() == "Alice <alice@example.com>|Apply deploymentintent/uptime-kuma"
    actions = [e.action for e in await store.list_audit(resource="DeploymentIntent/uptime-kuma")]
    assert "chat.propose" in actions and "chat.confirm" in actions

    again = await api.post(f"/api/v1/chat/{proposal['id']}/confirm")
    assert again.status_code == 409 and "already committed" in again.json()["detail"]
    assert (await api.post(f"/api/v1/chat/{proposal['id']}/discard")).status_code == 409


async def test_a_conversation_keeps_its_proposals_in_order(api: httpx.AsyncClient) -> None:
    first = await propose(api, "deploy ollama on the gpu desktop")
    second = await propose(api, "set up the reverse proxy on unraid", conversation=first["conversation"])
    discarded = await api.post(f"/api/v1/chat/{first['id']}/discard")

    listed = (await api.get(f"/api/v1/chat/conversations/{first['conversation']}")).json()["items"]

    assert discarded.json()["status"] == "discarded"
    assert [(p["id"], p["status"]) for p in listed] == [
        (first["id"], "discarded"),
        (second["id"], "proposed"),
    ]


async def test_modify_makes_a_new_generation_of_the_same_intent(api: httpx.AsyncClient, store: Store) -> None:
    created = await propose(api, KUMA_REQUEST)
    await api.post(f"/api/v1/chat/{created['id']}/confirm")

    change = await propose(api, "use unraid and port 3002", intent="uptime-kuma")

    assert change["action"] == "modify"
    [item] = change["intents"]  # type: ignore[misc]
    assert (
        item["generation"] == 1
        and "+  limit: unraid" in item["diff"]
        and "-  limit: localhost" in item["diff"]
    )
    assert "kuma_port: 3002" in item["diff"]
    assert (await api.post(f"/api/v1/chat/{change['id']}/confirm")).status_code == 200
    intent = await store.get_intent("uptime-kuma")
    assert intent is not None and intent.metadata.generation == 2
    assert (intent.spec.limit, intent.spec.vars) == ("unraid", {"kuma_port": 3002})
    assert [s.playbook for s in intent.spec.steps] == KUMA_PLAYBOOKS


async def test_a_proposal_never_overwrites_a_change_made_since(
    api: httpx.AsyncClient, store: Store, writer: IntentsWriter
) -> None:
    created = await propose(api, KUMA_REQUEST)
    await api.post(f"/api/v1/chat/{created['id']}/confirm")
    change = await propose(api, "use unraid", intent="uptime-kuma")
    edited = intent_yaml("uptime-kuma", playbook=KUMA_PLAYBOOKS[0])
    await writer.apply([SubmittedFile("edit.yaml", edited.encode())], Identity.parse("Bob <bob@x>"))

    refused = await api.post(f"/api/v1/chat/{change['id']}/confirm")

    assert refused.status_code == 409 and "changed since this proposal" in refused.json()["detail"]
    intent = await store.get_intent("uptime-kuma")
    assert intent is not None and intent.spec.limit != "unraid"


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        (
            {"message": "deploy a minecraft server"},
            422,
            'nothing in homelab-infra matches "deploy a minecraft server"',
        ),
        ({"message": "   "}, 422, "say what you want"),
        ({"message": ""}, 422, "message"),
        ({"message": "x" * 4001}, 422, "message"),
        ({"message": "use unraid", "intent": "ghost"}, 422, "deploymentintent/ghost does not exist"),
        ({"message": "deploy kuma", "priority": "Urgent"}, 422, "priority"),
        ({"message": "deploy kuma", "conversation": "../../etc"}, 422, "conversation"),
    ],
)
async def test_bad_requests_are_refused_with_what_is_wrong(
    api: httpx.AsyncClient, store: Store, body: dict[str, object], status: int, says: str
) -> None:
    response = await api.post("/api/v1/chat", json=body)

    assert response.status_code == status
    assert says in str(response.json())
    assert await store.list_intents() == []


async def test_unknown_proposals_are_404(api: httpx.AsyncClient) -> None:
    assert (await api.post("/api/v1/chat/p-000000000000/confirm")).status_code == 404
    assert (await api.get("/api/v1/chat/p-000000000000")).status_code == 404
