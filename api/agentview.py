"""Agents as the API and ``chiffonctl`` show them, and the filters for free capacity.

Pure functions, shared by ``GET /api/v1/agents`` and ``chiffonctl get agents``
(which checks its flags with the same parsers before contacting the server).

The ``online`` an agent reports is what it said last; whether it *is* online is
decided by the scheduler's own rule (:func:`chiffon.controllers.scheduler.is_online`:
a heartbeat younger than the offline deadline), so an agent killed without saying
goodbye shows offline here exactly when the scheduler stops placing runs on it.
"Free VRAM" is likewise the scheduler's: the most free memory on any one GPU,
because a run needs its GPU memory on a single card.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from chiffon.controllers.scheduler import best_gpu_free, is_online, matches
from chiffon.resources import Agent, AgentKind

# The same ceiling the intent schema puts on spec.resources.gpuMemoryMiB.
MAX_MEBIBYTES = 10_000_000

_MIB_PER_UNIT = {"": 1, "Mi": 1, "MiB": 1, "Gi": 1024, "GiB": 1024, "Ti": 1024**2, "TiB": 1024**2}
_QUANTITY = re.compile(r"^(\d{1,12}(?:\.\d{1,6})?)\s*([A-Za-z]*)$")


def parse_mebibytes(text: str) -> int:
    """``8Gi``, ``1.5Gi``, ``512Mi`` or a bare ``2048`` (MiB) → whole MiB, rounded up.

    Decimal units (``8G``, ``8GB``) are refused rather than guessed: people mean
    GiB by them as often as 10⁹ bytes.
    """
    match = _QUANTITY.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a memory size: write it like 8Gi, 512Mi or 2048 (MiB)")
    number, unit = match.groups()
    if unit not in _MIB_PER_UNIT:
        raise ValueError(f"{text!r}: unit {unit!r} is not one of Mi, Gi, Ti (binary units, e.g. 8Gi)")
    mebibytes = math.ceil(Decimal(number) * _MIB_PER_UNIT[unit])
    if mebibytes > MAX_MEBIBYTES:
        raise ValueError(f"{text!r} is more than {MAX_MEBIBYTES} MiB")
    return mebibytes


def parse_label_selector(text: str) -> dict[str, str]:
    """``role=desktop,gpu=nvidia`` (kubectl's ``-l`` equality form) → labels an agent must carry."""
    wanted: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{part.strip()!r} must look like key=value (several: key=value,key2=value2)")
        wanted[key.strip()] = value.strip()
    return wanted


@dataclass(frozen=True)
class AgentFilters:
    """What ``GET /agents`` keeps; ``None`` (or 0, or empty) means "either way"."""

    online: bool | None = None
    kind: AgentKind | None = None
    busy: bool | None = None
    min_free_vram_mib: int = 0
    selector: Mapping[str, str] = field(default_factory=dict)

    def admits(self, agent: Agent, now: datetime) -> bool:
        """``agent`` as stored (its reported ``online``), judged at ``now``."""
        capacity = agent.capacity
        busy = capacity is not None and capacity.busy
        return (
            (self.online is None or is_online(agent, now) == self.online)
            and (self.kind is None or agent.kind is self.kind)
            and (self.busy is None or busy == self.busy)
            and (
                not self.min_free_vram_mib
                or (capacity is not None and best_gpu_free(capacity) >= self.min_free_vram_mib)
            )
            and matches(agent, self.selector)
        )


def as_seen(agent: Agent, now: datetime) -> Agent:
    """The agent with ``online`` meaning "heartbeating now", not "said it was online once"."""
    return agent.model_copy(update={"online": is_online(agent, now)})


def select_agents(agents: Iterable[Agent], filters: AgentFilters, now: datetime) -> list[Agent]:
    return [as_seen(agent, now) for agent in agents if filters.admits(agent, now)]
