"""The git source against a real repo and the real store (SQLite and PostgreSQL)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from chiffon.controllers.source import GitSource, SourceConfig
from chiffon.gitrepo import GitRepo
from chiffon.resources import ConditionStatus
from chiffon.store import Store
from tests.helpers import ALICE, BOMB, intent_yaml


async def test_sync_creates_intents_with_unknown_conditions(source, commit, store) -> None:
    sha = await commit({"kuma.yaml": intent_yaml("kuma"), "proxy.yaml": intent_yaml("proxy")})
    report = await source.sync()
    assert report.revision == sha and sorted(report.changed) == ["kuma", "proxy"]
    kuma = await store.get_intent("kuma")
    assert kuma.metadata.generation == 1 and kuma.metadata.uid
    assert kuma.status.observed_revision == sha
    assert {c.type: c.status for c in kuma.status.conditions} == {
        "Planned": ConditionStatus.UNKNOWN,
        "Approved": ConditionStatus.UNKNOWN,
        "Scheduled": ConditionStatus.UNKNOWN,
        "Ready": ConditionStatus.UNKNOWN,
    }
    events = await store.list_audit(resource="DeploymentIntent/kuma")
    assert [e.action for e in events] == ["intent.created"] and events[0].actor == str(ALICE)


async def test_spec_edit_bumps_generation_and_comment_edit_does_not(source, commit, store) -> None:
    await commit({"kuma.yaml": intent_yaml("kuma", port=3001)})
    await source.sync()
    comment_sha = await commit({"kuma.yaml": intent_yaml("kuma", port=3001, comment="only a comment")})
    await source.sync()
    kuma = await store.get_intent("kuma")
    assert kuma.metadata.generation == 1
    assert kuma.status.observed_revision == comment_sha  # the file changed at that commit
    spec_sha = await commit({"kuma.yaml": intent_yaml("kuma", port=3002)})
    await source.sync()
    kuma = await store.get_intent("kuma")
    assert kuma.metadata.generation == 2 and kuma.status.observed_revision == spec_sha
    assert kuma.spec.vars == {"port": 3002}


async def test_a_resync_without_changes_writes_no_intent(source, commit, store) -> None:
    await commit({"kuma.yaml": intent_yaml("kuma")})
    await source.sync()
    report = await source.sync()
    assert report.results == [] and report.unchanged == 1 and report.changed == []


async def test_uncommitted_edits_are_reported_not_applied(
    source, commit, store, intents_repo: GitRepo
) -> None:
    await commit({"kuma.yaml": intent_yaml("kuma", port=3001)})
    (intents_repo.path / "kuma.yaml").write_text(intent_yaml("kuma", port=9999))
    await source.sync()
    assert (await store.get_intent("kuma")).spec.vars == {"port": 3001}
    [status] = await store.list_source_statuses()
    assert status.uncommitted == ["kuma.yaml"]


async def test_one_bad_file_does_not_stop_the_others(source, commit, store) -> None:
    await commit(
        {
            "good.yaml": intent_yaml("good"),
            "typo.yaml": "apiVersion: chiffon.dev/v1alpha1\nkind: [\n",
            "bomb.yaml": BOMB,
            "schema.yaml": intent_yaml("schema").replace("steps:", "stepz:"),
        }
    )
    started = time.monotonic()
    report = await source.sync()
    assert time.monotonic() - started < 5
    assert [i.metadata.name for i in await store.list_intents()] == ["good"]
    by_path = {e.path: e for e in report.errors}
    assert set(by_path) == {"typo.yaml", "bomb.yaml", "schema.yaml"}
    assert by_path["typo.yaml"].line is not None
    assert any(e.field == "spec.stepz" for e in report.errors)
    [status] = await store.list_source_statuses()
    assert len(status.file_errors) == len(report.errors) and status.intents == 1


async def test_a_broken_file_keeps_its_intents_and_a_deleted_file_prunes_them(source, commit, store) -> None:
    await commit({"kuma.yaml": intent_yaml("kuma"), "proxy.yaml": intent_yaml("proxy")})
    await source.sync()
    await commit({"kuma.yaml": "apiVersion: [broken\n"})
    await source.sync()
    assert {i.metadata.name for i in await store.list_intents()} == {"kuma", "proxy"}
    await commit({"kuma.yaml": None, "proxy.yaml": None})
    report = await source.sync()
    assert sorted(report.pruned) == ["kuma", "proxy"] and await store.list_intents() == []
    actions = [e.action for e in await store.list_audit(resource="DeploymentIntent/proxy")]
    assert actions[0] == "intent.pruned"


async def test_multi_document_files_and_folders(source, commit, store) -> None:
    both = intent_yaml("one") + "---\n" + intent_yaml("two")
    await commit({"apps/both.yaml": both, "apps/nested/three.yml": intent_yaml("three")})
    await source.sync()
    assert [i.metadata.name for i in await store.list_intents()] == ["one", "three", "two"]


async def test_intents_path_limits_what_is_read(intents_repo: GitRepo, commit, store, tmp_path: Path) -> None:
    await commit({"chiffon/kuma.yaml": intent_yaml("kuma"), "other/ignored.yaml": "not: an intent\n"})
    source = GitSource(SourceConfig(str(intents_repo.path), tmp_path / "co", path="chiffon"), store)
    report = await source.sync()
    assert report.errors == [] and [i.metadata.name for i in await store.list_intents()] == ["kuma"]


async def test_remote_source_fetches_new_commits(
    intents_repo: GitRepo, commit, store, tmp_path: Path
) -> None:
    await commit({"kuma.yaml": intent_yaml("kuma")})
    bare = tmp_path / "remote.git"
    await intents_repo.git("clone", "-q", "--bare", str(intents_repo.path), str(bare))
    source = GitSource(SourceConfig(f"file://{bare}", tmp_path / "checkout"), store)
    await source.open()
    await source.sync()
    assert [i.metadata.name for i in await store.list_intents()] == ["kuma"]
    pusher = await GitRepo.clone(f"file://{bare}", tmp_path / "pusher")
    await pusher.commit({"proxy.yaml": intent_yaml("proxy").encode()}, "add proxy", ALICE)
    await pusher.push("origin", "main")
    report = await source.sync()
    assert report.changed == ["proxy"] and report.revision == await pusher.resolve("HEAD")


async def test_empty_branch_is_reported_not_crashed(tmp_path: Path, store) -> None:
    path = tmp_path / "empty"
    path.mkdir()
    await GitRepo(path).git("init", "-q", "-b", "main")
    source = GitSource(SourceConfig(str(path), tmp_path / "co"), store)
    report = await source.sync()
    assert report.revision is None
    [status] = await store.list_source_statuses()
    assert "no commits" in (status.last_error or "")


async def test_watch_loop_picks_up_a_commit_within_seconds(source, commit, store) -> None:
    import asyncio

    stop = asyncio.Event()
    task = asyncio.create_task(source.run(stop))
    try:
        await asyncio.sleep(0.5)
        await commit({"kuma.yaml": intent_yaml("kuma")})
        for _ in range(100):
            if await store.get_intent("kuma") is not None:
                break
            await asyncio.sleep(0.1)
        assert await store.get_intent("kuma") is not None, "the watcher did not see the commit within 10 s"
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_watch_loop_survives_an_unreachable_database(
    intents_repo: GitRepo, commit, tmp_path: Path, caplog
) -> None:
    import asyncio

    from chiffon.store import Store

    await commit({"kuma.yaml": intent_yaml("kuma")})
    dead = Store.from_url("postgresql+asyncpg://postgres:hunter2@127.0.0.1:1/none")
    source = GitSource(SourceConfig(str(intents_repo.path), tmp_path / "co"), dead)
    stop = asyncio.Event()
    task = asyncio.create_task(source.run(stop))
    await asyncio.sleep(1.5)
    assert not task.done(), "the loop must keep retrying, not die"
    stop.set()
    await asyncio.wait_for(task, 10)
    await dead.close()
    failures = [r.getMessage() for r in caplog.records if "sync of intents failed" in r.getMessage()]
    assert failures and "127.0.0.1:1" in failures[0] and "hunter2" not in failures[0]


async def test_a_change_another_process_synced_is_still_announced(
    intents_repo: GitRepo, store: Store, tmp_path: Path, commit: Callable[..., Any]
) -> None:
    """`chiffon api` syncs what `chiffonctl apply` commits; the controller's source must still tell."""
    api = GitSource(SourceConfig(str(intents_repo.path), tmp_path / "api-checkout"), store)
    heard: list[list[str]] = []

    async def listen(names: Sequence[str]) -> None:
        heard.append(list(names))

    controller = GitSource(SourceConfig(str(intents_repo.path), tmp_path / "ctl-checkout"), store)
    controller.subscribe(listen)
    await commit({"kuma.yaml": intent_yaml("kuma")})
    await controller.sync()
    assert heard == [["kuma"]]

    await commit({"kuma.yaml": intent_yaml("kuma", port=4000), "proxy.yaml": intent_yaml("proxy")})
    await api.sync()  # the store is up to date before the controller looks
    await controller.sync()
    assert heard[-1] == ["kuma", "proxy"]

    await commit({"proxy.yaml": None})
    await api.sync()
    await controller.sync()
    assert heard[-1] == ["proxy"]

    await controller.sync()  # nothing new: nobody is told anything
    assert len(heard) == 3
