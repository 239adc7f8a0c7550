"""Suggestions end to end: real ansible-lint (offline), git repos, the store, the API and chiffonctl.

Each test works on a git copy of examples/homelab-infra with problems planted in it
(examples' own legacy-backup.yml has more), so findings are real, and accepting one
must make a real commit that real ansible-lint agrees is better.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from chiffon.agents.suggestions import service
from chiffon.api.app import create_app
from chiffon.api.context import ServerContext
from chiffon.controllers.intents_writer import IntentsWriter
from chiffon.gitrepo import GitRepo, Identity, run_git
from chiffon.resources import Run, RunStatus
from chiffon.resources.messages import AnsibleEvent
from chiffon.settings import Settings
from chiffon.store import Store
from tests.integration.live import chiffonctl, serve

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "homelab-infra"
ALICE = Identity("Alice Admin", "alice@example.com")
PLANTED = "ansible/playbooks/planted.yml"
PLANTED_TEXT = """---
# Planted problems for the suggestion tests.
- name: Planted problems
  hosts: lab
  gather_facts: false
  become: true
  tasks:
    - name: write the message of the day
      copy:
        content: "hello\\n"
        dest: "{{ homelab_root }}/motd"
        mode: "0644"
"""
LINT_SLOW = pytest.mark.timeout(400)


async def make_infra(path: Path) -> GitRepo:
    shutil.copytree(EXAMPLE, path)
    (path / PLANTED).write_text(PLANTED_TEXT)
    await run_git(path, "init", "-q", "-b", "main")
    await run_git(path, "add", "-A")
    await run_git(path, "commit", "-q", "-m", "Import homelab-infra", author=ALICE)
    return GitRepo(path)


@pytest.fixture
async def infra(tmp_path: Path) -> GitRepo:
    return await make_infra(tmp_path / "homelab-infra")


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[Store]:
    store = Store.from_url(f"sqlite+aiosqlite:///{tmp_path / 'chiffon.db'}")
    await store.migrate()
    yield store
    await store.close()


async def seed_repeated_runs(store: Store) -> None:
    """Two successful runs of the same plan; the second still changes a task."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for index, run_id in enumerate(("backup-1", "backup-2")):
        at = start + timedelta(minutes=10 * index)
        await store.upsert_run(
            Run(
                id=run_id,
                intent="backup",
                generation=1,
                plan_digest="d" * 64,
                step="backup",
                step_index=0,
                status=RunStatus.SUCCESSFUL,
                rc=0,
                created_at=at,
                started_at=at,
                finished_at=at,
            )
        )
        await store.append_run_events(
            run_id,
            [
                AnsibleEvent(
                    seq=1,
                    event="runner_on_ok",
                    task="Set the backup retention",
                    host="localhost",
                    status="changed",
                )
            ],
        )


def by_category(items: list[dict[str, object]]) -> dict[str, list[dict[str, object]]]:
    found: dict[str, list[dict[str, object]]] = {}
    for item in items:
        found.setdefault(str(item["category"]), []).append(item)
    return found


