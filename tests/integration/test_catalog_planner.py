"""The planner hook: a step with only a goal is resolved through the catalog (real model, real planner).

The low-confidence cases use a stub at our own boundary (the planner's
``GoalResolver`` protocol): what matters there is what the planner and the
reconciler do with a guess, not which query produces one.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from chiffon.agents.catalog.index import Catalog
from chiffon.agents.catalog.resolver import CatalogResolver
from chiffon.controllers.planner import GoalResolver, PlanError, Planner, needs_person
from chiffon.resources.conditions import Reason
from tests.integration.test_planner import make_intent, plan
from tests.integration.test_reconciler import World, intent_text, world  # noqa: F401  (world: a fixture)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "homelab-infra"
KUMA_DEPLOY = "ansible/playbooks/kuma-deployment.yml"


@pytest.fixture(scope="module")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("infra") / "homelab-infra"
    shutil.copytree(EXAMPLE, root)
    return root


@pytest.fixture(scope="module")
def resolver(infra: Path, tmp_path_factory: pytest.TempPathFactory) -> CatalogResolver:
    return CatalogResolver(Catalog(infra, tmp_path_factory.mktemp("cache")))


@dataclass(frozen=True)
class Guess:
    playbook: str | None = KUMA_DEPLOY
    role: str | None = None
    tags: Sequence[str] = ()
    vars: Mapping[str, Any] = field(default_factory=dict)
    score: float = 0.36
    confident: bool = False
    runner_up: str | None = "ansible/playbooks/kuma-config-update.yml"
    runner_up_score: float | None = 0.35


class Guessing:
    def resolve(self, goal: str) -> Guess:
        return Guess()


async def test_a_goal_resolves_to_the_kuma_playbook_and_the_choice_is_recorded(
    infra: Path, resolver: CatalogResolver
) -> None:
    planner = Planner(infra, syntax_check=False, goals=resolver)
    made = await plan(planner, make_intent({"name": "deploy", "goal": "deploy uptime kuma"}))
    [step] = made.steps
    assert (step.playbook, step.role) == (KUMA_DEPLOY, None)
    assert step.catalog is not None and step.catalog.query == "deploy uptime kuma" and step.catalog.confident
    assert step.catalog.runner_up and step.catalog.runner_up != KUMA_DEPLOY
    assert step.catalog.runner_up_score is not None and step.catalog.runner_up_score <= step.catalog.score
    assert not needs_person(made)
    # The resolved playbook is in the digest exactly as if the step had named it.
    named = await plan(
        Planner(infra, syntax_check=False), make_intent({"name": "deploy", "playbook": KUMA_DEPLOY})
    )
    assert made.digest == named.digest and step.content_hash == named.steps[0].content_hash


async def test_without_a_catalog_a_goal_cannot_be_planned(infra: Path) -> None:
    with pytest.raises(PlanError) as caught:
        await plan(
            Planner(infra, syntax_check=False), make_intent({"name": "deploy", "goal": "deploy uptime kuma"})
        )
    assert caught.value.reason == Reason.PLAYBOOK_NOT_FOUND
    assert "no playbook catalog is configured" in caught.value.message


async def test_a_goal_nothing_matches_is_playbook_not_found_with_a_template(
    infra: Path, resolver: CatalogResolver
) -> None:
    planner = Planner(infra, syntax_check=False, goals=resolver)
    with pytest.raises(PlanError) as caught:
        await plan(planner, make_intent({"name": "deploy", "goal": "deploy gotify notifications"}))
    assert caught.value.reason == Reason.PLAYBOOK_NOT_FOUND
    assert caught.value.message.startswith("step deploy: no playbook or role in homelab-infra matches")
    assert "chiffonctl template new compose-service" in caught.value.message


async def test_a_low_confidence_match_is_planned_but_needs_a_person(infra: Path) -> None:
    goals: GoalResolver = Guessing()
    made = await plan(
        Planner(infra, syntax_check=False, goals=goals), make_intent({"name": "s", "goal": "kuma?"})
    )
    assert made.steps[0].catalog is not None and not made.steps[0].catalog.confident
    assert needs_person(made)


def _goal_intent(name: str, goal: str) -> str:
    return intent_text(name, approval="Auto").replace(f"playbook: {KUMA_DEPLOY}", f"goal: {goal}")


async def test_auto_approval_does_not_cover_a_low_confidence_match(world: World) -> None:  # noqa: F811
    world.reconciler.planner.goals = Guessing()
    await world.put(_goal_intent("guess", "kuma?"))
    await world.reconcile("guess")
    assert await world.condition("guess", "Approved") == ("False", "AwaitingApproval")
    stored = await world.store.get_intent("guess")
    assert stored and stored.status and stored.status.conditions
    approved = next(c for c in stored.status.conditions if c.type == "Approved")
    assert "low confidence" in approved.message
    await world.approve("guess")
    await world.reconcile("guess")
    assert await world.condition("guess", "Approved") == ("True", "Approved")


async def test_auto_approval_covers_a_confident_match(world: World, resolver: CatalogResolver) -> None:  # noqa: F811
    world.reconciler.planner.goals = resolver
    await world.put(_goal_intent("sure", "deploy uptime kuma"))
    await world.reconcile("sure")
    assert await world.condition("sure", "Approved") == ("True", "AutoApproved")
