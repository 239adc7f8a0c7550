"""Goals to steps: how the planner turns ``goal: "deploy uptime kuma"`` into a playbook or role.

:class:`CatalogResolver` satisfies the planner's ``GoalResolver`` protocol
(``chiffon.controllers.planner``) by shape alone — agents never import
controllers. It searches the catalog for entries Ansible can run (playbooks,
and roles, directly or through a site playbook with their tag), and returns
the best one with its score, whether it is a confident match, and the
runner-up: the next entry that would run something else.

A best score under :data:`MIN_SCORE` is no match at all: :class:`NoMatchError`
(a ``LookupError``) says so, lists the closest entries and the template
command; the planner turns it into ``PlaybookNotFound``. Between
:data:`MIN_SCORE` and the catalog's confidence threshold the step is
resolved but marked not confident, and the plan then needs a person's
approval even under ``approval: Auto``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from chiffon.agents.catalog.index import Catalog, Confidence, Match, template_suggestion

__all__ = ["MIN_SCORE", "CatalogResolver", "GoalChoice", "NoMatchError"]

#: Below this a goal matches nothing: resolving it to the closest entry would be a guess.
MIN_SCORE = 0.33
CANDIDATES = 10


class NoMatchError(LookupError):
    """No runnable entry of homelab-infra matches a goal well enough to plan it."""


@dataclass(frozen=True)
class GoalChoice:
    """What a goal resolved to (the planner's ``GoalMatch``)."""

    entry: str  # the catalog entry's id
    playbook: str | None
    role: str | None
    tags: tuple[str, ...] = ()
    vars: Mapping[str, Any] = field(default_factory=dict)
    score: float = 0.0
    confident: bool = False
    runner_up: str | None = None
    runner_up_score: float | None = None


def _run_key(match: Match) -> tuple[str | None, str | None, tuple[str, ...]]:
    return (match.entry.playbook, match.entry.role, match.entry.run_tags)


class CatalogResolver:
    def __init__(self, catalog: Catalog, *, min_score: float = MIN_SCORE) -> None:
        self.catalog = catalog
        self.min_score = min_score

    def resolve(self, goal: str) -> GoalChoice:
        result = self.catalog.search(goal, CANDIDATES, runnable_only=True)
        matches = list(result.matches)
        if not matches or matches[0].score < self.min_score:
            closest = ", ".join(f"{m.entry.target} ({m.score:.2f})" for m in matches[:3])
            raise NoMatchError(
                f'no playbook or role in homelab-infra matches the goal "{goal}"'
                + (f" (closest: {closest})" if closest else "")
                + f"; name a playbook or role, or write one: {template_suggestion(goal)}"
            )
        best = matches[0]
        runner_up = next((m for m in matches[1:] if _run_key(m) != _run_key(best)), None)
        return GoalChoice(
            entry=best.entry.id,
            playbook=best.entry.playbook,
            role=best.entry.role,
            tags=best.entry.run_tags,
            vars=dict(best.entry.run_vars),
            score=round(best.score, 4),
            confident=best.confidence is not Confidence.LOW,
            runner_up=runner_up.entry.target if runner_up else None,
            runner_up_score=round(runner_up.score, 4) if runner_up else None,
        )
