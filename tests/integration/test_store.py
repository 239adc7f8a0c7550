"""The store's intents and lifecycle, on SQLite and on PostgreSQL.

Generation semantics are the heart of it: spec changes bump ``generation``,
nothing else does, and concurrent upserts of the same change bump it once.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from chiffon.resources import (
    ConditionStatus,
    DeploymentIntent,
    IntentStatus,
    Reason,
    set_condition,
)
from chiffon.store import SourceRef, Store, StoreError

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
BASE_SPEC: dict[str, Any] = {
    "service": "uptime-kuma",
    "steps": [{"name": "deploy", "playbook": "ansible/playbooks/kuma-deployment.yml"}],
    "vars": {"kuma_port": 3001},
}


def make_intent(
    name: str = "uptime-kuma",
    *,
    spec: dict[str, Any] | None = None,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> DeploymentIntent:
    return DeploymentIntent.model_validate(
        {
            "metadata": {
                "name": name,
                "labels": {"service": "uptime-kuma"} if labels is None else labels,
                "annotations": annotations or {},
            },
            "spec": BASE_SPEC if spec is None else spec,
        }
    )


def source(blob: str = "blob-1", revision: str = "rev-1", path: str = "intents/kuma.yaml") -> SourceRef:
    return SourceRef(source_name="intents", path=path, blob=blob, revision=revision)


# -- lifecycle ---------------------------------------------------------------------------------


async def test_ping_answers(store: Store) -> None:
    await store.ping()


async def test_ping_unreachable_names_host_and_port_without_password() -> None:
    unreachable = Store.from_url("postgresql+asyncpg://chiffon:s3cret-pw@127.0.0.1:1/chiffon")
    try:
        with pytest.raises(StoreError) as caught:
            await unreachable.ping()
        with pytest.raises(StoreError) as caught_too:
            await unreachable.list_intents()
    finally:
        await unreachable.close()
    for message in (str(caught.value), str(caught_too.value)):
        assert "127.0.0.1:1" in message
        assert "s3cret-pw" not in message
        assert "\n" not in message


async def test_sqlite_creates_parent_directory(tmp_path: Any) -> None:
    path = tmp_path / "deep" / "er" / "chiffon.db"
    opened = Store.from_url(f"sqlite:///{path}")  # the async driver is chosen for you
    try:
        await opened.migrate()
        await opened.ping()
    finally:
        await opened.close()
    assert path.is_file()


def test_unsupported_url_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="mysql"):
        Store.from_url("mysql://root@localhost/chiffon")


async def test_naive_datetime_is_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="naive datetime"):
        await store.upsert_intent(make_intent(), source(), now=datetime(2024, 5, 1, 12, 0))
    assert await store.list_intents() == []


# -- upsert: the generation table --------------------------------------------------------------

SPEC_CHANGED = {**BASE_SPEC, "vars": {"kuma_port": 3002}}
SPEC_WITH_DEFAULTS_SPELT_OUT = {**BASE_SPEC, "approval": "Manual", "suspend": False}


@pytest.mark.parametrize(
    ("second", "src", "want_outcome", "want_generation", "want_revision"),
    [
        pytest.param(make_intent(), source("blob-1", "rev-2"), "unchanged", 1, "rev-1", id="other-commit"),
        pytest.param(make_intent(), source("blob-2", "rev-2"), "unchanged", 1, "rev-2", id="comment-only"),
        pytest.param(
            make_intent(spec=SPEC_WITH_DEFAULTS_SPELT_OUT),
            source("blob-2", "rev-2"),
            "unchanged",
            1,
            "rev-2",
            id="defaults-spelt-out",
        ),
        pytest.param(
            make_intent(labels={"service": "kuma", "tier": "monitoring"}),
            source("blob-2", "rev-2"),
            "configured",
            1,
            "rev-2",
            id="labels",
        ),
        pytest.param(
            make_intent(annotations={"chiffon.dev/request": "deploy kuma"}),
            source("blob-2", "rev-2"),
            "configured",
            1,
            "rev-2",
            id="annotations",
        ),
        pytest.param(
            make_intent(spec=SPEC_CHANGED), source("blob-2", "rev-2"), "configured", 2, "rev-2", id="spec"
        ),
    ],
)
async def test_upsert_generation_table(
    store: Store,
    second: DeploymentIntent,
    src: SourceRef,
    want_outcome: str,
    want_generation: int,
    want_revision: str,
) -> None:
    first = await store.upsert_intent(make_intent(), source("blob-1", "rev-1"), now=T0)
    assert (first.outcome, first.generation, first.revision) == ("created", 1, "rev-1")

    result = await store.upsert_intent(second, src, now=T0 + timedelta(minutes=1))

    assert (result.outcome, result.generation, result.revision) == (
        want_outcome,
        want_generation,
        want_revision,
    )
    stored = await store.get_intent("uptime-kuma")
    assert stored is not None and stored.status is not None
    assert stored.metadata.generation == want_generation
    assert stored.metadata.labels == second.metadata.labels
    assert stored.metadata.annotations == second.metadata.annotations
    assert stored.spec_wire() == second.spec_wire()
    assert stored.status.observed_revision == want_revision
    assert (await store.intent_sources("intents"))["uptime-kuma"] == SourceRef(
        "intents", src.path, src.blob, want_revision
    )


async def test_created_intent_has_server_metadata_and_unknown_conditions(store: Store) -> None:
    await store.upsert_intent(make_intent(), source(), now=T0)

    intent = await store.get_intent("uptime-kuma")

    assert intent is not None and intent.status is not None
    assert intent.metadata.generation == 1
    assert intent.metadata.uid and len(intent.metadata.uid) == 36
    assert intent.metadata.creation_timestamp == T0
    assert intent.metadata.creation_timestamp.tzinfo is not None
    assert intent.status.observed_revision == "rev-1"
    assert [(c.type, c.status, c.reason) for c in intent.status.conditions] == [
        (kind, ConditionStatus.UNKNOWN, Reason.AWAITING_RECONCILE)
        for kind in ("Planned", "Approved", "Scheduled", "Ready")
    ]
    assert await store.get_intent("missing") is None


async def test_spec_change_keeps_uid_and_creation_time(store: Store) -> None:
    await store.upsert_intent(make_intent(), source(), now=T0)
    before = await store.get_intent("uptime-kuma")
    await store.upsert_intent(
        make_intent(spec=SPEC_CHANGED), source("blob-2", "rev-2"), now=T0 + timedelta(1)
    )
    after = await store.get_intent("uptime-kuma")
    assert before is not None and after is not None
    assert after.metadata.uid == before.metadata.uid
    assert after.metadata.creation_timestamp == T0
    assert after.metadata.generation == 2


async def test_concurrent_upserts_of_one_change_bump_generation_once(store: Store) -> None:
    await store.upsert_intent(make_intent(), source(), now=T0)

    results = await asyncio.gather(
        *(store.upsert_intent(make_intent(spec=SPEC_CHANGED), source("blob-2", "rev-2")) for _ in range(10))
    )

    assert sorted(r.outcome for r in results) == ["configured"] + ["unchanged"] * 9
    assert {r.generation for r in results} == {2}
    intent = await store.get_intent("uptime-kuma")
    assert intent is not None and intent.metadata.generation == 2


async def test_concurrent_creates_of_one_intent_create_it_once(store: Store) -> None:
    results = await asyncio.gather(*(store.upsert_intent(make_intent(), source()) for _ in range(10)))

    assert sorted(r.outcome for r in results) == ["created"] + ["unchanged"] * 9
    assert {r.generation for r in results} == {1}
    assert await store.count_rows("resources") == 1
    assert await store.count_rows("resource_status") == 1


# -- reading -----------------------------------------------------------------------------------


async def test_list_intents_sorted_and_filtered_by_labels(store: Store) -> None:
    for name, labels in [
        ("zigbee", {"tier": "iot"}),
        ("grafana", {"tier": "monitoring", "team": "ops"}),
        ("uptime-kuma", {"tier": "monitoring"}),
    ]:
        await store.upsert_intent(make_intent(name, labels=labels), source(path=f"{name}.yaml"))

    assert [i.metadata.name for i in await store.list_intents()] == ["grafana", "uptime-kuma", "zigbee"]
    monitoring = await store.list_intents(label_selector={"tier": "monitoring"})
    assert [i.metadata.name for i in monitoring] == ["grafana", "uptime-kuma"]
    ops = await store.list_intents(label_selector={"tier": "monitoring", "team": "ops"})
    assert [i.metadata.name for i in ops] == ["grafana"]
    assert await store.list_intents(label_selector={"tier": "nothing"}) == []
    assert all(i.status is not None for i in await store.list_intents())


async def test_intent_documents_follow_every_write(store: Store) -> None:
    """The API's intent list is remade for exactly the intents whose rows changed since the last call."""

    def by_name(documents: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        return {document["metadata"]["name"]: document for document in documents}

    for name in ("a", "b", "c"):
        await store.upsert_intent(make_intent(name, labels={"tier": name}), source(path=f"{name}.yaml"))
    first = by_name(await store.intent_documents())
    assert list(first) == ["a", "b", "c"]
    assert [d.to_wire() for d in await store.list_intents()] == list(first.values())

    changed = {**BASE_SPEC, "vars": {"kuma_port": 3002}}
    edited = make_intent("a", spec=changed, labels={"tier": "a"})
    await store.upsert_intent(edited, source(path="a.yaml", blob="2"))
    await store.write_intent_status("b", IntentStatus(observed_generation=1, observed_revision="rev-9"))
    await store.delete_intents(["c"])
    await store.upsert_intent(make_intent("d", labels={"tier": "d"}), source(path="d.yaml"))
    second = by_name(await store.intent_documents())

    assert [d.to_wire() for d in await store.list_intents()] == list(second.values())
    assert list(second) == ["a", "b", "d"]
    assert second["a"]["spec"]["vars"] == {"kuma_port": 3002} and second["a"]["metadata"]["generation"] == 2
    assert second["b"]["status"]["observedRevision"] == "rev-9"
    assert second["b"] is not first["b"]
    selected = await store.intent_documents(label_selector={"tier": "d"})
    assert [d["metadata"]["name"] for d in selected] == ["d"]
    # Nothing changed since: the same documents, not rebuilt.
    third = by_name(await store.intent_documents())
    assert all(third[name] is second[name] for name in second)


async def test_intent_sources_by_source(store: Store) -> None:
    await store.upsert_intent(make_intent("a"), SourceRef("intents", "a.yaml", "b1", "r1"))
    await store.upsert_intent(make_intent("b"), SourceRef("intents", "dir/b.yaml", "b2", "r1"))
    await store.upsert_intent(make_intent("c"), SourceRef("other", "c.yaml", "b3", "r9"))

    assert await store.intent_sources("intents") == {
        "a": SourceRef("intents", "a.yaml", "b1", "r1"),
        "b": SourceRef("intents", "dir/b.yaml", "b2", "r1"),
    }
    assert await store.intent_sources("nowhere") == {}


# -- delete ------------------------------------------------------------------------------------


async def test_delete_intents_returns_deleted_names_and_cascades_status(store: Store) -> None:
    for name in ("a", "b", "c"):
        await store.upsert_intent(make_intent(name), source(path=f"{name}.yaml"))
    assert await store.count_rows("resource_status") == 3

    deleted = await store.delete_intents(["c", "a", "missing", "a"])

    assert deleted == ["a", "c"]
    assert [i.metadata.name for i in await store.list_intents()] == ["b"]
    assert await store.count_rows("resource_status") == 1
    assert await store.delete_intents([]) == []
    assert await store.delete_intents(["a"]) == []


async def test_deleted_intent_comes_back_as_new(store: Store) -> None:
    await store.upsert_intent(make_intent(spec=SPEC_CHANGED), source())
    await store.upsert_intent(make_intent(), source("blob-2", "rev-2"))
    await store.delete_intents(["uptime-kuma"])

    again = await store.upsert_intent(make_intent(), source("blob-3", "rev-3"))

    assert (again.outcome, again.generation) == ("created", 1)


# -- status ------------------------------------------------------------------------------------


def ready_status(generation: int) -> IntentStatus:
    conditions = set_condition(
        [],
        "Ready",
        ConditionStatus.TRUE,
        "Applied",
        "The plan was applied.",
        now=T0,
        observed_generation=generation,
    )
    return IntentStatus(
        observed_generation=generation, observed_revision="rev-1", conditions=conditions, blocked_by=None
    )


def without_source(status: IntentStatus) -> IntentStatus:
    return status.model_copy(update={"source_path": None, "source_revision": None})


async def test_status_write_never_bumps_generation(store: Store) -> None:
    await store.upsert_intent(make_intent(), source())

    assert await store.write_intent_status("uptime-kuma", ready_status(1))
    assert await store.write_intent_status("uptime-kuma", ready_status(1), expected_generation=1)

    intent = await store.get_intent("uptime-kuma")
    assert intent is not None and intent.status is not None
    assert intent.metadata.generation == 1
    assert without_source(intent.status) == ready_status(1)
    assert intent.status.source_revision == "rev-1"  # from the resource row, not the status JSON
    # A later sync of the same spec leaves the controller's status alone.
    await store.upsert_intent(make_intent(), source())
    again = await store.get_intent("uptime-kuma")
    assert again is not None and without_source(again.status) == ready_status(1)


async def test_status_write_for_an_old_generation_is_refused(store: Store) -> None:
    await store.upsert_intent(make_intent(), source())
    await store.upsert_intent(make_intent(spec=SPEC_CHANGED), source("blob-2", "rev-2"))

    assert not await store.write_intent_status("uptime-kuma", ready_status(1), expected_generation=1)

    intent = await store.get_intent("uptime-kuma")
    assert intent is not None and intent.status is not None
    assert intent.status.observed_generation is None  # untouched: still the initial status
    assert intent.status.observed_revision == "rev-2"  # moved by the spec change
    assert await store.write_intent_status("uptime-kuma", ready_status(2), expected_generation=2)


async def test_status_write_for_a_missing_intent_is_refused(store: Store) -> None:
    assert not await store.write_intent_status("ghost", ready_status(1))
    assert await store.count_rows("resource_status") == 0


async def test_spec_change_keeps_conditions_and_moves_observed_revision(store: Store) -> None:
    await store.upsert_intent(make_intent(), source())
    await store.write_intent_status("uptime-kuma", ready_status(1))

    await store.upsert_intent(make_intent(spec=SPEC_CHANGED), source("blob-2", "rev-2"))

    intent = await store.get_intent("uptime-kuma")
    assert intent is not None and intent.status is not None
    assert intent.metadata.generation == 2
    assert intent.status.observed_revision == "rev-2"
    assert intent.status.observed_generation == 1  # the controller has not caught up yet
    assert intent.status.conditions == ready_status(1).conditions