@LINT_SLOW
async def test_scan_accept_dismiss_through_chiffonctl(
    source, store: Store, infra: GitRepo, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    await seed_repeated_runs(store)
    settings = Settings(home=tmp_path / "home", infra_repo=infra.path)
    context = ServerContext(settings, store, source, IntentsWriter(source))
    head = await infra.resolve("HEAD")
    async with serve(create_app(context)) as server:
        scanned = await chiffonctl(server, "suggestions", "scan", within=300)
        assert scanned.code == 0, scanned.stderr
        assert "new" in scanned.stdout

        listed = await chiffonctl(server, "suggestions", "list", "--status", "open", "-o", "json")
        assert listed.code == 0, listed.stderr
        items = json.loads(listed.stdout)["items"]
        found = by_category(items)
        # ansible-lint, with patches where a fixer knows the rule
        casing = next(i for i in found["ansible-lint/name[casing]"] if i["file"] == PLANTED)
        assert (
            casing["line"] == 8
            and casing["patch"]
            and "+    - name: Write the message of the day" in casing["patch"]
        )
        assert any(i["file"] == PLANTED for i in found["ansible-lint/fqcn[action-core]"])
        assert "ansible-lint/no-changed-when" in found
        # static checks
        assert [i["file"] for i in found["static/become-unneeded"]] == [PLANTED]
        assert any(i["file"].endswith("legacy-backup.yml") for i in found["static/shell-instead-of-module"])
        assert any(i["file"].endswith("legacy-backup.yml") for i in found["static/missing-handler"])
        # run-based: pointed at the task in the repo
        [idempotency] = found["run/not-idempotent"]
        assert idempotency["file"] == "ansible/playbooks/legacy-backup.yml" and idempotency["line"] == 21

        # a rescan finds the same things and adds nothing
        again = await chiffonctl(server, "suggestions", "scan", within=300)
        assert again.code == 0 and ", 0 new," in again.stdout, again.stdout
        assert len(await store.list_suggestions()) == len(items)

        shown = await chiffonctl(server, "suggestions", "show", str(casing["id"]))
        assert shown.code == 0 and "Patch:" in shown.stdout and "name[casing]" in shown.stdout

        accepted = await chiffonctl(server, "suggestions", "accept", str(casing["id"]), within=300)
        assert accepted.code == 0, accepted.stderr
        branch = f"chiffon/suggestion-{casing['id']}"
        assert f"on {branch}" in accepted.stdout

        dismissed = await chiffonctl(
            server,
            "suggestions",
            "dismiss",
            str(idempotency["id"]),
            "--reason",
            "it writes a timestamp on purpose",
        )
        assert dismissed.code == 0, dismissed.stderr
        twice = await chiffonctl(server, "suggestions", "dismiss", str(idempotency["id"]))
        assert twice.code == 2 and "is dismissed" in twice.stderr  # 409: like a stale approval
        for verb in ("show", "accept", "dismiss"):
            missing = await chiffonctl(server, "suggestions", verb, "999999")
            assert missing.code == 1 and "not found" in missing.stderr, (verb, missing.stderr)

    # The commit is on its own branch; the checked-out branch and working copy are untouched.
    assert await infra.resolve("HEAD") == head and await infra.uncommitted_files() == []
    commit = await infra.commit_info(branch)
    assert commit.author.email == "erin@example.com"
    message = (await infra.git("log", "-1", "--format=%B", branch)).decode()
    assert message.startswith(f"Fix name[casing] in {PLANTED}:8")
    assert "Signed-off-by: Erin Tester <erin@example.com>" in message
    changed = (await infra.read_file(branch, PLANTED) or b"").decode()
    assert "- name: Write the message of the day" in changed
    statuses = {s.id: s.status for s in await store.list_suggestions()}
    assert statuses[casing["id"]] == "accepted" and statuses[idempotency["id"]] == "dismissed"  # type: ignore[index]
    audit = await store.list_audit(resource=f"Suggestion/{casing['id']}")
    assert audit[0].action == "suggestion.accept" and audit[0].details["branch"] == branch
    assert audit[0].details["lintAfter"] < audit[0].details["lintBefore"]
    [dismissal] = await store.list_audit(resource=f"Suggestion/{idempotency['id']}")
    assert dismissal.details["reason"] == "it writes a timestamp on purpose"


@LINT_SLOW
async def test_accept_on_current_branch_then_rescan_marks_it_implemented(
    sqlite_store: Store, infra: GitRepo
) -> None:
    await service.scan(sqlite_store, infra.path)
    suggestions = await sqlite_store.list_suggestions()
    fqcn = next(
        s for s in suggestions if s.category == "ansible-lint/fqcn[action-core]" and s.file == PLANTED
    )
    unneeded = next(s for s in suggestions if s.category == "static/become-unneeded")
    before = await infra.resolve("HEAD")

    result = await service.accept(sqlite_store, infra.path, fqcn.id, ALICE, on_current_branch=True)
    assert result.branch == "main" and result.commit == await infra.resolve("HEAD") != before
    assert (
        result.lint_after is not None
        and result.lint_before is not None
        and result.lint_after < result.lint_before
    )
    assert "ansible.builtin.copy:" in (infra.path / PLANTED).read_text()
    # The static suggestion's patch predates that commit: it still applies (git finds its context).
    second = await service.accept(sqlite_store, infra.path, unneeded.id, ALICE, on_current_branch=True)
    assert second.commit == await infra.resolve("HEAD")
    assert "become: false" in (infra.path / PLANTED).read_text()
    assert await infra.uncommitted_files() == []

    rescan = await service.scan(sqlite_store, infra.path)
    assert rescan.new == 0 and rescan.implemented == 2
    statuses = {s.id: s.status for s in await sqlite_store.list_suggestions()}
    assert statuses[fqcn.id] == statuses[unneeded.id] == "implemented"


@LINT_SLOW
async def test_a_patch_that_does_not_help_or_apply_is_not_committed(
    sqlite_store: Store, infra: GitRepo
) -> None:
    useless = (
        f"--- a/{PLANTED}\n+++ b/{PLANTED}\n@@ -1,3 +1,3 @@\n ---\n"
        "-# Planted problems for the suggestion tests.\n+# Planted problems, still there.\n"
        " - name: Planted problems\n"
    )
    stale = useless.replace(" - name: Planted problems", " - name: Something else")
    made = [
        await sqlite_store.add_suggestion(
            category="ansible-lint/name[casing]",
            file=PLANTED,
            line=8,
            reasoning="r",
            patch=patch,
            fingerprint=name * 8,
        )
        for name, patch in (("useless1", useless), ("stalepat", stale))
    ]
    branches = await infra.git("branch", "--list")
    with pytest.raises(service.SuggestionError, match=r"did not improve|still reports"):
        await service.accept(sqlite_store, infra.path, made[0].id, ALICE)
    with pytest.raises(service.SuggestionError, match="no longer applies"):
        await service.accept(sqlite_store, infra.path, made[1].id, ALICE)
    assert await infra.git("branch", "--list") == branches
    assert {s.status for s in await sqlite_store.list_suggestions()} == {"open"}
    failures = await sqlite_store.list_audit(action="suggestion.accept")
    assert [event.outcome for event in failures] == ["failure", "failure"]


@pytest.fixture
async def api(source, store: Store, infra: GitRepo, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:  # type: ignore[no-untyped-def]
    settings = Settings(home=tmp_path / "home", infra_repo=infra.path)
    context = ServerContext(settings, store, source, IntentsWriter(source))
    transport = httpx.ASGITransport(app=create_app(context))
    headers = {"X-Chiffon-Actor": str(ALICE)}
    async with httpx.AsyncClient(transport=transport, base_url="http://chiffon", headers=headers) as client:
        yield client


async def test_api_lists_filters_dismisses_and_answers_404(api: httpx.AsyncClient, store: Store) -> None:
    manual = await store.add_suggestion(
        category="static/missing-health-check",
        file="roles/web/tasks/main.yml",
        line=1,
        reasoning="why",
        fingerprint="f" * 64,
    )
    other = await store.add_suggestion(
        category="run/not-idempotent", file="site.yml", line=3, reasoning="why", fingerprint="e" * 64
    )
    listed = (await api.get("/api/v1/suggestions")).json()["items"]
    assert {item["id"] for item in listed} == {manual.id, other.id}
    assert listed[0]["source"] in ("static", "run") and listed[0]["rule"]
    assert (await api.get("/api/v1/suggestions", params={"status": "bogus"})).status_code == 422

    dismissed = await api.post(f"/api/v1/suggestions/{other.id}/dismiss", json={"reason": "expected"})
    assert dismissed.status_code == 200 and dismissed.json()["status"] == "dismissed"
    assert [
        i["id"] for i in (await api.get("/api/v1/suggestions", params={"status": "open"})).json()["items"]
    ] == [manual.id]
    assert (await api.post(f"/api/v1/suggestions/{other.id}/dismiss", json={})).status_code == 409

    # No patch: accepting records the decision, nothing is committed.
    accepted = await api.post(f"/api/v1/suggestions/{manual.id}/accept", json={})
    assert accepted.status_code == 200 and accepted.json()["commit"] is None
    shown = (await api.get(f"/api/v1/suggestions/{manual.id}")).json()
    assert shown["status"] == "accepted" and shown["history"][0]["action"] == "suggestion.accept"
    assert shown["history"][0]["actor"] == str(ALICE)

    for method, path in (("GET", "/999999"), ("POST", "/999999/accept"), ("POST", "/999999/dismiss")):
        response = await api.request(
            method, f"/api/v1/suggestions{path}", json={} if method == "POST" else None
        )
        assert response.status_code == 404 and "not found" in response.json()["detail"]
    bad_branch = await api.post(f"/api/v1/suggestions/{manual.id}/accept", json={"branch": "../evil"})
    assert bad_branch.status_code == 409
