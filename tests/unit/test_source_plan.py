"""Table tests for the git source's pure decisions."""

from __future__ import annotations

import pytest

from chiffon.controllers.source import DesiredIntent, collect_desired, is_intent_file, plan_sync, revision_for
from chiffon.resources.yamlio import parse_intents
from chiffon.store import SourceRef
from tests.helpers import intent_yaml


def desired(name: str, path: str, blob: str) -> DesiredIntent:
    intent = parse_intents(intent_yaml(name), path).intents[0].intent
    return DesiredIntent(intent, path, blob)


def ref(path: str, blob: str, revision: str = "r1") -> SourceRef:
    return SourceRef("intents", path, blob, revision)


@pytest.mark.parametrize(
    ("path", "under", "want"),
    [
        ("kuma.yaml", "", True),
        ("apps/kuma.yml", "", True),
        ("README.md", "", False),
        (".github/workflows/ci.yaml", "", False),
        ("apps/.hidden.yaml", "", False),
        ("apps/kuma.yaml", "apps", True),
        ("other/kuma.yaml", "apps", False),
        ("apps/kuma.yaml", "apps/", True),
    ],
)
def test_is_intent_file(path: str, under: str, want: bool) -> None:
    assert is_intent_file(path, under) is want


CASES = [
    # name, desired, known, errored paths, want upserts, want prunes
    ("new intent is upserted", {"a": ("a.yaml", "b1")}, {}, set(), ["a"], []),
    ("same blob and path: no write", {"a": ("a.yaml", "b1")}, {"a": ("a.yaml", "b1")}, set(), [], []),
    ("changed blob is upserted", {"a": ("a.yaml", "b2")}, {"a": ("a.yaml", "b1")}, set(), ["a"], []),
    ("moved file is upserted", {"a": ("x/a.yaml", "b1")}, {"a": ("a.yaml", "b1")}, set(), ["a"], []),
    ("gone from git is pruned", {}, {"a": ("a.yaml", "b1")}, set(), [], ["a"]),
    ("file that fails to parse keeps its intents", {}, {"a": ("a.yaml", "b1")}, {"a.yaml"}, [], []),
    (
        "only the broken file is protected",
        {},
        {"a": ("a.yaml", "b1"), "c": ("c.yaml", "b3")},
        {"a.yaml"},
        [],
        ["c"],
    ),
]


@pytest.mark.parametrize(
    ("case", "want_map", "known_map", "errored", "upserts", "prunes"), CASES, ids=[c[0] for c in CASES]
)
def test_plan_sync(
    case: str,
    want_map: dict[str, tuple[str, str]],
    known_map: dict[str, tuple[str, str]],
    errored: set[str],
    upserts: list[str],
    prunes: list[str],
) -> None:
    plan = plan_sync(
        {name: desired(name, path, blob) for name, (path, blob) in want_map.items()},
        {name: ref(path, blob) for name, (path, blob) in known_map.items()},
        errored,
    )
    assert (plan.upserts, plan.prunes) == (upserts, prunes), case


def test_revision_moves_only_when_the_file_changed() -> None:
    want = desired("a", "a.yaml", "b1")
    assert revision_for(want, ref("a.yaml", "b1", "old"), "head") == "old"
    assert revision_for(want, ref("a.yaml", "b0", "old"), "head") == "head"
    assert revision_for(want, None, "head") == "head"


def test_a_name_defined_twice_is_an_error_on_the_later_file() -> None:
    from chiffon.controllers.source import ParsedFile

    files = [
        ParsedFile("b.yaml", "b2", parse_intents(intent_yaml("same"), "b.yaml")),
        ParsedFile("a.yaml", "b1", parse_intents(intent_yaml("same"), "a.yaml")),
    ]
    found, errors = collect_desired(files)
    assert found["same"].path == "a.yaml"
    assert (
        len(errors) == 1 and errors[0].path == "b.yaml" and "already defined in a.yaml" in errors[0].message
    )


def test_source_status_is_written_only_when_it_changed_or_once_a_minute() -> None:
    from datetime import UTC, datetime, timedelta

    from chiffon.controllers.source import status_worth_writing
    from chiffon.resources import SourceStatus

    then = datetime(2026, 1, 1, tzinfo=UTC)
    saved = SourceStatus(name="intents", url="/r", branch="main", revision="a", last_sync_at=then)
    same = saved.model_copy(update={"last_sync_at": then + timedelta(seconds=5)})
    assert status_worth_writing(None, saved, then)
    assert not status_worth_writing(saved, same, then + timedelta(seconds=5))
    assert status_worth_writing(saved, same.model_copy(update={"revision": "b"}), then + timedelta(seconds=5))
    assert status_worth_writing(saved, same, then + timedelta(seconds=61))
