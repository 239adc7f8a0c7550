"""``GET /api/v1/catalog`` and ``chiffonctl catalog list|search``, against the bundled example.

The catalog does not touch the database, so these run on SQLite only; the
CLI tests run the real ``chiffonctl`` against the API on a real socket.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from chiffon.api.app import create_app
from chiffon.api.context import ServerContext
from chiffon.controllers.intents_writer import IntentsWriter
from chiffon.settings import Settings
from chiffon.store import Store
from tests.integration.live import chiffonctl, serve

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "homelab-infra"
KUMA_DEPLOY = "ansible/playbooks/kuma-deployment.yml"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = Store.from_url(f"sqlite+aiosqlite:///{tmp_path / 'state' / 'chiffon.db'}")
    await opened.migrate()
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def context(source, store: Store, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> ServerContext:  # type: ignore[no-untyped-def]
    infra = tmp_path / "homelab-infra"
    shutil.copytree(EXAMPLE, infra)
    # One embedding cache for the module's tests: the model embeds the example once.
    cache = tmp_path_factory.getbasetemp() / "catalog-api-cache"
    settings = Settings(home=tmp_path, infra_repo=infra, catalog_cache_dir=cache)
    return ServerContext(settings, store, source, IntentsWriter(source))


@pytest.fixture
async def api(context: ServerContext) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(context))
    async with httpx.AsyncClient(transport=transport, base_url="http://chiffon") as client:
        yield client


async def test_list_without_a_query(api: httpx.AsyncClient) -> None:
    body = (await api.get("/api/v1/catalog")).json()
    assert body["kind"] == "List"
    ids = {item["id"] for item in body["items"]}
    assert f"playbook:{KUMA_DEPLOY}" in ids and "role:ansible/roles/uptime_kuma" in ids
    assert "compose-stack:compose/uptime-kuma/docker-compose.yml" in ids
    assert body["inventories"][0]["path"] == "ansible/inventory/hosts.yml"
    assert all("text" not in item for item in body["items"])
    roles = (await api.get("/api/v1/catalog", params={"kind": "role"})).json()["items"]
    assert {item["kind"] for item in roles} == {"role"} and len(roles) == 7


async def test_search_ranks_with_scores_and_confidence(api: httpx.AsyncClient) -> None:
    response = await api.get("/api/v1/catalog", params={"q": "uptime monitoring", "limit": 3})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["kind"] == "CatalogSearch" and body["confident"] is True and len(body["items"]) == 3
    first = body["items"][0]
    assert first["path"] == KUMA_DEPLOY and first["confidence"] in ("high", "medium")
    assert {"score", "semantic", "lexical"} <= set(first)


async def test_absent_service_gets_no_confident_match_and_a_template(api: httpx.AsyncClient) -> None:
    body = (await api.get("/api/v1/catalog", params={"q": "deploy gotify notifications"})).json()
    assert body["confident"] is False and "no confident match" in body["message"]
    assert body["template"].startswith("chiffonctl template new compose-service --name gotify")


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"q": "  "}, "query is empty"),
        ({"q": "kuma", "limit": 0}, "limit"),
        ({"q": "kuma", "limit": 101}, "limit"),
        ({"q": "x" * 501}, "q"),
        ({"kind": "song"}, "kind"),
    ],
)
async def test_bad_input_is_422(api: httpx.AsyncClient, params: dict[str, object], says: str) -> None:
    response = await api.get("/api/v1/catalog", params=params)
    assert response.status_code == 422
    assert says in response.text


async def test_a_missing_checkout_is_503(context: ServerContext, api: httpx.AsyncClient) -> None:
    shutil.rmtree(context.settings.resolved_infra_repo)
    response = await api.get("/api/v1/catalog")
    assert response.status_code == 503 and "does not exist" in response.json()["detail"]


# chiffonctl ---------------------------------------------------------------------------------


async def test_chiffonctl_catalog_search_and_list(context: ServerContext) -> None:
    async with serve(create_app(context)) as url:
        found = await chiffonctl(url, "catalog", "search", "uptime monitoring")
        assert found.code == 0, found.stderr
        first = found.stdout.splitlines()[1]
        assert "kuma-deployment" in first and first.split()[0] == "1"

        as_json = await chiffonctl(url, "catalog", "search", "uptime monitoring", "-o", "json", "-n", "2")
        assert as_json.code == 0 and len(json.loads(as_json.stdout)["items"]) == 2

        absent = await chiffonctl(url, "catalog", "search", "deploy gotify notifications")
        assert absent.code == 0
        assert (
            "No confident match" in absent.stdout
            and "chiffonctl template new compose-service" in absent.stdout
        )

        listed = await chiffonctl(url, "catalog", "list")
        assert listed.code == 0 and "kuma-deployment" in listed.stdout and "RUNS" in listed.stdout
        as_yaml = await chiffonctl(url, "catalog", "list", "-o", "yaml")
        assert as_yaml.code == 0 and "kind: List" in as_yaml.stdout


@pytest.mark.parametrize(
    "args",
    [
        ("search", ""),
        ("search", "kuma", "-n", "0"),
        ("search", "kuma", "--limit", "500"),
        ("list", "--kind", "song"),
    ],
)
async def test_chiffonctl_bad_input_exits_1_without_a_server(args: tuple[str, ...]) -> None:
    result = await chiffonctl("http://127.0.0.1:9", "catalog", *args)
    assert result.code == 1, (result.stdout, result.stderr)
    assert result.stderr.startswith("chiffonctl: error:")
