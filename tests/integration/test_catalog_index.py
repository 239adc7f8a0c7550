"""The catalog index with the real all-MiniLM-L6-v2 (CPU, from the package), FAISS and its disk cache.

The model is loaded once per test process (``shared_embedder``); each
catalog writes its cache under the test's tmp_path. Layouts: the bundled
example, and the ansible-nas-like repo of ``tests/catalog_layouts.py``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from chiffon.agents.catalog.discovery import EntryKind
from chiffon.agents.catalog.index import EXACT_BONUS, Catalog, Confidence
from chiffon.agents.catalog.resolver import CatalogResolver, NoMatchError
from tests.catalog_layouts import NAS_QUERIES, write_ansible_nas

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "homelab-infra"
KUMA_DEPLOY = "ansible/playbooks/kuma-deployment.yml"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Catalog:
    root = tmp_path_factory.mktemp("infra") / "homelab-infra"
    shutil.copytree(EXAMPLE, root)
    catalog = Catalog(root, tmp_path_factory.mktemp("cache"))
    catalog.warm()
    return catalog


@pytest.fixture(scope="module")
def nas(tmp_path_factory: pytest.TempPathFactory) -> Catalog:
    catalog = Catalog(write_ansible_nas(tmp_path_factory.mktemp("nas")), tmp_path_factory.mktemp("cache"))
    catalog.warm()
    return catalog


def test_uptime_monitoring_finds_the_kuma_playbook_first(example: Catalog) -> None:
    result = example.search("uptime monitoring")
    assert result.confident and result.message == ""
    first = result.matches[0]
    assert first.entry.path == KUMA_DEPLOY and first.confidence is not Confidence.LOW
    assert [m.score for m in result.matches] == sorted((m.score for m in result.matches), reverse=True)


@pytest.mark.parametrize(
    ("query", "want"),
    [
        ("deploy uptime kuma", KUMA_DEPLOY),
        ("add portals to monitoring", "ansible/playbooks/kuma-config-update.yml"),
        ("reverse proxy with TLS", "ansible/playbooks/reverse-proxy.yml"),
        ("local LLM on the GPU", "ansible/playbooks/ollama-deployment.yml"),
        ("nightly backup", "ansible/playbooks/legacy-backup.yml"),
    ],
)
def test_example_requests(example: Catalog, query: str, want: str) -> None:
    assert example.search(query).matches[0].entry.path == want


def test_an_exact_name_wins_over_semantic_neighbours(example: Catalog) -> None:
    # "common" means little to the model; the role named so must still come first.
    first = example.search("common").matches[0]
    assert (first.entry.kind, first.entry.name) == (EntryKind.ROLE, "common")
    assert first.lexical == EXACT_BONUS and first.confidence is Confidence.HIGH
    semantic_best = max(example.search("common", 20).matches, key=lambda m: m.semantic)
    assert first.score > semantic_best.semantic


def test_something_absent_says_so_and_offers_a_template(example: Catalog) -> None:
    result = example.search("deploy gotify notifications")
    assert not result.confident
    assert result.matches and all(m.confidence is Confidence.LOW for m in result.matches)
    assert "no confident match" in result.message
    assert (
        result.template
        == "chiffonctl template new compose-service --name gotify-notifications --image IMAGE --port PORT"
    )


def test_bad_queries_are_refused(example: Catalog) -> None:
    for query, limit in (("  ", 5), ("x" * 501, 5), ("kuma", 0), ("kuma", 101)):
        with pytest.raises(ValueError):
            example.search(query, limit)


def test_ansible_nas_apps_are_found_by_what_they_do(nas: Catalog) -> None:
    top1 = top3 = 0
    for query, app in NAS_QUERIES:
        names = [m.entry.name for m in nas.search(query, 3).matches]
        top1 += names[0] == app
        top3 += app in names
    assert top3 == len(NAS_QUERIES)
    assert top1 >= 0.9 * len(NAS_QUERIES)


def test_a_second_start_reads_the_cache_and_embeds_nothing(example: Catalog) -> None:
    again = Catalog(example.root, example.cache_dir.parent)
    again.warm()
    assert (again.stats.cache_loads, again.stats.discoveries, again.stats.embedded) == (1, 0, 0)
    assert again.search("uptime monitoring").matches[0].entry.path == KUMA_DEPLOY


def test_a_changed_repo_is_read_again_and_only_new_texts_are_embedded(tmp_path: Path) -> None:
    root = tmp_path / "infra"
    shutil.copytree(EXAMPLE, root)
    clock = Clock()
    catalog = Catalog(root, tmp_path / "cache", check_interval=5, clock=clock)
    catalog.warm()
    assert catalog.stats.embedded == 2 * len(catalog.entries())  # a text and a summary each
    (root / "ansible/playbooks/gotify.yml").write_text(
        "---\n# Gotify push notification server.\n- name: Deploy Gotify\n  hosts: all\n  tasks:\n"
        "    - name: Start gotify\n      community.docker.docker_container:\n        name: gotify\n"
        "        image: gotify/server:2.4\n"
    )
    # Within the check interval the old entries are served without looking at the disk.
    assert catalog.search("push notifications").matches[0].entry.name != "gotify"
    clock.now += 6
    assert catalog.search("push notifications").matches[0].entry.path == "ansible/playbooks/gotify.yml"
    assert catalog.stats.discoveries == 2
    assert catalog.stats.embedded == 2 * (len(catalog.entries()) - 1) + 2


def test_an_unchanged_repo_is_read_again_hourly_without_embedding(tmp_path: Path) -> None:
    root = tmp_path / "infra"
    shutil.copytree(EXAMPLE, root)
    clock = Clock()
    catalog = Catalog(root, tmp_path / "cache", check_interval=0, refresh_interval=3600, clock=clock)
    catalog.warm()
    embedded = catalog.stats.embedded
    clock.now += 1800
    assert catalog.refresh() is False
    clock.now += 1801
    assert catalog.refresh() is True
    catalog.warm()
    assert catalog.stats.discoveries == 2 and catalog.stats.embedded == embedded


def test_a_torn_cache_is_rebuilt(tmp_path: Path) -> None:
    root = tmp_path / "infra"
    shutil.copytree(EXAMPLE, root)
    first = Catalog(root, tmp_path / "cache")
    first.warm()
    (first.cache_dir / "embeddings.npy").write_bytes(b"not numpy")
    (first.cache_dir / "discovery.json").write_text("{")
    again = Catalog(root, tmp_path / "cache")
    again.warm()
    assert again.stats.discoveries == 1 and again.stats.embedded == 2 * len(again.entries())
    assert (again.cache_dir / "embeddings.npy").stat().st_size > 1000


def test_resolver_picks_the_kuma_playbook_and_records_the_runner_up(example: Catalog) -> None:
    choice = CatalogResolver(example).resolve("deploy uptime kuma")
    assert (choice.playbook, choice.role, choice.confident) == (KUMA_DEPLOY, None, True)
    assert choice.runner_up is not None and choice.runner_up != KUMA_DEPLOY
    assert choice.runner_up_score is not None and choice.runner_up_score <= choice.score


def test_resolver_runs_an_ansible_nas_app_through_the_site_playbook(nas: Catalog) -> None:
    choice = CatalogResolver(nas).resolve("stream my movies and tv shows to the living room")
    assert (choice.playbook, choice.role, tuple(choice.tags)) == ("nas.yml", None, ("jellyfin",))
    assert choice.vars == {"jellyfin_enabled": True}


def test_resolver_refuses_a_goal_nothing_matches(example: Catalog) -> None:
    with pytest.raises(NoMatchError, match="chiffonctl template new compose-service --name gotify"):
        CatalogResolver(example).resolve("deploy gotify notifications")
